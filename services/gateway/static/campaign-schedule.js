// Recurring schedules: the form that sets one, and the panel that shows the rule in words,
// the next occurrences in the rule's time zone, and the occurrences missed.

import { callApi } from "./api.js";
import { el, fill, formatDate } from "./dom.js";
import { clearErrors, errorBox, field, showError, showMessage, whileBusy } from "./forms.js";
import { organisationTimeZone, todayIn } from "./organisation.js";

const FREQUENCIES = [["daily", "Every day"], ["weekly", "Every week"], ["monthly", "Every month"]];
// The API's weekday names, Monday first as in ISO 8601.
const WEEKDAYS = [["mon", "Monday"], ["tue", "Tuesday"], ["wed", "Wednesday"], ["thu", "Thursday"],
                  ["fri", "Friday"], ["sat", "Saturday"], ["sun", "Sunday"]];
const DEFAULT_TIME = "09:00";

/** Format "HH:MM" as this browser writes a time of day, for example "9:30 AM". */
function formatClock(time) {
  const match = /^(\d{2}):(\d{2})$/.exec(time || "");
  if (!match) return time || "–";
  const moment = Date.UTC(2000, 0, 1, Number(match[1]), Number(match[2]));
  return new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit", timeZone: "UTC" }).format(moment);
}

function listInWords(words) {
  return new Intl.ListFormat("en", { style: "long", type: "conjunction" }).format(words);
}

/** Return a stored recurring rule in words, such as "Every Monday and Thursday at 9:30 AM (America/New_York), from …". */
export function describeRule(rule) {
  if (!rule) return "";
  let when = "Every day";
  if (rule.freq === "weekly") {
    const names = WEEKDAYS.filter(([value]) => (rule.weekdays || []).includes(value)).map(([, name]) => name);
    when = names.length ? `Every ${listInWords(names)}` : "Every week, on no day";
  } else if (rule.freq === "monthly") {
    when = `On day ${rule.day} of every month`;
    if (rule.day > 28) when += " (the last day in shorter months)";
  }
  const zone = rule.tz ? ` (${rule.tz})` : "";
  const end = rule.end ? ` until ${formatDate(rule.end)}` : ", with no end date";
  return `${when} at ${formatClock(rule.time)}${zone}, from ${formatDate(rule.start)}${end}.`;
}

/** Format an instant with its weekday, as wall-clock time in an IANA time zone. */
function formatOccurrence(iso, timeZone) {
  const options = { weekday: "short", year: "numeric", month: "short", day: "numeric", hour: "numeric",
                    minute: "2-digit" };
  if (timeZone) options.timeZone = timeZone;
  try {
    return new Intl.DateTimeFormat(undefined, options).format(new Date(iso));
  } catch (error) {
    return new Date(iso).toString();
  }
}

/**
 * Build the form that makes a campaign repeat, filled from the campaign's schedule when it
 * changes one. A changed rule keeps its own time zone; a new rule gets the organisation's,
 * which the API fills in. `onSaved()` runs after the API stored the schedule.
 */
export function buildScheduleForm(campaign, onSaved) {
  const rule = campaign.schedule || {};
  const inputs = {
    freq: el("select", { name: "freq", id: "schedule-freq" },
             FREQUENCIES.map(([value, label]) => el("option", { value, selected: value === rule.freq }, label))),
    time: el("input", { name: "time", type: "time", id: "schedule-time", step: 60, value: rule.time || DEFAULT_TIME }),
    day: el("input", { name: "day", type: "number", id: "schedule-day", min: 1, max: 31, step: 1,
                       value: rule.day || "" }),
    start: el("input", { name: "start", type: "date", id: "schedule-start", value: rule.start || "" }),
    end: el("input", { name: "end", type: "date", id: "schedule-end", value: rule.end || "" }),
  };
  const weekdayBoxes = WEEKDAYS.map(([value, name]) => el("input", {
    type: "checkbox", name: "weekdays", value, checked: (rule.weekdays || []).includes(value),
    "aria-label": name }));
  const weekdays = el("fieldset", { className: "weekday-choice", "data-field": "weekdays" },
    el("legend", {}, "On"),
    WEEKDAYS.map(([, name], index) => el("label", {}, weekdayBoxes[index], ` ${name.slice(0, 3)}`)));
  const dayField = field("Day of the month", inputs.day, "1 to 31; 29 to 31 fall on the last day of shorter months.");
  const zoneNote = el("p", { className: "hint", id: "schedule-zone" });
  const summary = el("p", { className: "schedule-summary", id: "schedule-summary", "aria-live": "polite" });

  const form = el("form", { className: "form schedule-form", id: "schedule-form", noValidate: true },
    errorBox(),
    el("div", { className: "schedule-fields" },
       field("Repeat", inputs.freq),
       field("At", inputs.time),
       field("From", inputs.start),
       field("Until (optional)", inputs.end, "Leave empty to repeat until you stop it.")),
    weekdays, dayField, zoneNote, summary,
    el("div", { className: "form-actions" },
       el("button", { type: "submit", className: "button", id: "set-schedule" },
          campaign.schedule_active ? "Save schedule" : "Repeat")));

  function update() {
    weekdays.hidden = inputs.freq.value !== "weekly";
    dayField.hidden = inputs.freq.value !== "monthly";
    const values = readRule(inputs, weekdayBoxes, rule.tz);
    fill(summary, values.start && values.time ? describeRule({ tz: form.dataset.timeZone || "", ...values }) : "");
  }
  form.addEventListener("input", update);
  form.addEventListener("change", update);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const values = readRule(inputs, weekdayBoxes, rule.tz);
    const problem = checkRule(values);
    if (problem) {
      showMessage(form, problem.message, problem.field);
      return;
    }
    whileBusy(form, () => saveSchedule(form, campaign.id, values, onSaved));
  });

  if (rule.tz) {
    fill(zoneNote, `Times are in the schedule's time zone, ${rule.tz}.`);
  } else {
    organisationTimeZone().then((zone) => {
      form.dataset.timeZone = zone;
      if (!inputs.start.value) inputs.start.value = todayIn(zone);
      fill(zoneNote, zone ? `Times are in the organisation's time zone, ${zone}. An administrator can change it in Settings.`
                          : "Times are in the organisation's time zone, set in Settings.");
      update();
    });
  }
  update();
  return form;
}

function readRule(inputs, weekdayBoxes, timeZone) {
  const values = { freq: inputs.freq.value, time: inputs.time.value, start: inputs.start.value };
  if (timeZone) values.tz = timeZone;
  if (inputs.end.value) values.end = inputs.end.value;
  if (values.freq === "weekly") values.weekdays = weekdayBoxes.filter((box) => box.checked).map((box) => box.value);
  if (values.freq === "monthly") values.day = inputs.day.value === "" ? null : Number(inputs.day.value);
  return values;
}

/** Return the first problem a staff member can fix before asking the API, as {message, field}, or null. */
function checkRule(values) {
  if (!/^\d{2}:\d{2}$/.test(values.time)) return { message: "Pick the time of day to send at.", field: "time" };
  if (!values.start) return { message: "Pick the first day to send on.", field: "start" };
  if (values.end && values.end < values.start) {
    return { message: "The last day is before the first: pick a later one, or none.", field: "end" };
  }
  if (values.freq === "weekly" && !values.weekdays.length) {
    return { message: "Tick at least one day of the week.", field: "weekdays" };
  }
  if (values.freq === "monthly" && !(Number.isInteger(values.day) && values.day >= 1 && values.day <= 31)) {
    return { message: "Enter a day of the month from 1 to 31.", field: "day" };
  }
  return null;
}

async function saveSchedule(form, campaignId, values, onSaved) {
  try {
    await callApi("PUT", `/api/campaigns/${campaignId}/schedule`, values);
    clearErrors(form);
    onSaved();
  } catch (error) {
    showError(form, error);
  }
}

/**
 * Build the panel of a campaign's recurring schedule. `show(campaign)` fills it from the
 * campaign, and reads the next occurrences from the API when they may have moved on.
 * `onChanged()` runs after the schedule was changed in the panel's form.
 */
export function buildSchedulePanel(onChanged) {
  const rule = el("p", { id: "schedule-rule" });
  const state = el("p", { className: "hint", id: "schedule-state" });
  const upcoming = el("ol", { className: "occurrence-list", id: "schedule-upcoming" });
  const missed = el("p", { className: "hint", id: "schedule-missed", hidden: true });
  const error = el("div", { className: "page-error", role: "alert", hidden: true });
  const change = el("button", { type: "button", className: "button button-quiet", id: "change-schedule" }, "Change");
  const formSlot = el("div");
  const panel = el("section", { className: "panel", id: "schedule-panel", hidden: true },
    el("div", { className: "panel-header" }, el("h2", {}, "Repeats"), change),
    rule, state, error, upcoming, missed, formSlot);
  const shown = { key: null, campaign: null };

  change.addEventListener("click", () => {
    if (formSlot.firstChild) {
      fill(formSlot);
      return;
    }
    fill(formSlot, buildScheduleForm(shown.campaign, () => {
      fill(formSlot);
      onChanged();
    }));
  });

  async function loadUpcoming(campaign) {
    try {
      const [schedule, organisationZone] = await Promise.all([callApi("GET", `/api/campaigns/${campaign.id}/schedule`),
                                                              organisationTimeZone()]);
      const zone = campaign.schedule.tz || organisationZone;
      error.hidden = true;
      fill(state, zone ? `Next texts go out at these times (${zone}):` : "Next texts go out at these times:");
      fill(upcoming, schedule.upcoming.map((iso) => el("li", { "data-occurrence": iso }, formatOccurrence(iso, zone))));
      const misses = schedule.missed_occurrences || [];
      const skips = schedule.skipped_occurrences || [];
      const notes = [];
      if (misses.length) {
        notes.push(`Missed while Text Manager was not running, so not sent: ${
          misses.map((iso) => formatOccurrence(iso, zone)).join("; ")}.`);
      }
      if (skips.length) {
        notes.push(`Not sent because the earlier run had not finished: ${
          skips.map((skip) => `${formatOccurrence(skip.at, zone)} (${skip.reason})`).join("; ")}.`);
      }
      if (notes.length && zone) notes.push(`Times are in ${zone}.`);
      missed.hidden = !notes.length;
      fill(missed, notes.join(" "));
    } catch (failure) {
      fill(error, `The next occurrences could not be loaded: ${failure.message}`);
      error.hidden = false;
    }
  }

  return {
    panel,
    show(campaign) {
      shown.campaign = campaign;
      panel.hidden = !campaign.schedule;
      if (!campaign.schedule) return;
      const key = JSON.stringify([campaign.schedule, campaign.schedule_active, campaign.next_occurrence]);
      if (key === shown.key) return;
      shown.key = key;
      fill(rule, describeRule(campaign.schedule));
      change.hidden = !campaign.schedule_active;
      fill(formSlot);
      fill(state, campaign.schedule_active ? "Next texts go out at these times:"
                                           : "Stopped: no more texts go out on this schedule.");
      fill(upcoming);
      if (campaign.schedule_active) loadUpcoming(campaign);
      else missed.hidden = true;
    },
  };
}
