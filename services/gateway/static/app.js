// The staff web UI: sign in, create a campaign, send it and watch its counts.
"use strict";

let csrfToken = null;

async function callApi(method, path, body) {
  const options = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  if (csrfToken && method !== "GET") options.headers["X-CSRF-Token"] = csrfToken;
  const response = await fetch(path, options);
  const data = response.status === 204 ? {} : await response.json();
  if (!response.ok) {
    const fields = data.details && data.details.fields ? " " + JSON.stringify(data.details.fields) : "";
    throw new Error((data.message || response.statusText) + fields);
  }
  return data;
}

function showMessage(text) {
  document.getElementById("message").textContent = text || "";
}

function showSignedIn(session) {
  csrfToken = session.csrf_token;
  document.getElementById("who").textContent = `${session.username} (${session.cloud_id})`;
  document.getElementById("sign-in-section").hidden = true;
  document.getElementById("campaign-section").hidden = false;
  document.getElementById("sign-out").hidden = false;
  refreshCampaigns();
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

async function refreshCampaigns() {
  const data = await callApi("GET", "/api/campaigns");
  const rows = document.querySelector("#campaigns tbody");
  rows.replaceChildren();
  for (const campaign of data.campaigns) {
    const row = document.createElement("tr");
    row.dataset.campaignId = campaign.id;
    const counts = campaign.counts;
    for (const value of [campaign.name, campaign.status, counts.recipients, counts.sent, counts.delivered,
                         counts.failed, counts.opted_out, counts.skipped]) {
      row.appendChild(cell(value));
    }
    const actions = document.createElement("td");
    if (!["sending", "scheduled", "paused"].includes(campaign.status)) {
      const send = document.createElement("button");
      send.textContent = "Send now";
      send.className = "send";
      send.addEventListener("click", () => sendCampaign(campaign.id));
      actions.appendChild(send);
    }
    row.appendChild(actions);
    rows.appendChild(row);
  }
}

async function sendCampaign(campaignId) {
  try {
    await callApi("POST", `/api/campaigns/${campaignId}/send`);
    showMessage("");
    await refreshCampaigns();
  } catch (error) {
    showMessage(error.message);
  }
}

async function measureBody(body) {
  if (!csrfToken) return;
  const result = await callApi("POST", "/api/texts/measure", { body });
  const warning = result.too_long ? " (too long: 1,600 characters at most)" : "";
  document.getElementById("measure").textContent =
    `${result.encoding}, ${result.segments} segment(s), ${result.units} units${warning}`;
}

function formData(form) {
  return Object.fromEntries(new FormData(form).entries());
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sign-in").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      showSignedIn(await callApi("POST", "/api/session", formData(event.target)));
      showMessage("");
    } catch (error) {
      showMessage(error.message);
    }
  });
  document.getElementById("new-campaign").addEventListener("submit", async (event) => {
    event.preventDefault();
    const fields = formData(event.target);
    if (!fields.email) delete fields.email;
    try {
      await callApi("POST", "/api/campaigns", fields);
      event.target.reset();
      showMessage("");
      await refreshCampaigns();
    } catch (error) {
      showMessage(error.message);
    }
  });
  document.querySelector("#new-campaign textarea").addEventListener("input", (event) => {
    measureBody(event.target.value).catch((error) => showMessage(error.message));
  });
  document.getElementById("sign-out").addEventListener("click", async () => {
    await callApi("DELETE", "/api/session");
    window.location.reload();
  });
  callApi("GET", "/api/session").then(showSignedIn).catch(() => {});
  setInterval(() => { if (csrfToken) refreshCampaigns().catch(() => {}); }, 2000);
});
