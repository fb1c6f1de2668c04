// The campaign editor, for a new campaign or a saved one: name, message with a live
// length counter, IQA path, e-mail, Smart Encoding.

import { callApi } from "./api.js";
import { el, fill, formatDateTime, formatNumber, plural } from "./dom.js";
import { checkboxField, clearErrors, errorBox, field, showError, showMessage, whileBusy } from "./forms.js";

const MEASURE_DELAY_MS = 250;
const MAX_BODY_CHARS = 1600;
const TEXT_FIELDS = ["name", "body", "iqa_path", "email", "phone_column", "id_column"];

/** Render the editor. When a saved campaign is edited, `params` contains its id. */
export function renderCampaignEditor(container, { page, params = [] }) {
  const [campaignId] = params;
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
    el("p", { className: "hint", id: "campaign-state", hidden: true }),
    el("div", { className: "form-actions" },
       el("button", { type: "submit", className: "button button-primary", id: "save-campaign" },
          campaignId ? "Save changes" : "Save draft"),
       el("a", { className: "button button-quiet", href: campaignId ? `#/campaigns/${campaignId}` : "#/campaigns" },
          "Cancel")),
    el("p", { className: "hint" },
       "Saving checks the message and the IQA path. Whether the IQA returns the columns the campaign uses is checked at preview, which runs the query."),
    campaignId ? null : el("p", { className: "hint" }, "After saving you can send it now or schedule it."));

  const title = el("h1", {}, campaignId ? "Edit campaign" : "New campaign");
  container.append(el("div", { className: "page-header" }, title), el("section", { className: "panel" }, form));
  const remeasure = () => measureLater(page, inputs, counter);
  inputs.body.addEventListener("input", remeasure);
  inputs.smart_encoding.addEventListener("change", remeasure);
  const saved = { prompts: {}, revision: null };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    whileBusy(form, () => saveCampaign(form, inputs, campaignId, saved));
  });
  if (campaignId) {
    whileBusy(form, () => loadCampaign(page, form, inputs, campaignId)).then((campaign) => {
      if (!page.active) return;
      if (!campaign) {
        form.querySelector("#save-campaign").disabled = true;
        return;
      }
      saved.prompts = campaign.prompts || {};
      saved.revision = campaign.revision || 0;
      showCampaignState(form, campaign);
      remeasure();
      inputs.name.focus();
    });
  } else {
    inputs.name.focus();
  }
}

/** Fill the form with the saved campaign and return it, or show why it could not be loaded and return null. */
async function loadCampaign(page, form, inputs, campaignId) {
  try {
    const campaign = await callApi("GET", `/api/campaigns/${campaignId}`);
    if (!page.active) return null;
    for (const name of TEXT_FIELDS) inputs[name].value = campaign[name] || "";
    inputs.smart_encoding.checked = Boolean(campaign.smart_encoding);
    return campaign;
  } catch (error) {
    if (page.active) showError(form, error);
    return null;
  }
}

/** Say when the saved campaign sends, and keep the form from saving when the campaign can no longer change. */
function showCampaignState(form, campaign) {
  const run = campaign.current_run;
  if (!campaign.editable) {
    showMessage(form, `This campaign is ${campaign.status} and can no longer be edited.`);
    form.querySelector("#save-campaign").disabled = true;
  } else if (campaign.status === "scheduled" && run) {
    const state = form.querySelector("#campaign-state");
    fill(state, `Scheduled to send at ${formatDateTime(run.due_at)}: the changes apply to that send. Changes close 2 minutes before it.`);
    state.hidden = false;
  }
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

async function saveCampaign(form, inputs, campaignId, saved) {
  const body = {
    name: inputs.name.value.trim(),
    body: inputs.body.value,
    iqa_path: inputs.iqa_path.value.trim(),
    smart_encoding: inputs.smart_encoding.checked,
    phone_column: inputs.phone_column.value.trim(),
    id_column: inputs.id_column.value.trim(),
  };
  if (inputs.email.value.trim()) body.email = inputs.email.value.trim();
  // Prompts have no field in the form yet, so an edit sends back the ones the campaign has.
  if (campaignId) {
    body.prompts = saved.prompts;
    // The revision the form was loaded at: a change someone else saved since is refused.
    if (saved.revision !== null) body.revision = saved.revision;
  }
  try {
    const campaign = campaignId ? await callApi("PUT", `/api/campaigns/${campaignId}`, body)
                                : await callApi("POST", "/api/campaigns", body);
    clearErrors(form);
    window.location.hash = `#/campaigns/${campaign.id}`;
  } catch (error) {
    showError(form, error);
  }
}
