// The Home page: texts sent, daily limit, lifetime totals, campaigns by stage, recent problems.

import { callApi } from "./api.js";
import { el, fill, formatDate, formatDateTime, formatNumber } from "./dom.js";

const BUSY_REFRESH_MS = 2000;
const IDLE_REFRESH_MS = 30000;

// Campaign stages in the order of the product's dashboard, with the list filter each opens.
const STAGES = [
  ["draft", "Draft"],
  ["scheduled", "Scheduled"],
  ["in_process", "In process"],
  ["completed", "Completed"],
  ["archived", "Archived"],
];

export function renderDashboard(container, { page }) {
  const view = buildView();
  container.append(view.root);

  async function refresh() {
    let busy = false;
    try {
      const data = await callApi("GET", "/api/dashboard");
      if (!page.active) return;
      update(view, data);
      busy = data.campaigns.in_process > 0 || data.campaigns.scheduled > 0;
      view.error.hidden = true;
    } catch (error) {
      if (!page.active) return;
      fill(view.error, `The dashboard could not be loaded: ${error.message}`);
      view.error.hidden = false;
    }
    page.schedule(refresh, busy ? BUSY_REFRESH_MS : IDLE_REFRESH_MS);
  }
  refresh();
}

function figure(name, label) {
  const value = el("p", { className: "figure-value", "data-figure": name }, "–");
  const note = el("p", { className: "figure-note" });
  return { card: el("section", { className: "card figure" }, el("h3", {}, label), value, note), value, note };
}

function buildView() {
  const error = el("div", { className: "page-error", role: "alert", hidden: true });
  const lead = el("p", { className: "page-lead" });
  const figures = {
    level: figure("performance_level", "Performance level"),
    today: figure("texts_sent_today", "Texts sent today"),
    month: figure("texts_sent_this_month", "Texts sent this month"),
    limit: figure("daily_limit", "Daily limit"),
    lifetime: figure("lifetime", "Lifetime sent / failed"),
  };
  figures.today.card.title = "Texts Twilio accepted today, new attempts after a delivery error included; the daily limit counts the same.";
  figures.month.card.title = "Texts Twilio accepted this month, new attempts included.";
  figures.lifetime.card.title = "Every campaign's Sent and Failed cards added up, each member's text counted once.";
  figures.level.value.classList.add("figure-text");
  const meter = el("meter", { min: 0, max: 1, value: 0, className: "limit-meter", "aria-label": "Daily limit used" });
  figures.limit.card.insertBefore(meter, figures.limit.note);

  const stageCards = {};
  const stages = el("div", { className: "cards stage-cards" }, STAGES.map(([stage, label]) => {
    const count = el("span", { className: "figure-value", "data-stage": stage }, "–");
    stageCards[stage] = count;
    return el("a", { className: "card stage-card", href: `#/campaigns?stage=${stage}` }, el("h3", {}, label), count);
  }));
  const otherStages = el("p", { className: "hint" });

  const problems = el("ul", { className: "notice-list", id: "recent-problems" });
  const allNotices = el("button", { type: "button", className: "button button-quiet", onclick: () => showAllNotices(problems, allNotices) },
                        "Show all notices");

  const root = el("div", { className: "dashboard" },
    el("div", { className: "page-header" }, el("h1", {}, "Dashboard")),
    lead, error,
    el("div", { className: "cards figure-cards" }, Object.values(figures).map((item) => item.card)),
    el("h2", {}, "Campaigns"), stages, otherStages,
    el("section", { className: "panel" },
       el("div", { className: "panel-header" }, el("h2", {}, "Recent problems"), allNotices),
       el("p", { className: "hint" }, "Notices e-mailed to your administrator when sending ran into trouble."),
       problems));
  return { root, error, lead, figures, meter, stageCards, otherStages, problems };
}

function update(view, data) {
  fill(view.lead, `Figures for ${formatDate(data.local_date)}, counted in the organisation's time zone (${data.timezone}).`);
  const { figures } = view;
  fill(figures.level.value, data.performance_level);
  fill(figures.today.value, formatNumber(data.texts_sent.today));
  fill(figures.month.value, formatNumber(data.texts_sent.this_month));

  const limit = data.daily_limit;
  fill(figures.limit.value, `${formatNumber(limit.used)} / ${formatNumber(limit.limit)}`);
  fill(figures.limit.note, `${formatNumber(limit.remaining)} left today`);
  view.meter.max = Math.max(limit.limit, 1);
  view.meter.high = Math.max(limit.limit, 1) * 0.9;
  view.meter.value = limit.used;

  const lifetime = data.lifetime;
  fill(figures.lifetime.value, `${formatNumber(lifetime.sent)} / ${formatNumber(lifetime.failed)}`);
  fill(figures.lifetime.note, `${formatNumber(lifetime.delivered)} delivered, ${formatNumber(lifetime.undeliverable)} `
       + `undeliverable, ${formatNumber(lifetime.opted_out)} opted out, ${formatNumber(lifetime.cancelled)} cancelled`);

  for (const [stage] of STAGES) fill(view.stageCards[stage], formatNumber(data.campaigns[stage]));
  const { cancelled, failed } = data.campaigns;
  fill(view.otherStages, cancelled || failed
    ? `Also ${formatNumber(cancelled)} cancelled and ${formatNumber(failed)} failed, not archived.` : "");

  if (!view.problems.dataset.showingAll) fillNotices(view.problems, data.recent_problems);
}

function fillNotices(list, notices) {
  if (!notices.length) {
    fill(list, el("li", { className: "empty" }, "No problems reported."));
    return;
  }
  fill(list, notices.map((notice) => el("li", { className: "notice" },
    el("div", { className: "notice-head" },
       el("strong", {}, notice.subject),
       el("time", { dateTime: notice.created_at || "" }, formatDateTime(notice.created_at))),
    el("p", { className: "notice-text" }, notice.text),
    notice.to && notice.to.length ? el("p", { className: "hint" }, `Sent to ${notice.to.join(", ")}`)
                                  : el("p", { className: "hint" }, "No e-mail address is set: add one in Settings."))));
}

async function showAllNotices(list, button) {
  button.disabled = true;
  try {
    const data = await callApi("GET", "/api/notices?limit=200");
    list.dataset.showingAll = "true";
    fillNotices(list, data.notices);
    fill(button, data.total > data.notices.length ? `Showing the latest ${data.notices.length} of ${data.total}` : "All notices shown");
  } catch (error) {
    button.disabled = false;
    fill(list, el("li", { className: "page-error" }, `The notices could not be loaded: ${error.message}`));
  }
}
