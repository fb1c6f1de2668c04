// The staff web UI's entry point: session, sign-in form, left navigation and page routing.

import { callApi, onSignedOut, setCsrfToken } from "./api.js";
import { renderCampaignDetail } from "./campaign-detail.js";
import { renderCampaignEditor } from "./campaign-editor.js";
import { renderCampaignList } from "./campaign-list.js";
import { renderDashboard } from "./dashboard.js";
import { clearErrors, showError, showMessage, whileBusy } from "./forms.js";
import { forgetOrganisation } from "./organisation.js";
import { renderSettings } from "./settings.js";

// Hash routes: pattern, page renderer, and which left-navigation entry it belongs to.
const ROUTES = [
  [/^#\/home$/, renderDashboard, "home"],
  [/^#\/campaigns$/, renderCampaignList, "campaigns"],
  [/^#\/campaigns\/new$/, renderCampaignEditor, "campaigns"],
  [/^#\/campaigns\/([0-9a-f]{32})$/, renderCampaignDetail, "campaigns"],
  [/^#\/campaigns\/([0-9a-f]{32})\/edit$/, renderCampaignEditor, "campaigns"],
  [/^#\/settings$/, renderSettings, "settings"],
];

const app = { session: null, page: null };

/**
 * Create the lifetime of one page view. Timers started through `schedule` stop when
 * the staff member navigates away, so a page left behind stops polling the API.
 */
function createPage() {
  const timers = new Set();
  return {
    active: true,
    schedule(callback, delayMs) {
      const timer = setTimeout(() => {
        timers.delete(timer);
        if (this.active) callback();
      }, delayMs);
      timers.add(timer);
    },
    close() {
      this.active = false;
      for (const timer of timers) clearTimeout(timer);
      timers.clear();
    },
  };
}

function route() {
  if (!app.session) return;
  const [path, query = ""] = (window.location.hash || "#/home").split("?");
  const match = ROUTES.map(([pattern, render, nav]) => [pattern.exec(path), render, nav]).find(([found]) => found);
  if (!match) {
    window.location.replace("#/home");
    return;
  }
  const [found, render, nav] = match;
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }

  if (app.page) app.page.close();
  app.page = createPage();
  const content = document.getElementById("content");
  content.replaceChildren();
  render(content, { page: app.page, params: found.slice(1), query: new URLSearchParams(query), session: app.session });
}

function showSignedIn(session) {
  app.session = session;
  setCsrfToken(session.csrf_token);
  document.getElementById("who").textContent = `${session.username} · Cloud ID ${session.cloud_id}`;
  document.getElementById("loading").hidden = true;
  document.getElementById("sign-in-view").hidden = true;
  document.getElementById("app-view").hidden = false;
  // replaceState changes the address without a hashchange event, so the page renders once.
  if (!window.location.hash || window.location.hash === "#/") window.history.replaceState(null, "", "#/home");
  route();
}

function showSignIn(message) {
  app.session = null;
  forgetOrganisation();
  if (app.page) app.page.close();
  app.page = null;
  document.getElementById("loading").hidden = true;
  document.getElementById("app-view").hidden = true;
  document.getElementById("sign-in-view").hidden = false;
  const form = document.getElementById("sign-in");
  form.elements.password.value = "";
  if (message) showMessage(form, message);
  else clearErrors(form);
  (form.elements.username.value ? form.elements.password : form.elements.username).focus();
}

async function onSignInSubmit(event) {
  event.preventDefault();
  const form = event.target;
  const values = Object.fromEntries(["username", "password", "cloud_id"].map((name) => [name, form.elements[name].value]));
  values.username = values.username.trim();
  values.cloud_id = values.cloud_id.trim();
  const missing = Object.entries(values).filter(([, value]) => !value).map(([name]) => name);
  if (missing.length) {
    showError(form, { message: "Fill in every field to sign in.",
                      details: { fields: Object.fromEntries(missing.map((name) => [name, ["Required."]])) } });
    return;
  }
  await whileBusy(form, async () => {
    try {
      const session = await callApi("POST", "/api/session", values);
      clearErrors(form);
      form.elements.password.value = "";
      showSignedIn(session);
    } catch (error) {
      showError(form, error);
      form.elements.password.select();
    }
  });
}

async function onSignOutClick() {
  try {
    await callApi("DELETE", "/api/session");
  } catch (error) {
    // A session that already ended is signed out all the same.
  }
  showSignIn();
}

function start() {
  document.getElementById("sign-in").addEventListener("submit", onSignInSubmit);
  document.getElementById("sign-out").addEventListener("click", onSignOutClick);
  window.addEventListener("hashchange", route);
  onSignedOut(() => {
    if (app.session) showSignIn("Your session has ended: sign in again.");
  });
  callApi("GET", "/api/session").then(showSignedIn).catch(() => showSignIn());
}

start();
