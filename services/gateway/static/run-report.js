// What one run did not text or could not deliver: the IQA rows skipped before sending, a page at
// a time with their reasons, and the texts Twilio refused or reported undeliverable, by reason.

import { callApi } from "./api.js";
import { el, fill, formatNumber, plural } from "./dom.js";

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
  const refused = el("p", { className: "hint", id: "refused-summary", hidden: true });
  const undeliverable = el("p", { className: "hint", id: "undeliverable-summary", hidden: true });
  const body = el("tbody");
  const more = el("button", { type: "button", className: "button button-quiet", hidden: true }, "Show more");
  const error = el("div", { className: "page-error", role: "alert", hidden: true });
  const table = el("table", { className: "data-table", id: "skipped-rows" },
    el("thead", {}, el("tr", {},
       el("th", { scope: "col" }, "Member ID"), el("th", { scope: "col" }, "Number in iMIS"),
       el("th", { scope: "col" }, "Reason"))),
    body);
  const panel = el("section", { className: "panel", id: "skipped-panel", hidden: true },
    el("h2", {}, "Not texted or undeliverable"), summary, refused, undeliverable, error,
    table, more);

  const state = { runId: null, offset: 0 };
  async function loadPage() {
    try {
      const report = await callApi("GET", `/api/runs/${state.runId}?offset=${state.offset}&limit=${PAGE_SIZE}`);
      error.hidden = true;
      appendRows(body, report.skipped);
      state.offset += report.skipped.length;
      fill(summary, describeTotals(report));
      describeTexts(refused, report.refused_by_reason, (total, reasons) =>
        `Twilio refused ${plural(total, "more text")}, which count as skipped too (${reasons}).`);
      describeTexts(undeliverable, report.undeliverable_by_reason, (total, reasons) =>
        `Twilio accepted ${plural(total, "text")} and then reported ${total === 1 ? "it" : "them"} undeliverable (${reasons}). They count as undeliverable, not failed, and are not sent again.`);
      more.hidden = state.offset >= report.skipped_total;
      table.hidden = report.skipped_total === 0;
      panel.hidden = report.skipped_total === 0 && refused.hidden && undeliverable.hidden;
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

function listReasons(byReason) {
  return Object.entries(byReason || {}).map(([reason, count]) => `${reason}: ${formatNumber(count)}`).join(", ");
}

function describeTotals(report) {
  const reasons = listReasons(report.run.skipped_by_reason);
  const count = report.skipped_total;
  const total = `${plural(count, "IQA row")} ${count === 1 ? "was" : "were"} set aside before sending and not texted`;
  return reasons ? `${total} (${reasons}).` : `${total}.`;
}

/** Show a line about texts counted by reason, or hide it when there are none; the texts are in the Texts panel. */
function describeTexts(node, byReason, sentence) {
  const total = Object.values(byReason || {}).reduce((sum, count) => sum + count, 0);
  node.hidden = total === 0;
  fill(node, total ? `${sentence(total, listReasons(byReason))} The Texts panel lists them.` : "");
}

function appendRows(body, rows) {
  for (const row of rows) {
    body.appendChild(el("tr", {},
      el("td", {}, row.member_id || "–"),
      el("td", {}, row.raw || "(empty)", row.e164 && row.e164 !== row.raw ? el("span", { className: "hint" }, ` → ${row.e164}`) : null),
      el("td", { className: "reason", title: REASON_HELP[row.reason] || "" }, row.reason)));
  }
}
