// The organisation's opt-out list, read-only: masked numbers, when and how each opted out.

import { callApi } from "./api.js";
import { el, fill, formatDateTime, formatNumber } from "./dom.js";

const PAGE_SIZE = 50;

const SOURCES = {
  "inbound-stop": "replied STOP",
  "twilio-callback": "reported by Twilio after a text",
};

/** Return how a number came to opt out, in words, from the API's `source`. */
export function describeSource(source) {
  if (SOURCES[source]) return SOURCES[source];
  const code = /^twilio-(\d+)$/.exec(source || "");
  return code ? `Twilio refused a text (error ${code[1]})` : source || "unknown";
}

/** Build the opt-out panel and load its first page while `page` is shown. */
export function buildOptOutList(page) {
  const summary = el("p", { className: "hint", id: "opt-outs-summary" }, "Loading the opt-out list…");
  const body = el("tbody");
  const table = el("table", { className: "data-table", id: "opt-outs", hidden: true },
    el("thead", {}, el("tr", {},
       el("th", { scope: "col" }, "Number"), el("th", { scope: "col" }, "Opted out"),
       el("th", { scope: "col" }, "How"), el("th", { scope: "col", className: "number" }, "Members"))),
    body);
  const more = el("button", { type: "button", className: "button button-quiet", hidden: true }, "Show more");
  const error = el("div", { className: "page-error", role: "alert", hidden: true });
  const state = { offset: 0 };

  async function loadPage() {
    try {
      const result = await callApi("GET", `/api/opt-outs?offset=${state.offset}&limit=${PAGE_SIZE}`);
      if (!page.active) return;
      error.hidden = true;
      for (const optOut of result.opt_outs) body.append(buildRow(optOut));
      state.offset += result.opt_outs.length;
      table.hidden = result.total === 0;
      more.hidden = state.offset >= result.total;
      fill(summary, result.total === 0 ? "No number has opted out."
        : `${formatNumber(result.total)} numbers opted out. Text Manager sends them nothing until they reply START.`);
    } catch (failure) {
      if (!page.active) return;
      fill(error, `The opt-out list could not be loaded: ${failure.message}`);
      error.hidden = false;
    }
  }
  more.addEventListener("click", loadPage);
  loadPage();

  return el("section", { className: "panel", id: "opt-outs-panel" }, el("h2", {}, "Opt-outs"),
    el("p", { className: "hint" }, "Numbers show only their last 4 digits."), summary, error, table,
    el("div", { className: "form-actions" }, more));
}

function buildRow(optOut) {
  return el("tr", {},
    el("td", {}, el("code", {}, optOut.number)),
    el("td", {}, formatDateTime(optOut.opted_out_at)),
    el("td", {}, describeSource(optOut.source)),
    el("td", { className: "number" }, formatNumber(optOut.members)));
}
