// Form helpers: labelled fields, and API errors shown next to the form and its fields.

import { el, fill, sentence } from "./dom.js";

let fieldCounter = 0;

/**
 * Build a labelled field around `control` (an input, select or textarea), with `hint`
 * as help text under it. The wrapper carries data-field, where errors for that name go.
 */
export function field(labelText, control, hint) {
  fieldCounter += 1;
  control.id = control.id || `field-${fieldCounter}`;
  const hintNode = hint ? el("p", { className: "hint", id: `${control.id}-hint` }, hint) : null;
  if (hintNode) control.setAttribute("aria-describedby", hintNode.id);
  return el("div", { className: "field", "data-field": control.name || "" },
            el("label", { for: control.id }, labelText), control, hintNode);
}

/** Build a checkbox with its label to the right. */
export function checkboxField(labelText, control, hint) {
  control.type = "checkbox";
  fieldCounter += 1;
  control.id = control.id || `field-${fieldCounter}`;
  return el("div", { className: "field field-checkbox", "data-field": control.name || "" },
            el("label", { for: control.id }, control, " ", labelText),
            hint ? el("p", { className: "hint" }, hint) : null);
}

/** Build the box that shows a form's error summary, for the top of the form. */
export function errorBox() {
  return el("div", { className: "form-error", role: "alert", hidden: true });
}

export function clearErrors(form) {
  for (const node of form.querySelectorAll(".field-error")) node.remove();
  for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  const box = form.querySelector(".form-error");
  if (box) {
    box.hidden = true;
    box.replaceChildren();
  }
}

/**
 * Show an API error: its message in the form's error box, and each entry of
 * `details.fields` under the field of that name (or in the box when no field has it).
 */
export function showError(form, error) {
  clearErrors(form);
  const box = form.querySelector(".form-error");
  const unplaced = [];
  const fields = (error.details && error.details.fields) || {};
  for (const [name, messages] of Object.entries(fields)) {
    if (!placeFieldError(form, name, describe(messages))) unplaced.push(`${name}: ${describe(messages)}`);
  }
  if (error.details && typeof error.details.field === "string") markInvalid(form, error.details.field);

  if (!box) return;
  fill(box, el("p", { className: "form-error-message" }, sentence(error.message || String(error))));
  if (unplaced.length) box.appendChild(el("ul", {}, unplaced.map((text) => el("li", {}, text))));
  box.hidden = false;
}

/** Show a message that did not come from the API, for example a check made in the browser. */
export function showMessage(form, message, fieldName) {
  showError(form, { message, details: fieldName ? { fields: { [fieldName]: [message] } } : {} });
}

function placeFieldError(form, name, text) {
  const wrapper = form.querySelector(`[data-field="${CSS.escape(name)}"]`);
  if (!wrapper) return false;
  markInvalid(form, name);
  wrapper.appendChild(el("p", { className: "field-error" }, sentence(text)));
  return true;
}

function markInvalid(form, name) {
  const control = form.elements.namedItem(name);
  if (control && control.setAttribute) control.setAttribute("aria-invalid", "true");
}

function describe(messages) {
  if (Array.isArray(messages)) return messages.map((message) => sentence(describe(message))).join(" ");
  if (messages && typeof messages === "object") {
    return Object.entries(messages).map(([key, value]) => `${key}: ${describe(value)}`).join("; ");
  }
  return String(messages);
}

/** Disable a form's buttons while `work` runs, so a double click sends once. */
export async function whileBusy(form, work) {
  const buttons = [...form.querySelectorAll("button")];
  const before = buttons.map((button) => button.disabled);
  for (const button of buttons) button.disabled = true;
  form.setAttribute("aria-busy", "true");
  try {
    return await work();
  } finally {
    buttons.forEach((button, index) => { button.disabled = before[index]; });
    form.removeAttribute("aria-busy");
  }
}
