// The campaign preview: who would get a text now, the segments, the first texts and any warnings.

import { callApi } from "./api.js";
import { el, fill, formatNumber, plural } from "./dom.js";

/** Build the Preview button and the panel it fills from GET /api/campaigns/{id}/preview. */
export function buildPreviewPanel(campaignId) {
  const button = el("button", { type: "button", className: "button button-quiet", id: "preview",
                                title: "Read the IQA now and show who would get a text, without sending" }, "Preview");
  const body = el("div", { "aria-live": "polite" });
  const close = el("button", { type: "button", className: "button button-quiet" }, "Close");
  const panel = el("section", { className: "panel", id: "preview-panel", hidden: true },
    el("div", { className: "panel-header" }, el("h2", {}, "Preview"), close), body);

  close.addEventListener("click", () => { panel.hidden = true; });
  button.addEventListener("click", async () => {
    panel.hidden = false;
    button.disabled = true;
    fill(body, el("p", { className: "hint" }, "Reading the IQA… a large query takes a while."));
    try {
      fill(body, describePreview(await callApi("GET", `/api/campaigns/${campaignId}/preview`)));
    } catch (error) {
      fill(body, el("div", { className: "page-error", role: "alert" }, `The preview failed: ${error.message}`));
    } finally {
      button.disabled = false;
    }
  });
  return { button, panel };
}

function describePreview(preview) {
  const skipped = Object.entries(preview.skipped_by_reason || {})
    .map(([reason, count]) => `${reason}: ${formatNumber(count)}`).join(", ");
  return [
    preview.warnings.map((warning) => el("div", { className: "banner", "data-warning": warning.code }, warning.message)),
    el("dl", { className: "details preview-figures" },
       el("dt", {}, "Recipients"),
       el("dd", { "data-preview": "recipients" },
          `${formatNumber(preview.recipients)} of ${plural(preview.rows, "IQA row")}`),
       el("dt", {}, "Skipped"),
       el("dd", {}, skipped ? `${formatNumber(preview.skipped)} (${skipped})` : formatNumber(preview.skipped)),
       el("dt", {}, "Segments"),
       el("dd", {}, `${formatNumber(preview.segments)} of at most ${formatNumber(preview.run_segment_limit)} per run`),
       el("dt", {}, "Encoding"),
       el("dd", {}, preview.encoding || "–"),
       el("dt", {}, "Today's allowance"),
       el("dd", {}, `${formatNumber(preview.daily_remaining)} of ${formatNumber(preview.daily_limit)} texts left`)),
    preview.samples.length ? sampleTable(preview.samples) : null,
  ];
}

function sampleTable(samples) {
  return [
    el("h3", { className: "subheading" }, "First texts"),
    el("table", { className: "data-table", id: "preview-samples" },
       el("thead", {}, el("tr", {},
          el("th", { scope: "col" }, "Member ID"), el("th", { scope: "col" }, "Number"),
          el("th", { scope: "col" }, "Text"), el("th", { scope: "col", className: "number" }, "Segments"))),
       el("tbody", {}, samples.map((sample) => el("tr", {},
          el("td", {}, sample.member_id), el("td", {}, sample.to),
          el("td", {}, el("span", { className: "message-text" }, sample.body)),
          el("td", { className: "number" }, `${sample.segments} (${sample.encoding})`))))),
  ];
}
