// The signed-in organisation's settings that pages show beside their own data, such as the time zone.

import { callApi } from "./api.js";

let loading = null;

/** Return a promise of the organisation's settings, read from the API once until `forgetOrganisation`. */
export function organisationSettings() {
  if (!loading) {
    loading = callApi("GET", "/api/settings").catch((error) => {
      loading = null;
      throw error;
    });
  }
  return loading;
}

/** Drop the settings read so far, after they changed or the staff member signed out. */
export function forgetOrganisation() {
  loading = null;
}

/** Return the organisation's IANA time zone, or "" when the settings cannot be read. */
export async function organisationTimeZone() {
  try {
    return (await organisationSettings()).timezone || "";
  } catch (error) {
    return "";
  }
}

/** Return today's date in a time zone as "YYYY-MM-DD"; the browser's own zone when `timeZone` is "". */
export function todayIn(timeZone) {
  const options = { year: "numeric", month: "2-digit", day: "2-digit" };
  if (timeZone) options.timeZone = timeZone;
  const parts = Object.fromEntries(new Intl.DateTimeFormat("en-US", options).formatToParts(new Date())
    .map((part) => [part.type, part.value]));
  return `${parts.year}-${parts.month}-${parts.day}`;
}
