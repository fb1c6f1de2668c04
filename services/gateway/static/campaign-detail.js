// One campaign: counts, Pause / Resume / Cancel, archive, sending, the run's error, skipped rows and texts.

import { callApi } from "./api.js";
import { buildSendPanel } from "./campaign-send.js";
import { el, fill, formatDateTime, formatNumber, statusBadge } from "./dom.js";
import { errorBox, showError, clearErrors, whileBusy } from "./forms.js";
import { buildPreviewPanel } from "./preview.js";
import { buildRunReport } from "./run-report.js";
import { buildRunTexts } from "./run-texts.js";

const REFRESH_MS = 2000;
const LIVE_STATUSES = ["sending", "paused", "scheduled"];
const SENDABLE_STATUSES = ["draft", "completed", "cancelled", "failed"];
const ARCHIVABLE_STATUSES = ["completed", "cancelled", "failed", "draft"];

const COUNTS = [
  ["recipients", "Recipients"],
  ["sent", "Sent"],
  ["delivered", "Delivered"],
  ["failed", "Failed"],
  ["opted_out", "Opted out"],
  ["skipped", "Skipped"],
];

export function renderCampaignDetail(container, { page, params }) {
  const [campaignId] = params;
  const view = buildView(campaignId);
  container.append(view.root);
  const state = { campaign: null, archived: false, runKey: null, refreshPending: false, renderedJson: "" };

  function refreshSoon() {
    if (state.refreshPending) return;
    state.refreshPending = true;
    page.schedule(refresh, REFRESH_MS);
  }

  async function refresh() {
    state.refreshPending = false;
    try {
      const campaign = await callApi("GET", `/api/campaigns/${campaignId}`);
      if (!page.active) return;
      show(campaign);
    } catch (error) {
      if (!page.active) return;
      fill(view.pageError, error.status === 404 ? "This campaign does not exist in your organisation."
                                                : `The campaign could not be loaded: ${error.message}`);
      view.pageError.hidden = false;
      if (error.status === 404) return;
    }
    if (!state.campaign || LIVE_STATUSES.includes(state.campaign.status)) refreshSoon();
  }

  function show(campaign) {
    state.campaign = campaign;
    view.pageError.hidden = true;
    // Re-render only on a change, so that text being selected on the page stays selected.
    const renderedJson = JSON.stringify([campaign, state.archived]);
    if (renderedJson === state.renderedJson) return;
    state.renderedJson = renderedJson;
    render(view, campaign, state.archived);
    const run = campaign.current_run;
    const runKey = run ? `${run.id}:${run.status}:${run.counts.skipped}` : null;
    if (runKey !== state.runKey) {
      state.runKey = runKey;
      if (run) {
        view.report.load(run.id);
        view.texts.load(run.id);
      }
    }
  }

  async function act(action, confirmText) {
    if (confirmText && !window.confirm(confirmText)) return;
    await whileBusy(view.actions, async () => {
      try {
        const result = await callApi("POST", `/api/campaigns/${campaignId}/${action}`);
        clearErrors(view.actions);
        if (action === "archive" || action === "unarchive") state.archived = result.archived;
        show(result);
        if (LIVE_STATUSES.includes(result.status)) refreshSoon();
      } catch (error) {
        showError(view.actions, error);
      }
    });
    updateButtons(view, state.campaign, state.archived);
  }

  view.buttons.pause.addEventListener("click", () => act("pause"));
  view.buttons.resume.addEventListener("click", () => act("resume"));
  view.buttons.cancel.addEventListener("click", () => act("cancel",
    "Cancel this campaign? Texts not sent yet will not be sent. This cannot be undone."));
  view.buttons.archive.addEventListener("click", () => act("archive"));
  view.buttons.unarchive.addEventListener("click", () => act("unarchive"));
  view.onSent = (campaign) => {
    show(campaign);
    refreshSoon();
  };

  callApi("GET", "/api/archive")
    .then((archive) => { state.archived = archive.campaigns.some((campaign) => campaign.id === campaignId); })
    .catch(() => {})
    .finally(refresh);
}

function buildView(campaignId) {
  const buttons = {
    pause: el("button", { type: "button", className: "button", id: "pause" }, "Pause"),
    resume: el("button", { type: "button", className: "button", id: "resume" }, "Resume"),
    cancel: el("button", { type: "button", className: "button button-danger", id: "cancel" }, "Cancel"),
    archive: el("button", { type: "button", className: "button button-quiet", id: "archive" }, "Archive"),
    unarchive: el("button", { type: "button", className: "button button-quiet", id: "unarchive" }, "Unarchive"),
  };
  const preview = buildPreviewPanel(campaignId);
  const actions = el("form", { className: "actions", id: "campaign-actions" },
    el("div", { className: "action-buttons" }, preview.button, buttons.pause, buttons.resume, buttons.cancel,
       buttons.archive, buttons.unarchive),
    errorBox());
  actions.addEventListener("submit", (event) => event.preventDefault());

  const counts = {};
  const countCards = el("div", { className: "cards count-cards", id: "campaign-counts" }, COUNTS.map(([name, label]) => {
    counts[name] = el("span", { className: "figure-value", "data-count": name }, "–");
    return el("div", { className: "card figure" }, el("h3", {}, label), counts[name]);
  }));
  const progress = el("progress", { className: "send-progress", max: 1, value: 0, "aria-label": "Texts sent" });
  const progressLabel = el("p", { className: "hint" });

  const view = {
    buttons, actions, counts, progress, progressLabel, preview,
    title: el("h1", { id: "campaign-name" }, "Campaign"),
    badges: el("span", { className: "title-badges" }),
    pageError: el("div", { className: "page-error", role: "alert", hidden: true }),
    runError: el("div", { className: "banner banner-error", role: "alert", id: "run-error", hidden: true }),
    banner: el("div", { className: "banner", id: "campaign-banner", hidden: true }),
    sendSlotTop: el("div"),
    sendSlotBottom: el("div"),
    details: el("dl", { className: "details" }),
    runDetails: el("dl", { className: "details", id: "run-details" }),
    report: buildRunReport(),
    texts: buildRunTexts(),
    onSent: () => {},
  };
  view.root = el("div", { className: "campaign-detail" },
    el("p", { className: "breadcrumb" }, el("a", { href: "#/campaigns" }, "Campaigns")),
    el("div", { className: "page-header" }, el("div", { className: "title-line" }, view.title, view.badges), actions),
    view.pageError, view.runError, view.banner,
    countCards, progress, progressLabel,
    view.sendSlotTop,
    preview.panel,
    el("div", { className: "two-columns" },
       el("section", { className: "panel" }, el("h2", {}, "Campaign"), view.details),
       el("section", { className: "panel" }, el("h2", {}, "Current run"), view.runDetails)),
    view.report.panel,
    view.texts.panel,
    view.sendSlotBottom);
  return view;
}

function render(view, campaign, archived) {
  fill(view.title, campaign.name);
  fill(view.badges, statusBadge(campaign.status), archived ? el("span", { className: "tag" }, "archived") : null);
  for (const [name] of COUNTS) fill(view.counts[name], formatNumber(campaign.counts[name]));
  renderProgress(view, campaign);

  renderProblems(view, campaign);
  renderSendSlot(view, campaign, archived);
  fillDetails(view.details, [
    ["Message", el("pre", { className: "message-body" }, campaign.body)],
    ["Recipients (IQA path)", campaign.iqa_path],
    ["Mobile / ID columns", `${campaign.phone_column} / ${campaign.id_column}`],
    ["Campaign e-mail", campaign.email || "not set"],
    ["Smart Encoding", campaign.smart_encoding ? "on" : "off"],
    ["Created", formatDateTime(campaign.created_at)],
  ]);
  renderRun(view, campaign.current_run);
  updateButtons(view, campaign, archived);
}

function renderProgress(view, campaign) {
  const { recipients, sent } = campaign.counts;
  const run = campaign.current_run;
  const live = LIVE_STATUSES.includes(campaign.status);
  view.progress.max = Math.max(recipients, 1);
  view.progress.value = Math.min(sent, recipients);
  view.progress.hidden = !run || recipients === 0;
  let label = "";
  if (run && live && recipients === 0) label = campaign.status === "scheduled" ? "" : "Reading the recipients from iMIS…";
  else if (run && live) label = `${formatNumber(sent)} of ${formatNumber(recipients)} recipients sent so far.`;
  else if (run) label = `${formatNumber(sent)} of ${formatNumber(recipients)} recipients were sent a text.`;
  fill(view.progressLabel, label);
}

function renderProblems(view, campaign) {
  const run = campaign.current_run;
  const error = campaign.error || (run && run.error);
  if (campaign.status === "failed" || (run && run.status === "failed")) {
    fill(view.runError, el("strong", {}, "This run failed. "), error || "No error was recorded.");
    view.runError.hidden = false;
  } else if (error) {
    fill(view.runError, el("strong", {}, "Error: "), error);
    view.runError.hidden = false;
  } else {
    view.runError.hidden = true;
  }

  const banners = {
    paused: "Sending is paused. Texts not sent yet wait until you resume; see Recent problems on the Home page for the reason.",
    scheduled: run ? `Scheduled to send at ${formatDateTime(run.due_at)}.` : "Scheduled.",
    cancelled: "This campaign was cancelled. Texts that had not gone out were not sent.",
  };
  view.banner.hidden = !banners[campaign.status];
  fill(view.banner, banners[campaign.status] || "");
}

// A draft's send panel comes first; a finished campaign's "Send again" comes after its results.
function renderSendSlot(view, campaign, archived) {
  const sendable = SENDABLE_STATUSES.includes(campaign.status) && !archived;
  const key = sendable ? `${campaign.id}:${campaign.status}` : "";
  if (view.sendSlotTop.dataset.key === key) return;
  view.sendSlotTop.dataset.key = key;
  const panel = sendable ? buildSendPanel(campaign, view.onSent) : null;
  fill(view.sendSlotTop, campaign.status === "draft" ? panel : null);
  fill(view.sendSlotBottom, campaign.status === "draft" ? null : panel);
}

function renderRun(view, run) {
  if (!run) {
    fillDetails(view.runDetails, [["Status", "not sent yet"]]);
    return;
  }
  fillDetails(view.runDetails, [
    ["Status", el("span", { "data-run-status": run.status }, run.status)],
    ["Due at", formatDateTime(run.due_at)],
    ["Segments", run.segments === undefined ? "counted when the recipients are read" : formatNumber(run.segments)],
    ["Run ID", el("code", {}, run.id)],
  ]);
}

function updateButtons(view, campaign, archived) {
  const { buttons } = view;
  const status = campaign ? campaign.status : "";
  const live = LIVE_STATUSES.includes(status);
  buttons.pause.hidden = !live;
  buttons.resume.hidden = !live;
  buttons.cancel.hidden = !live;
  buttons.pause.disabled = status !== "sending";
  buttons.resume.disabled = status !== "paused";
  buttons.cancel.disabled = !live;
  buttons.archive.hidden = archived || !ARCHIVABLE_STATUSES.includes(status);
  buttons.unarchive.hidden = !archived;
}

function fillDetails(list, entries) {
  fill(list, entries.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
}
