// The campaign list: stage filters, counts, and a refresh every 2 s while anything is in process.

import { callApi } from "./api.js";
import { COUNTS } from "./counts.js";
import { el, fill, formatDateTime, formatNumber, statusBadge } from "./dom.js";

const IN_PROCESS_REFRESH_MS = 2000;
const SCHEDULED_REFRESH_MS = 10000;
const ARCHIVABLE_STATUSES = ["completed", "cancelled", "failed", "draft"];

const FILTERS = [
  ["active", "Active"],
  ["draft", "Draft"],
  ["scheduled", "Scheduled"],
  ["in_process", "In process"],
  ["completed", "Completed"],
  ["archived", "Archived"],
];

const COLUMNS = COUNTS;

/** Return the dashboard stage of a campaign, as the server counts it. */
export function stageOf(campaign, archivedIds) {
  if (archivedIds.has(campaign.id) && ARCHIVABLE_STATUSES.includes(campaign.status)) return "archived";
  if (campaign.status === "sending" || campaign.status === "paused") return "in_process";
  return campaign.status;
}

function matchesFilter(stage, filter) {
  return filter === "active" ? stage !== "archived" : stage === filter;
}

export function renderCampaignList(container, { page, query }) {
  const filter = FILTERS.some(([name]) => name === query.get("stage")) ? query.get("stage") : "active";
  const body = el("tbody");
  const status = el("p", { className: "hint live-status", "aria-live": "polite" });
  const error = el("div", { className: "page-error", role: "alert", hidden: true });

  container.append(
    el("div", { className: "page-header" }, el("h1", {}, "Campaigns"),
       el("a", { className: "button button-primary", href: "#/campaigns/new", id: "new-campaign" }, "New campaign")),
    filterBar(filter), error,
    el("table", { className: "data-table", id: "campaigns" },
       el("thead", {}, el("tr", {},
          el("th", { scope: "col" }, "Name"), el("th", { scope: "col" }, "Status"),
          COLUMNS.map(([, label, help]) => el("th", { scope: "col", className: "number", title: help }, label)),
          el("th", { scope: "col" }, "Created"))),
       body),
    status);

  let renderedJson = "";
  async function refresh() {
    let delay = null;
    try {
      const [list, archive] = await Promise.all([callApi("GET", "/api/campaigns"), callApi("GET", "/api/archive")]);
      if (!page.active) return;
      const archivedIds = new Set(archive.campaigns.map((campaign) => campaign.id));
      const latest = JSON.stringify([list.campaigns, archive.campaigns.map((campaign) => campaign.id)]);
      if (latest !== renderedJson) fillRows(body, list.campaigns, archivedIds, filter);
      renderedJson = latest;
      delay = refreshDelay(list.campaigns);
      fill(status, delay === IN_PROCESS_REFRESH_MS ? "A campaign is in process: counts update every 2 seconds." : "");
      error.hidden = true;
    } catch (failure) {
      if (!page.active) return;
      fill(error, `The campaigns could not be loaded: ${failure.message}`);
      error.hidden = false;
      delay = SCHEDULED_REFRESH_MS;
    }
    if (delay) page.schedule(refresh, delay);
  }
  refresh();
}

function filterBar(current) {
  return el("nav", { className: "filter-bar", "aria-label": "Campaign stages" },
    FILTERS.map(([name, label]) => el("a", {
      href: name === "active" ? "#/campaigns" : `#/campaigns?stage=${name}`,
      className: "filter", "aria-current": name === current ? "page" : null, "data-filter": name,
    }, label)));
}

function refreshDelay(campaigns) {
  if (campaigns.some((campaign) => campaign.status === "sending" || campaign.status === "paused")) {
    return IN_PROCESS_REFRESH_MS;
  }
  const waiting = campaigns.some((campaign) => campaign.status === "scheduled" || campaign.schedule_active);
  return waiting ? SCHEDULED_REFRESH_MS : null;
}

function fillRows(body, campaigns, archivedIds, filter) {
  const matching = campaigns.filter((campaign) => matchesFilter(stageOf(campaign, archivedIds), filter));
  if (!matching.length) {
    const text = campaigns.length ? "No campaign in this stage." : "No campaigns yet: create one with New campaign.";
    fill(body, el("tr", {}, el("td", { colspan: COLUMNS.length + 3, className: "empty" }, text)));
    return;
  }
  fill(body, matching.map((campaign) => el("tr", { "data-campaign-id": campaign.id },
    el("td", {}, el("a", { href: `#/campaigns/${campaign.id}` }, campaign.name),
       campaign.schedule_active ? el("span", { className: "tag", "data-tag": "repeats" }, "repeats") : null,
       archivedIds.has(campaign.id) ? el("span", { className: "tag" }, "archived") : null),
    el("td", { "data-col": "status" }, statusBadge(campaign.status)),
    COLUMNS.map(([name]) => el("td", { className: "number", "data-col": name }, formatNumber(campaign.counts[name]))),
    el("td", {}, formatDateTime(campaign.created_at)))));
}
