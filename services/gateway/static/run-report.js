// The skipped rows of one run, with their reasons, a page at a time.

import { callApi } from "./api.js";
import { el, fill, formatNumber } from "./dom.js";

const PAGE_SIZE = 100;

const REASON_HELP = {
  "no member ID": "The IQA row has no member ID, so its text could not be logged in iMIS or matched to an opt-out.",
  "no number": "The IQA row has no mobile number.",
  "invalid number": "The number cannot take a text in the default country or as written.",
  "duplicate number": "Another member in this list has the same number; one text goes to that number.",
  "opted out": "The number replied STOP to an earlier text.",
};

/** Build the skipped-rows panel; call `load(runId)` to show a run's rows from the start. */
export function buildRunReport() {
  const summary = el("p", { className: "hint", id: "skipped-summary" });
  const body = el("tbody");
  const more = el("button", { type: "button", className: "button button-quiet", hidden: true }, "Show more");
  const error = el("div", { className: "page-error", role: "alert", hidden: true });
  const panel = el("section", { className: "panel", id: "skipped-panel", hidden: true },
    el("h2", {}, "Skipped rows"), summary, error,
    el("table", { className: "data-table", id: "skipped-rows" },
       el("thead", {}, el("tr", {},
          el("th", { scope: "col" }, "Member ID"), el("th", { scope: "col" }, "Number in iMIS"),
          el("th", { scope: "col" }, "Reason"))),
       body),
    more);

  const state = { runId: null, offset: 0 };
  async function loadPage() {
    try {
      const report = await callApi("GET", `/api/runs/${state.runId}?offset=${state.offset}&limit=${PAGE_SIZE}`);
      error.hidden = true;
      appendRows(body, report.skipped);
      state.offset += report.skipped.length;
      fill(summary, describeTotals(report));
      more.hidden = state.offset >= report.skipped_total;
      panel.hidden = report.skipped_total === 0;
    } catch (failure) {
      fill(error, `The skipped rows could not be loaded: ${failure.message}`);
      error.hidden = false;
      panel.hidden = false;
    }
  }
  more.addEventListener("click", loadPage);

  return {
    panel,
    load(runId) {
      state.runId = runId;
      state.offset = 0;
      body.replaceChildren();
      return loadPage();
    },
  };
}

function describeTotals(report) {
  const reasons = Object.entries(report.run.skipped_by_reason || {})
    .map(([reason, count]) => `${reason}: ${formatNumber(count)}`).join(", ");
  const total = `${formatNumber(report.skipped_total)} IQA rows were not texted`;
  return reasons ? `${total} (${reasons}).` : `${total}.`;
}

function appendRows(body, rows) {
  for (const row of rows) {
    body.appendChild(el("tr", {},
      el("td", {}, row.member_id || "–"),
      el("td", {}, row.raw || "(empty)", row.e164 && row.e164 !== row.raw ? el("span", { className: "hint" }, ` → ${row.e164}`) : null),
      el("td", { className: "reason", title: REASON_HELP[row.reason] || "" }, row.reason)));
  }
}
