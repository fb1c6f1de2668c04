// The Settings page: organisation, iMIS and Twilio settings, limits, administrators, and a phone
// number checker. Only administrators may change the settings; everyone else sees them read-only.

import { callApi } from "./api.js";
import { el, fill } from "./dom.js";
import { clearErrors, errorBox, field, showError, showMessage, whileBusy } from "./forms.js";
import { buildOptOutList } from "./opt-outs.js";
import { forgetOrganisation } from "./organisation.js";

// [name, label, kind, hint]; kind "secret" is a write-only password input.
const GROUPS = [
  ["Organisation", [
    ["name", "Organisation name", "text"],
    ["default_email", "Default e-mail address", "email",
     "The administrator's address. Text Manager writes to it, and to the campaign e-mail, when sending goes wrong."],
    ["default_country", "Default country", "country",
     "Two-letter code (US, CA, GB…) for numbers without a + prefix. A number starting with + keeps its own country."],
    ["timezone", "Time zone", "timezone", "Days for the daily limit and the dashboard start at midnight here."],
  ]],
  ["iMIS", [
    ["imis_base_url", "iMIS address", "url", "The base address of your iMIS site, such as https://members.example.org."],
    ["imis_username", "Service account username", "text", "The iMIS user Text Manager reads IQA queries as."],
    ["imis_password", "Service account password", "secret"],
    ["imis_text_log", "Log each sent text in iMIS as", "text_log",
     "An interaction is an SMS entry in the member's communication log (newer iMIS sites); a site without it gets a TEXTMSG activity instead. A TEXTMSG activity needs that activity type in iMIS."],
  ]],
  ["Twilio", [
    ["twilio_account_sid", "Account SID", "text", "AC followed by 32 hex digits."],
    ["twilio_auth_token", "Auth token", "secret"],
    ["sender_number", "Sender number", "text", "In E.164 form, such as +18885550100."],
    ["messaging_service_sid", "Messaging Service SID", "text",
     "Optional: MG followed by 32 hex digits. When set, Twilio picks the sender from the service."],
    ["sender_kind", "Sender kind", "sender_kind"],
    ["sender_rate_sps", "Sending rate (segments per second)", "rate",
     "A verified toll-free number takes 3 segments per second."],
  ]],
  ["Limits", [
    ["daily_limit", "Daily limit (texts per day)", "count"],
    ["run_segment_limit", "Maximum segments per campaign run", "count"],
  ]],
  ["Administrators", [
    ["admins", "Administrator usernames", "admins",
     "iMIS usernames of the staff who may change these settings, one per line. Keep at least one."],
  ]],
];
const NUMBER_KINDS = ["rate", "count"];
const TEXT_LOG_CHOICES = [["interaction", "Interaction (communication log)"], ["activity", "TEXTMSG activity"],
                          ["off", "Off: do not log texts"]];

export function renderSettings(container, { page }) {
  const inputs = {};
  const secretStates = {};
  const form = el("form", { className: "form settings-form", id: "settings-form", noValidate: true }, errorBox(),
    el("p", { className: "form-status", role: "status", id: "settings-status" }),
    el("p", { className: "access-note", id: "settings-access", hidden: true }),
    el("p", { className: "hint", id: "cloud-id" }),
    GROUPS.map(([title, entries]) => el("fieldset", {}, el("legend", {}, title),
      entries.map(([name, label, kind, hint]) => buildField(name, label, kind, hint, inputs, secretStates)))),
    el("div", { className: "form-actions" },
       el("button", { type: "submit", className: "button button-primary", id: "save-settings" }, "Save settings")));
  const loaded = { values: null };

  container.append(el("div", { className: "page-header" }, el("h1", {}, "Settings")),
    el("div", { className: "settings-layout" }, el("section", { className: "panel" }, form),
       el("div", {}, buildNumberChecker(), buildOptOutList(page))));

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    whileBusy(form, () => saveSettings(form, inputs, secretStates, loaded));
  });
  callApi("GET", "/api/settings")
    .then((settings) => {
      if (page.active) showSettings(form, inputs, secretStates, loaded, settings);
    })
    .catch((error) => showError(form, error));
}

function buildField(name, label, kind, hint, inputs, secretStates) {
  if (kind === "secret") {
    const input = el("input", { name, type: "password", autocomplete: "new-password", value: "" });
    inputs[name] = input;
    secretStates[name] = el("span", { className: "secret-state", "data-secret": name }, "…");
    const wrapper = field(label, input, "Write-only: enter a new value to replace the stored one, or leave empty to keep it.");
    wrapper.querySelector("label").append(" ", secretStates[name]);
    return wrapper;
  }
  const input = buildInput(name, kind);
  inputs[name] = input;
  const wrapper = field(label, input, hint);
  if (kind === "timezone") wrapper.append(timeZoneList());
  return wrapper;
}

function timeZoneList() {
  const zones = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [];
  return el("datalist", { id: "time-zones" }, zones.map((zone) => el("option", { value: zone })));
}

function buildInput(name, kind) {
  if (kind === "sender_kind") {
    return el("select", { name }, ["toll-free", "long-code", "short-code"].map((value) => el("option", { value }, value)));
  }
  if (kind === "text_log") {
    return el("select", { name }, TEXT_LOG_CHOICES.map(([value, label]) => el("option", { value }, label)));
  }
  if (kind === "admins") return el("textarea", { name, rows: 3, autocomplete: "off", spellcheck: false });
  if (kind === "rate") return el("input", { name, type: "number", min: 0.1, max: 1000, step: 0.1 });
  if (kind === "count") return el("input", { name, type: "number", min: 0, step: 1 });
  if (kind === "country") return el("input", { name, maxlength: 2, autocomplete: "off", className: "short" });
  if (kind === "timezone") return el("input", { name, list: "time-zones", autocomplete: "off" });
  return el("input", { name, type: kind, autocomplete: "off" });
}

function showSettings(form, inputs, secretStates, loaded, settings) {
  loaded.values = settings;
  fill(form.querySelector("#cloud-id"), `Cloud ID ${settings.cloud_id}. Secrets are never shown; each says whether it is set.`);
  for (const [name, input] of Object.entries(inputs)) {
    if (name in secretStates) {
      input.value = "";
      const isSet = Boolean(settings[`${name}_set`]);
      fill(secretStates[name], isSet ? "set" : "not set");
      secretStates[name].classList.toggle("secret-missing", !isSet);
    } else if (name === "admins") {
      input.value = (settings.admins || []).join("\n");
    } else {
      input.value = settings[name] === undefined || settings[name] === null ? "" : String(settings[name]);
    }
  }
  showAccess(form, settings.is_admin, settings.admins || []);
}

/** Let administrators change the settings; show everyone else the settings read-only and whom to ask. */
function showAccess(form, isAdmin, admins) {
  for (const fieldset of form.querySelectorAll("fieldset")) fieldset.disabled = !isAdmin;
  form.querySelector("#save-settings").hidden = !isAdmin;
  const note = form.querySelector("#settings-access");
  note.hidden = isAdmin;
  if (isAdmin) return;
  fill(note, admins.length
    ? `Only administrators can change these settings. Ask an administrator of your organisation (${admins.join(", ")}) to make a change, or to add you as an administrator.`
    : "Your organisation has no administrator yet, so nobody can change these settings here. Ask your Text Manager operator to name one with the set-admins command.");
}

/** Return the user names typed into the administrators field, one per line, without blank lines. */
function adminNames(input) {
  return input.value.split("\n").map((line) => line.trim()).filter((line) => line);
}

/** Return the settings that differ from the loaded ones, plus every secret that was typed in. */
function changedSettings(inputs, secretStates, loaded) {
  const changes = {};
  for (const [name, input] of Object.entries(inputs)) {
    if (name in secretStates) {
      if (input.value) changes[name] = input.value;
      continue;
    }
    if (name === "admins") {
      const names = adminNames(input);
      if (names.join("\n") !== (loaded.values.admins || []).join("\n")) changes.admins = names;
      continue;
    }
    const value = name === "default_country" ? input.value.trim().toUpperCase() : input.value.trim();
    const before = loaded.values[name] === undefined || loaded.values[name] === null ? "" : String(loaded.values[name]);
    if (value === before) continue;
    const kind = GROUPS.flatMap(([, entries]) => entries).find(([entry]) => entry === name)[2];
    changes[name] = NUMBER_KINDS.includes(kind) && value !== "" ? Number(value) : value;
  }
  return changes;
}

async function saveSettings(form, inputs, secretStates, loaded) {
  const status = form.querySelector("#settings-status");
  fill(status, "");
  if (!loaded.values) return;
  const changes = changedSettings(inputs, secretStates, loaded);
  if (!Object.keys(changes).length) {
    clearErrors(form);
    fill(status, "Nothing changed.");
    return;
  }
  try {
    const settings = await callApi("PUT", "/api/settings", changes);
    forgetOrganisation();
    clearErrors(form);
    showSettings(form, inputs, secretStates, loaded, settings);
    fill(status, "Settings saved.");
  } catch (error) {
    showError(form, error);
    if (error.code === "not_administrator") showAccess(form, false, error.details.admins || []);
  }
}

function buildNumberChecker() {
  const number = el("input", { name: "number", type: "tel", autocomplete: "off", placeholder: "(202) 555-0100" });
  const country = el("input", { name: "country", maxlength: 2, autocomplete: "off", className: "short",
                                placeholder: "default" });
  const result = el("div", { className: "check-result", id: "number-result", "aria-live": "polite" });
  const form = el("form", { className: "form", id: "number-check", noValidate: true }, errorBox(),
    field("Phone number", number, "As it appears in iMIS."),
    field("Country", country, "Leave empty to use the default country."),
    el("div", { className: "form-actions" }, el("button", { type: "submit", className: "button" }, "Check number")),
    result);

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    fill(result);
    if (!number.value.trim()) {
      showMessage(form, "Enter a phone number to check.", "number");
      return;
    }
    whileBusy(form, () => checkNumber(form, number, country, result));
  });
  return el("section", { className: "panel" }, el("h2", {}, "Number checker"),
    el("p", { className: "hint" }, "See how Text Manager reads a number from iMIS and whether it can take a text. The opt-out list is not checked."),
    form);
}

async function checkNumber(form, number, country, result) {
  const body = { number: number.value.trim(), country: country.value.trim().toUpperCase() || null };
  try {
    const check = await callApi("POST", "/api/phone-numbers/check", body);
    clearErrors(form);
    fill(result, check.sendable
      ? [el("span", { className: "badge badge-completed" }, "sendable"), " ", el("strong", {}, check.e164)]
      : [el("span", { className: "badge badge-failed" }, "not sendable"), " ", check.reason || "",
         check.e164 ? ` (${check.e164})` : ""]);
  } catch (error) {
    showError(form, error);
  }
}
