// The send panel of a campaign: "Send now", or "Send once at" a local date and time.

import { callApi } from "./api.js";
import { el, fill, formatInZone } from "./dom.js";
import { clearErrors, errorBox, field, showError, showMessage, whileBusy } from "./forms.js";

let organisationTimeZone = null;

function pad(number, width = 2) {
  return String(number).padStart(width, "0");
}

/**
 * Convert a datetime-local value ("2027-03-15T14:00", read as this computer's local
 * time) to ISO 8601 with the UTC offset in force at that moment, or null when invalid.
 * A time that falls in a daylight-saving gap moves forward, as the Date constructor does.
 */
export function localInputToIso(value) {
  const match = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?$/.exec(value || "");
  if (!match) return null;
  const [year, month, day, hour, minute, second] = match.slice(1).map((part) => Number(part || 0));
  const moment = new Date(year, month - 1, day, hour, minute, second);
  if (Number.isNaN(moment.getTime())) return null;
  const offset = -moment.getTimezoneOffset();
  const sign = offset >= 0 ? "+" : "-";
  const date = `${pad(moment.getFullYear(), 4)}-${pad(moment.getMonth() + 1)}-${pad(moment.getDate())}`;
  const time = `${pad(moment.getHours())}:${pad(moment.getMinutes())}:${pad(moment.getSeconds())}`;
  return `${date}T${time}${sign}${pad(Math.floor(Math.abs(offset) / 60))}:${pad(Math.abs(offset) % 60)}`;
}

function localInputValue(moment) {
  return `${pad(moment.getFullYear(), 4)}-${pad(moment.getMonth() + 1)}-${pad(moment.getDate())}T${pad(moment.getHours())}:${pad(moment.getMinutes())}`;
}

async function loadOrganisationTimeZone() {
  if (organisationTimeZone === null) {
    const settings = await callApi("GET", "/api/settings");
    organisationTimeZone = settings.timezone || "";
  }
  return organisationTimeZone;
}

/** Build the send panel; `onSent(campaign)` receives the campaign the API returns. */
export function buildSendPanel(campaign, onSent) {
  const sendAt = el("input", { name: "send_at", type: "datetime-local", id: "send-at", step: 60 });
  sendAt.min = localInputValue(new Date());
  const zoneNote = el("p", { className: "hint", id: "send-at-zone" });
  const browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "your computer's time zone";
  fill(zoneNote, `Your computer's time (${browserZone}).`);

  const form = el("form", { className: "form send-form", id: "send-form", noValidate: true },
    errorBox(),
    el("div", { className: "send-options" },
       el("div", { className: "send-now" },
          el("button", { type: "button", className: "button button-primary", id: "send-now" }, "Send now"),
          el("p", { className: "hint" }, "Starts within seconds, at the sender number's rate.")),
       el("div", { className: "send-later" },
          field("Send once at", sendAt),
          zoneNote,
          el("button", { type: "submit", className: "button", id: "schedule" }, "Schedule"))));

  form.querySelector("#send-now").addEventListener("click", () => whileBusy(form, () => send(form, campaign, null, onSent)));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const iso = localInputToIso(sendAt.value);
    if (!iso) {
      showMessage(form, "Pick the date and time to send at.", "send_at");
      return;
    }
    if (new Date(iso) <= new Date()) {
      showMessage(form, "That time has passed: pick a later one, or use Send now.", "send_at");
      return;
    }
    whileBusy(form, () => send(form, campaign, iso, onSent));
  });
  sendAt.addEventListener("input", () => describeZones(sendAt, zoneNote, browserZone));

  const again = campaign.status !== "draft";
  return el("section", { className: "panel", id: "send-panel" }, el("h2", {}, again ? "Send again" : "Send"),
    again ? el("p", { className: "hint" }, "Sending again starts a new run to everyone the IQA returns at that time.") : null,
    form);
}

async function describeZones(input, note, browserZone) {
  const iso = localInputToIso(input.value);
  const base = `Your computer's time (${browserZone}).`;
  if (!iso) {
    fill(note, base);
    return;
  }
  let zone = "";
  try {
    zone = await loadOrganisationTimeZone();
  } catch (error) {
    zone = "";
  }
  const moment = new Date(iso);
  const sameZone = !zone || formatInZone(moment, zone) === formatInZone(moment, browserZone);
  fill(note, sameZone ? base : `${base} That is ${formatInZone(moment, zone)} in the organisation's time zone (${zone}).`);
}

async function send(form, campaign, sendAt, onSent) {
  try {
    const updated = await callApi("POST", `/api/campaigns/${campaign.id}/send`, { send_at: sendAt });
    clearErrors(form);
    onSent(updated);
  } catch (error) {
    showError(form, error);
  }
}
