// The texts of one run, a page at a time, with whether and how each was logged in iMIS.

import { callApi } from "./api.js";
import { el, fill, formatDateTime, formatNumber } from "./dom.js";

const PAGE_SIZE = 100;
// The largest `limit` the messages API takes.
const MAX_PAGE_SIZE = 1000;

/** Return the iMIS log of one text in words, as the Texts table shows it. */
export function describeImisLog(log) {
  if (!log) return "not sent";
  if (log.status === "written") {
    const entry = log.kind === "interaction" ? "Interaction" : "TEXTMSG activity";
    const key = log.key ? ` ${log.key}` : "";
    return log.fallback ? `${entry}${key} (the site takes no interactions)` : `${entry}${key}`;
  }
  if (log.status === "pending") return "waiting to be logged";
  if (log.status === "off") return "not logged: the iMIS log is off in Settings";
  if (log.status === "failed") return `failed: ${log.error || "iMIS rejected the entry"}`;
  if (log.status === "missing") return `missing: ${log.reason || "the entry was never requested"}`;
  return log.status;
}

// Statuses whose reason explains why a text did not go out, or not yet. A delivered text needs none.
const STATUSES_WITH_REASON = ["skipped", "failed", "undelivered", "cancelled", "opted_out", "deferred", "retrying",
                              "paused"];

// Message statuses in staff words; a status missing here shows with its underscores as spaces.
const STATUS_WORDS = {
  queued: "queued", sending: "sending", sent: "sent", delivered: "delivered", failed: "failed",
  undelivered: "not delivered", skipped: "skipped", cancelled: "cancelled", opted_out: "opted out",
  deferred: "waiting for the daily limit", retrying: "retrying", paused: "paused",
};

/**
 * Return a text's status in staff words. A skipped text with a sent time is one Twilio
 * accepted and then reported undeliverable (errors 30005 and 30006), so it shows as "undeliverable".
 */
export function describeStatus(message) {
  if (message.status === "skipped" && message.sent_at) return "undeliverable";
  return STATUS_WORDS[message.status] || String(message.status || "").replaceAll("_", " ");
}

function describeReason(message) {
  if (!STATUSES_WITH_REASON.includes(message.status) || !(message.reason || message.error_code)) return null;
  const code = message.error_code ? ` (error ${message.error_code})` : "";
  return el("span", { className: "status-reason" }, `${message.reason || "Twilio error"}${code}`);
}

/**
 * Build the texts panel; call `load(runId)` to show a run's texts from the start, and
 * `refresh()` to load again the rows already shown.
 */
export function buildRunTexts() {
  const summary = el("p", { className: "hint", id: "texts-summary" });
  const body = el("tbody");
  const more = el("button", { type: "button", className: "button button-quiet", hidden: true }, "Show more");
  const reload = el("button", { type: "button", className: "button button-quiet", id: "reload-texts" }, "Refresh");
  const error = el("div", { className: "page-error", role: "alert", hidden: true });
  const panel = el("section", { className: "panel", id: "texts-panel", hidden: true },
    el("h2", {}, "Texts"), summary, error,
    el("table", { className: "data-table", id: "run-texts" },
       el("thead", {}, el("tr", {},
          el("th", { scope: "col" }, "Number"), el("th", { scope: "col" }, "Member ID"),
          el("th", { scope: "col" }, "Status"), el("th", { scope: "col" }, "Sent"),
          el("th", { scope: "col" }, "iMIS log"))),
       body),
    el("div", { className: "form-actions" }, more, reload));

  // `generation` changes on every load from the start, so a page that arrives after a newer load began is dropped.
  const state = { runId: null, offset: 0, generation: 0, replace: false };
  async function loadPage(limit = PAGE_SIZE) {
    const generation = state.generation;
    try {
      const page = await callApi("GET", `/api/runs/${state.runId}/messages?offset=${state.offset}&limit=${limit}`);
      if (generation !== state.generation) return;
      error.hidden = true;
      if (state.replace) body.replaceChildren();
      state.replace = false;
      appendRows(body, page.messages);
      state.offset += page.messages.length;
      fill(summary, `${formatNumber(page.total)} texts in this run.`);
      more.hidden = state.offset >= page.total;
      panel.hidden = page.total === 0;
    } catch (failure) {
      if (generation !== state.generation) return;
      fill(error, `The texts could not be loaded: ${failure.message}`);
      error.hidden = false;
      panel.hidden = false;
    }
  }
  // The rows shown are replaced only when the new page arrives, so the table does not flicker.
  function loadFromStart(limit = PAGE_SIZE) {
    state.generation += 1;
    state.offset = 0;
    state.replace = true;
    return loadPage(limit);
  }
  more.addEventListener("click", () => loadPage());
  reload.addEventListener("click", () => loadFromStart());

  return {
    panel,
    load(runId) {
      state.runId = runId;
      return loadFromStart();
    },
    refresh() {
      if (state.runId === null) return null;
      return loadFromStart(Math.min(Math.max(state.offset, PAGE_SIZE), MAX_PAGE_SIZE));
    },
  };
}

function appendRows(body, messages) {
  for (const message of messages) {
    const log = message.imis_log;
    body.appendChild(el("tr", { "data-message": message.id },
      el("td", {}, message.to),
      el("td", {}, message.member_id || "–"),
      el("td", { "data-col": "status", "data-status": message.status }, describeStatus(message),
         describeReason(message)),
      el("td", {}, message.sent_at ? formatDateTime(message.sent_at) : "–"),
      el("td", { "data-imis-log": log ? log.status : "none" }, describeImisLog(log))));
  }
}
