// The send panel of a campaign: "Send now", "Send once at" a local date and time, or "Repeat" on
// a schedule. Sending again after earlier runs texted members takes a confirmation, which shows
// how many members the query returns now.

import { callApi } from "./api.js";
import { buildScheduleForm } from "./campaign-schedule.js";
import { browserTimeZone, el, fill, formatDateTimeWithZone, formatInZone, plural } from "./dom.js";
import { clearErrors, errorBox, field, showError, showMessage, whileBusy } from "./forms.js";
import { organisationTimeZone } from "./organisation.js";

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

/**
 * Build the send panel. `onSent(campaign)` receives the campaign the API returns after a
 * send; `onScheduled()` runs after a recurring schedule was set.
 */
export function buildSendPanel(campaign, onSent, onScheduled) {
  const sendAt = el("input", { name: "send_at", type: "datetime-local", id: "send-at", step: 60 });
  sendAt.min = localInputValue(new Date());
  const zoneNote = el("p", { className: "hint", id: "send-at-zone" });
  const browserZone = browserTimeZone() || "your computer's time zone";
  fill(zoneNote, `Your computer's time (${browserZone}).`);
  const confirm = buildResendConfirm(campaign);

  const form = el("form", { className: "form send-form", id: "send-form", noValidate: true },
    errorBox(),
    el("div", { className: "send-options" },
       el("div", { className: "send-now" },
          el("button", { type: "button", className: "button button-primary", id: "send-now" }, "Send now"),
          el("p", { className: "hint" }, "Starts within seconds, at the sender number's rate.")),
       el("div", { className: "send-later" },
          field(`Send once at (${browserZone})`, sendAt),
          zoneNote,
          el("button", { type: "submit", className: "button", id: "schedule" }, "Schedule"))),
    confirm.box);

  async function send(sendAtIso, resend) {
    try {
      const updated = await callApi("POST", `/api/campaigns/${campaign.id}/send`, { send_at: sendAtIso, resend });
      clearErrors(form);
      confirm.close();
      onSent(updated);
      return null;
    } catch (error) {
      if (error.status === 409 && !resend && error.details && error.details.sent !== undefined) {
        return { confirmSent: error.details.sent };
      }
      showError(form, error);
      return null;
    }
  }

  // Opening the confirmation runs outside whileBusy, which would enable its button again while it counts.
  async function request(sendAtIso) {
    clearErrors(form);
    if (campaign.counts.sent > 0) {
      confirm.open(sendAtIso, campaign.counts.sent);
      return;
    }
    const outcome = await whileBusy(form, () => send(sendAtIso, false));
    if (outcome) confirm.open(sendAtIso, outcome.confirmSent);
  }

  confirm.onConfirm = (sendAtIso) => whileBusy(form, () => send(sendAtIso, true));
  form.querySelector("#send-now").addEventListener("click", () => request(null));
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
    request(iso);
  });
  sendAt.addEventListener("input", () => describeZones(sendAt, zoneNote, browserZone));

  const again = campaign.status !== "draft";
  return el("section", { className: "panel", id: "send-panel" }, el("h2", {}, again ? "Send again" : "Send"),
    again ? el("p", { className: "hint", id: "send-again-hint" }, describeSendAgain(campaign)) : null,
    form,
    buildRepeatOption(campaign, onScheduled));
}

function describeSendAgain(campaign) {
  if (campaign.counts.sent > 0) {
    return `Sending again starts a new run to everyone the IQA returns at that time, including members who got one of the ${
      plural(campaign.counts.sent, "text")} sent before. You confirm first, with the number of members the query returns now.`;
  }
  return "No text of this campaign went out yet, so this sends to everyone the IQA returns at that time.";
}

function buildRepeatOption(campaign, onScheduled) {
  const option = el("details", { className: "repeat-option", id: "repeat-option" },
    el("summary", {}, "Repeat on a schedule"),
    el("p", { className: "hint" }, "Text everyone the IQA returns at each time: every day, on days of the week, or on a day of the month.",
       campaign.counts.sent > 0 ? " Members texted before get the text again each time." : ""));
  option.addEventListener("toggle", () => {
    if (option.open && !option.querySelector("form")) option.append(buildScheduleForm(campaign, onScheduled));
  });
  return option;
}

/**
 * Build the confirmation of a send to everyone again. `open(sendAt, sentBefore)` shows it
 * and counts the members the query returns now with the preview; `onConfirm(sendAt)`
 * runs when staff confirm.
 */
function buildResendConfirm(campaign) {
  const text = el("p", { id: "resend-count" });
  const yes = el("button", { type: "button", className: "button button-primary", id: "confirm-resend" }, "Send again");
  const no = el("button", { type: "button", className: "button button-quiet", id: "cancel-resend" }, "Don't send");
  const box = el("div", { className: "confirm-box", id: "resend-confirm", role: "group",
                          "aria-labelledby": "resend-title", hidden: true },
    el("h3", { id: "resend-title" }, "Text everyone in the query again?"), text,
    el("div", { className: "form-actions" }, yes, no));
  const state = { sendAt: null, generation: 0 };
  const confirm = { box, onConfirm: () => {} };

  confirm.close = () => {
    state.generation += 1;
    box.hidden = true;
  };
  confirm.open = async (sendAt, sentBefore) => {
    state.generation += 1;
    const generation = state.generation;
    state.sendAt = sendAt;
    box.hidden = false;
    yes.disabled = true;
    const when = sendAt ? `at ${formatDateTimeWithZone(sendAt)}` : "now";
    const earlier = `Earlier runs of this campaign sent ${plural(sentBefore, "text")}.`;
    fill(text, "Counting the members the query returns now…");
    fill(yes, sendAt ? "Schedule again" : "Send again");
    try {
      const preview = await callApi("GET", `/api/campaigns/${campaign.id}/preview`);
      if (generation !== state.generation) return;
      const members = plural(preview.recipients, "member");
      fill(text, sendAt
        ? `Everyone the query returns ${when} gets this text again; right now that is ${members}. ${earlier}`
        : `The query returns ${members} who can get a text now, and each of them gets this text again. ${earlier}`);
      fill(yes, sendAt ? `Schedule for ${members}` : `Send again to ${members}`);
      yes.dataset.recipients = String(preview.recipients);
    } catch (error) {
      if (generation !== state.generation) return;
      fill(text, `The query could not be counted just now (${error.message}). Everyone it returns ${when} gets this text again. ${earlier}`);
    }
    yes.disabled = false;
    yes.focus();
  };
  yes.addEventListener("click", () => confirm.onConfirm(state.sendAt));
  no.addEventListener("click", () => confirm.close());
  return confirm;
}

async function describeZones(input, note, browserZone) {
  const iso = localInputToIso(input.value);
  const base = `Your computer's time (${browserZone}).`;
  if (!iso) {
    fill(note, base);
    return;
  }
  const zone = await organisationTimeZone();
  const moment = new Date(iso);
  const sameZone = !zone || formatInZone(moment, zone) === formatInZone(moment, browserZone);
  fill(note, sameZone ? base : `${base} That is ${formatInZone(moment, zone)} in the organisation's time zone (${zone}).`);
}
