// The campaign editor: name, message with a live length counter, IQA path, e-mail, Smart Encoding.

import { callApi } from "./api.js";
import { el, fill, formatNumber, plural } from "./dom.js";
import { checkboxField, clearErrors, errorBox, field, showError, whileBusy } from "./forms.js";

const MEASURE_DELAY_MS = 250;
const MAX_BODY_CHARS = 1600;

export function renderCampaignEditor(container, { page }) {
  const inputs = {
    name: el("input", { name: "name", maxlength: 200, required: true, autocomplete: "off" }),
    body: el("textarea", { name: "body", rows: 6, required: true }),
    iqa_path: el("input", { name: "iqa_path", required: true, placeholder: "$/TextManager/Demo Members",
                            autocomplete: "off" }),
    email: el("input", { name: "email", type: "email", autocomplete: "email" }),
    smart_encoding: el("input", { name: "smart_encoding" }),
    phone_column: el("input", { name: "phone_column", value: "Mobile", maxlength: 100 }),
    id_column: el("input", { name: "id_column", value: "ID", maxlength: 100 }),
  };
  const counter = el("p", { className: "counter", id: "body-counter", "aria-live": "polite" }, "0 characters · 0 segments · GSM-7");
  const bodyField = field("Message", inputs.body,
                          "Merge fields such as {FirstName|member} take each member's value; the count measures the text as written.");
  inputs.body.after(counter);
  const form = el("form", { className: "form", id: "campaign-form", noValidate: true },
    errorBox(),
    field("Campaign name", inputs.name, "Staff see this name; members do not."),
    bodyField,
    field("Recipients (IQA path)", inputs.iqa_path,
          "The iMIS IQA query that returns the members to text, starting with $/."),
    field("Campaign e-mail", inputs.email, "Receives a notice when sending runs into trouble, as does the default e-mail address in Settings."),
    checkboxField("Smart Encoding", inputs.smart_encoding,
                  "Replace curly quotes, long dashes and similar characters with plain ones, so more texts fit in one segment."),
    el("details", { className: "advanced" }, el("summary", {}, "IQA columns"),
       field("Mobile phone column", inputs.phone_column),
       field("Member ID column", inputs.id_column)),
    el("div", { className: "form-actions" },
       el("button", { type: "submit", className: "button button-primary", id: "save-campaign" }, "Save draft"),
       el("a", { className: "button button-quiet", href: "#/campaigns" }, "Cancel")),
    el("p", { className: "hint" }, "After saving you can send it now or schedule it."));

  container.append(el("div", { className: "page-header" }, el("h1", {}, "New campaign")), el("section", { className: "panel" }, form));
  const remeasure = () => measureLater(page, inputs, counter);
  inputs.body.addEventListener("input", remeasure);
  inputs.smart_encoding.addEventListener("change", remeasure);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    whileBusy(form, () => saveCampaign(form, inputs));
  });
  inputs.name.focus();
}

let measureSequence = 0;

function measureLater(page, inputs, counter) {
  measureSequence += 1;
  const sequence = measureSequence;
  page.schedule(async () => {
    if (sequence !== measureSequence) return;
    try {
      const result = await callApi("POST", "/api/texts/measure", { body: inputs.body.value });
      if (sequence === measureSequence && page.active) showMeasurement(counter, result, inputs.smart_encoding.checked);
    } catch (error) {
      if (sequence === measureSequence && page.active) fill(counter, `The length could not be measured: ${error.message}`);
    }
  }, MEASURE_DELAY_MS);
}

function showMeasurement(counter, result, smartEncoding) {
  counter.classList.toggle("counter-warning", result.too_long || result.encoding !== "GSM-7");
  fill(counter,
       el("span", { "data-measure": "units" }, plural(result.units, "character")), " · ",
       el("span", { "data-measure": "segments" }, plural(result.segments, "segment")), " · ",
       el("span", { "data-measure": "encoding" }, result.encoding));
  if (result.too_long) {
    counter.append(el("span", { className: "counter-note" },
      `Too long: a text can have at most ${formatNumber(MAX_BODY_CHARS)} characters.`));
  } else if (result.encoding !== "GSM-7" && smartEncoding) {
    // NOTE: the measure endpoint has no Smart Encoding option, so this count is
    // taken before the replacement and may be higher than what is sent.
    counter.append(el("span", { className: "counter-note" },
      "Counted before Smart Encoding: if the only special characters are curly quotes, dashes and the like, the text is sent as GSM-7 and takes fewer segments."));
  } else if (result.encoding !== "GSM-7") {
    counter.append(el("span", { className: "counter-note" },
      "A character outside GSM-7 (an emoji, a curly quote, some accents) sends the text as UCS-2: a segment then holds 70 characters, or 67 when the text is split, and an emoji counts as 2."));
  }
}

async function saveCampaign(form, inputs) {
  const body = {
    name: inputs.name.value.trim(),
    body: inputs.body.value,
    iqa_path: inputs.iqa_path.value.trim(),
    smart_encoding: inputs.smart_encoding.checked,
    phone_column: inputs.phone_column.value.trim(),
    id_column: inputs.id_column.value.trim(),
  };
  if (inputs.email.value.trim()) body.email = inputs.email.value.trim();
  try {
    const campaign = await callApi("POST", "/api/campaigns", body);
    clearErrors(form);
    window.location.hash = `#/campaigns/${campaign.id}`;
  } catch (error) {
    showError(form, error);
  }
}
