// One campaign: counts, Pause / Resume / Cancel, Stop repeating, archive, sending, the recurring
// schedule, the run's error, texts waiting for the daily limit, skipped rows and texts.

import { callApi } from "./api.js";
import { buildSchedulePanel, describeRule } from "./campaign-schedule.js";
import { buildSendPanel } from "./campaign-send.js";
import { COUNTS } from "./counts.js";
import { el, fill, formatDateTime, formatDateTimeWithZone, formatInZone, formatNumber, plural, statusBadge } from "./dom.js";
import { errorBox, showError, clearErrors, whileBusy } from "./forms.js";
import { organisationTimeZone } from "./organisation.js";
import { buildPreviewPanel } from "./preview.js";
import { buildRunReport } from "./run-report.js";
import { buildRunTexts } from "./run-texts.js";

const REFRESH_MS = 2000;
const LIVE_STATUSES = ["sending", "paused", "scheduled"];
const SENDABLE_STATUSES = ["draft", "completed", "cancelled", "failed"];
const ARCHIVABLE_STATUSES = ["completed", "cancelled", "failed", "draft"];
// Run statuses in which a run can still be cancelled, from due to paused.
const ACTIVE_RUN_STATUSES = ["due", "publishing", "queued", "expanding", "sending", "paused"];

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
    if (!state.campaign || isLive(state.campaign)) refreshSoon();
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
    const runKey = run ? `${run.id}:${run.status}:${run.counts.skipped}:${run.counts.undeliverable}` : null;
    if (runKey !== state.runKey) {
      state.runKey = runKey;
      state.runCountsJson = run ? JSON.stringify(run.counts) : "";
      if (run) {
        view.report.load(run.id);
        view.texts.load(run.id);
      }
    } else if (run && JSON.stringify(run.counts) !== state.runCountsJson) {
      // The texts change as the run sends, so the panel reloads whenever the counts move.
      state.runCountsJson = JSON.stringify(run.counts);
      view.texts.refresh();
    }
  }

  async function act(call, confirmText) {
    if (confirmText && !window.confirm(confirmText)) return;
    await whileBusy(view.actions, async () => {
      try {
        await call();
        clearErrors(view.actions);
        if (isLive(state.campaign)) refreshSoon();
      } catch (error) {
        showError(view.actions, error);
      }
    });
    updateButtons(view, state.campaign, state.archived);
  }

  const post = (action) => async () => {
    const result = await callApi("POST", `/api/campaigns/${campaignId}/${action}`);
    if (action === "archive" || action === "unarchive") state.archived = result.archived;
    show(result);
  };
  async function stopRepeating() {
    await callApi("DELETE", `/api/campaigns/${campaignId}/schedule`);
    show(await callApi("GET", `/api/campaigns/${campaignId}`));
  }

  view.buttons.pause.addEventListener("click", () => act(post("pause")));
  view.buttons.resume.addEventListener("click", () => act(post("resume")));
  view.buttons.cancel.addEventListener("click", () => act(post("cancel"), cancelQuestion(state.campaign)));
  view.buttons.stopSchedule.addEventListener("click", () => act(stopRepeating,
    "Stop repeating this campaign? No more texts go out on its schedule; a run under way goes on."));
  view.buttons.archive.addEventListener("click", () => act(post("archive")));
  view.buttons.unarchive.addEventListener("click", () => act(post("unarchive")));
  view.onSent = (campaign) => {
    show(campaign);
    refreshSoon();
  };
  view.onScheduleChanged = () => refresh();

  const archived = callApi("GET", "/api/archive")
    .then((archive) => { state.archived = archive.campaigns.some((campaign) => campaign.id === campaignId); })
    .catch(() => {});
  const zone = organisationTimeZone().then((timeZone) => { view.timeZone = timeZone; });
  Promise.all([archived, zone]).finally(refresh);
}

function isLive(campaign) {
  return LIVE_STATUSES.includes(campaign.status) || Boolean(campaign.schedule_active);
}

function runIsActive(campaign) {
  return Boolean(campaign && campaign.current_run && ACTIVE_RUN_STATUSES.includes(campaign.current_run.status));
}

function cancelQuestion(campaign) {
  if (campaign && campaign.schedule_active) {
    return "Cancel this run? Texts not sent yet will not be sent. The schedule goes on: use Stop repeating to end it.";
  }
  return "Cancel this campaign? Texts not sent yet will not be sent. This cannot be undone.";
}

function buildView(campaignId) {
  const buttons = {
    pause: el("button", { type: "button", className: "button", id: "pause" }, "Pause"),
    resume: el("button", { type: "button", className: "button", id: "resume" }, "Resume"),
    cancel: el("button", { type: "button", className: "button button-danger", id: "cancel" }, "Cancel"),
    stopSchedule: el("button", { type: "button", className: "button button-danger", id: "stop-schedule" },
                     "Stop repeating"),
    archive: el("button", { type: "button", className: "button button-quiet", id: "archive" }, "Archive"),
    unarchive: el("button", { type: "button", className: "button button-quiet", id: "unarchive" }, "Unarchive"),
    edit: el("a", { className: "button", id: "edit-campaign", href: `#/campaigns/${campaignId}/edit`, hidden: true },
             "Edit"),
  };
  const preview = buildPreviewPanel(campaignId);
  const actions = el("form", { className: "actions", id: "campaign-actions" },
    el("div", { className: "action-buttons" }, preview.button, buttons.pause, buttons.resume, buttons.cancel,
       buttons.stopSchedule, buttons.archive, buttons.unarchive, buttons.edit),
    errorBox());
  actions.addEventListener("submit", (event) => event.preventDefault());

  const counts = {};
  const countCards = el("div", { className: "cards count-cards", id: "campaign-counts" }, COUNTS.map(([name, label, help]) => {
    counts[name] = el("span", { className: "figure-value", "data-count": name }, "–");
    return el("div", { className: "card figure", title: help }, el("h3", {}, label), counts[name]);
  }));
  const progress = el("progress", { className: "send-progress", max: 1, value: 0, "aria-label": "Texts sent" });
  const progressLabel = el("p", { className: "hint", id: "run-progress" });
  const countsCaption = el("p", { className: "hint", id: "counts-caption" });
  const allRunsTotals = el("p", { className: "hint", id: "all-runs-totals", hidden: true });

  const view = {
    buttons, actions, counts, progress, progressLabel, countsCaption, allRunsTotals, preview,
    title: el("h1", { id: "campaign-name" }, "Campaign"),
    badges: el("span", { className: "title-badges" }),
    pageError: el("div", { className: "page-error", role: "alert", hidden: true }),
    runError: el("div", { className: "banner banner-error", role: "alert", id: "run-error", hidden: true }),
    banner: el("div", { className: "banner", id: "campaign-banner", hidden: true }),
    deferredBanner: el("div", { className: "banner", id: "deferred-banner", role: "status", hidden: true }),
    sendSlotTop: el("div"),
    sendSlotBottom: el("div"),
    details: el("dl", { className: "details" }),
    runDetails: el("dl", { className: "details", id: "run-details" }),
    schedule: buildSchedulePanel(() => view.onScheduleChanged()),
    report: buildRunReport(),
    texts: buildRunTexts(),
    onSent: () => {},
    onScheduleChanged: () => {},
    timeZone: "",
  };
  view.root = el("div", { className: "campaign-detail" },
    el("p", { className: "breadcrumb" }, el("a", { href: "#/campaigns" }, "Campaigns")),
    el("div", { className: "page-header" }, el("div", { className: "title-line" }, view.title, view.badges), actions),
    view.pageError, view.runError, view.banner, view.deferredBanner,
    countsCaption, countCards, progress, progressLabel, allRunsTotals,
    view.sendSlotTop,
    view.schedule.panel,
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
  fill(view.badges, statusBadge(campaign.status),
       campaign.schedule_active ? el("span", { className: "tag", id: "repeats-tag" }, "repeats") : null,
       archived ? el("span", { className: "tag" }, "archived") : null);
  renderCounts(view, campaign);
  renderProgress(view, campaign);

  renderProblems(view, campaign);
  renderDeferred(view, campaign.current_run);
  renderSendSlot(view, campaign, archived);
  view.schedule.show(campaign);
  fillDetails(view.details, [
    ["Message", el("pre", { className: "message-body" }, campaign.body)],
    ["Recipients (IQA path)", campaign.iqa_path],
    ["Mobile / ID columns", `${campaign.phone_column} / ${campaign.id_column}`],
    ["Campaign e-mail", campaign.email || "not set"],
    ["Smart Encoding", campaign.smart_encoding ? "on" : "off"],
    ["Repeats", campaign.schedule ? `${describeRule(campaign.schedule)}${campaign.schedule_active ? "" : " Stopped."}`
                                  : "no"],
    ["Created", formatDateTime(campaign.created_at)],
  ]);
  renderRun(view, campaign.current_run);
  updateButtons(view, campaign, archived);
}

// The cards and the progress line show the current run; earlier runs count only in the totals line.
function runCounts(campaign) {
  const run = campaign.current_run;
  const counts = {};
  for (const [name] of COUNTS) counts[name] = run && run.counts ? run.counts[name] || 0 : 0;
  return counts;
}

function renderCounts(view, campaign) {
  const counts = runCounts(campaign);
  for (const [name] of COUNTS) fill(view.counts[name], formatNumber(counts[name]));
  fill(view.countsCaption, campaign.current_run ? "Current run:" : "");

  const earlierRuns = COUNTS.some(([name]) => (campaign.counts[name] || 0) !== counts[name]);
  view.allRunsTotals.hidden = !earlierRuns;
  fill(view.allRunsTotals, earlierRuns
    ? `All runs of this campaign together: ${formatNumber(campaign.counts.recipients)} recipients, ${
        formatNumber(campaign.counts.sent)} sent, ${formatNumber(campaign.counts.delivered)} delivered.`
    : "");
}

function renderProgress(view, campaign) {
  const { recipients, sent } = runCounts(campaign);
  const run = campaign.current_run;
  const live = runIsActive(campaign);
  view.progress.max = Math.max(recipients, 1);
  view.progress.value = Math.min(sent, recipients);
  view.progress.hidden = !run || recipients === 0;
  let label = "";
  if (run && live && recipients === 0) label = run.status === "due" ? "" : "Reading the recipients from iMIS…";
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

  const text = bannerText(campaign, view.timeZone);
  view.banner.hidden = !text;
  fill(view.banner, text);
}

function bannerText(campaign, timeZone) {
  const run = campaign.current_run;
  if (campaign.schedule_active) {
    const next = campaign.next_occurrence
      ? `next at ${formatInZone(new Date(campaign.next_occurrence), timeZone)}${timeZone ? ` (${timeZone})` : ""}`
      : "no time left";
    const occurrence = runIsActive(campaign) ? " A run of the schedule is under way." : "";
    return `Repeats on a schedule, ${next}; see Repeats below.${occurrence}`;
  }
  if (campaign.status === "paused") {
    return "Sending is paused. Texts not sent yet wait until you resume; see Recent problems on the Home page for the reason.";
  }
  if (campaign.status === "scheduled") return run ? `Scheduled to send at ${formatDateTimeWithZone(run.due_at)}.` : "Scheduled.";
  if (campaign.status === "cancelled") {
    return campaign.counts.sent > 0 ? "This campaign was cancelled. Texts that had not gone out were not sent."
                                    : "This campaign was cancelled before any text went out.";
  }
  return "";
}

/** Say how many texts wait for the daily limit, and when they go out. */
async function renderDeferred(view, run) {
  const waiting = run && run.deferred ? run.deferred : 0;
  const zone = waiting ? await organisationTimeZone() : "";
  view.deferredBanner.hidden = !waiting;
  if (!waiting) return;
  const texts = plural(waiting, "text");
  const verb = waiting === 1 ? "waits" : "wait";
  // Raising the limit moves the texts' release time to the past, and the scheduler sends them at its next tick.
  if (run.deferred_until && new Date(run.deferred_until) <= new Date()) {
    fill(view.deferredBanner, `${texts} ${verb} for the daily limit. The limit was raised, so they go out within moments; any that still do not fit wait for midnight.`);
    return;
  }
  const midnight = zone ? `after midnight (${zone} time)` : "after midnight in the organisation's time zone";
  fill(view.deferredBanner, `${texts} ${verb} for the daily limit; they go out ${midnight} or when an administrator raises the limit in Settings.`);
}

// A draft's send panel comes first; a finished campaign's "Send again" comes after its results.
// A campaign that repeats shows its schedule instead, until the schedule stops.
function renderSendSlot(view, campaign, archived) {
  const sendable = SENDABLE_STATUSES.includes(campaign.status) && !archived && !campaign.schedule_active;
  const key = sendable ? `${campaign.id}:${campaign.status}:${campaign.counts.sent > 0}` : "";
  if (view.sendSlotTop.dataset.key === key) return;
  view.sendSlotTop.dataset.key = key;
  const panel = sendable ? buildSendPanel(campaign, view.onSent, view.onScheduleChanged) : null;
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
    ["Due at", formatDateTimeWithZone(run.due_at)],
    run.recurring ? ["Started by", "the recurring schedule"] : null,
    ["Segments", run.segments === undefined ? "counted when the recipients are read" : formatNumber(run.segments)],
    run.deferred ? ["Waiting for the daily limit", formatNumber(run.deferred)] : null,
    ["Run ID", el("code", {}, run.id)],
  ].filter(Boolean));
}

function updateButtons(view, campaign, archived) {
  const { buttons } = view;
  const status = campaign ? campaign.status : "";
  const running = runIsActive(campaign);
  buttons.pause.hidden = !running;
  buttons.resume.hidden = !running;
  buttons.cancel.hidden = !running;
  buttons.pause.disabled = status !== "sending";
  buttons.resume.disabled = status !== "paused";
  buttons.cancel.disabled = !running;
  buttons.stopSchedule.hidden = !(campaign && campaign.schedule_active);
  buttons.archive.hidden = archived || !ARCHIVABLE_STATUSES.includes(status);
  buttons.unarchive.hidden = !archived;
  buttons.edit.hidden = !(campaign && campaign.editable);
}

function fillDetails(list, entries) {
  fill(list, entries.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
}
