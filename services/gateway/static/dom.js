// DOM building and formatting helpers. Every piece of data reaches the page as text
// (textContent or a text node), never as HTML, so nothing from the API is parsed as markup.

// Keys of `el` props that are set as attributes, because they have no matching property.
const ATTRIBUTES = new Set(["for", "role", "colspan", "scope", "min", "max", "step", "maxlength", "autocomplete",
                            "placeholder", "title", "name", "rows", "pattern", "inputmode", "list"]);

/**
 * Create an element. Each key of `props` sets the property of that name (className,
 * type, value, disabled, hidden). Keys that start with "data-" or "aria-", or are in
 * ATTRIBUTES, set attributes instead, and "on<event>" keys add listeners. Children
 * are nodes, or strings added as text.
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false && key.startsWith("aria-")) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key.startsWith("data-") || key.startsWith("aria-") || ATTRIBUTES.has(key)) {
      node.setAttribute(key, String(value));
    } else {
      node[key] = value;
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace every child of `node` with `children`. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

const numberFormat = new Intl.NumberFormat();
const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export function formatNumber(value) {
  return value === undefined || value === null ? "–" : numberFormat.format(value);
}

/** Format a calendar date given as "YYYY-MM-DD", without moving it across time zones. */
export function formatDate(isoDate) {
  const match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(isoDate || "");
  if (!match) return isoDate || "–";
  const [year, month, day] = match.slice(1).map(Number);
  return new Intl.DateTimeFormat(undefined, { dateStyle: "long" }).format(new Date(year, month - 1, day));
}

/** Return this browser's IANA time zone, such as "America/Chicago", or "" when the browser reports none. */
export function browserTimeZone() {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || "";
}

/** Format an instant in this browser's time zone and name the zone: "Dec 6, 2026, 9:00 AM (America/Chicago)". */
export function formatDateTimeWithZone(iso) {
  const zone = browserTimeZone();
  const text = formatDateTime(iso);
  return iso && zone ? `${text} (${zone})` : text;
}

export function formatDateTime(iso) {
  if (!iso) return "–";
  const moment = new Date(iso);
  return Number.isNaN(moment.getTime()) ? iso : dateTimeFormat.format(moment);
}

/** Format an instant as wall-clock time in an IANA time zone, for example "Mar 15, 2027, 2:00 PM". */
export function formatInZone(moment, timeZone) {
  try {
    return new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short", timeZone }).format(moment);
  } catch (error) {
    return dateTimeFormat.format(moment);
  }
}

/**
 * Return the text with its first letter in upper case, for API messages shown as
 * sentences. A first word that already has a capital (iMIS, IQA) stays as written.
 */
export function sentence(text) {
  const value = String(text || "");
  const firstWord = value.split(/\s/, 1)[0];
  if (firstWord !== firstWord.toLowerCase()) return value;
  return value.charAt(0).toUpperCase() + value.slice(1);
}

export function plural(count, singular, pluralForm = `${singular}s`) {
  return `${formatNumber(count)} ${count === 1 ? singular : pluralForm}`;
}

export const STATUS_LABELS = {
  draft: "Draft",
  scheduled: "Scheduled",
  sending: "Sending",
  paused: "Paused",
  completed: "Completed",
  cancelled: "Cancelled",
  failed: "Failed",
};

export const STATUS_HELP = {
  draft: "Saved, not sent yet.",
  scheduled: "Waiting for its send time.",
  sending: "Texts are going out now.",
  paused: "Sending stopped between texts; resume to continue.",
  completed: "Every recipient has a final status.",
  cancelled: "Stopped by staff; texts not yet sent were not sent.",
  failed: "The run stopped on an error; see the error on the campaign page.",
};

/** Build a coloured badge for a campaign status. Its text is the status as the API names it. */
export function statusBadge(status) {
  return el("span", { className: `badge badge-${status}`, title: STATUS_HELP[status] || "", "data-status": status },
            status);
}
