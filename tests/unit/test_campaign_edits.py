"""PUT /api/campaigns/{id}: which campaigns may change, the change itself, and its races."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.gateway.app import create_app
from services.gateway.auth import COOKIE_NAME
from services.gateway.editing import CampaignEditor
from services.gateway.errors import Conflict
from services.scheduler.service import Scheduler

CAMPAIGN = {"name": "Renewals", "body": "Hello {FirstName|member}, renew by Friday.",
            "iqa_path": "$/TextManager/Members"}
CHANGED = {"name": "Renewals, last call", "body": "Hi {FirstName}, renewals close tonight.",
           "iqa_path": "$/TextManager/Lapsed", "email": "owner@acme.example", "phone_column": "Cell",
           "id_column": "MemberID", "smart_encoding": True, "prompts": {"Chapter": "North"}}


@pytest.fixture
def app(runtime, tenant_factory):
    tenant_factory(cloud_id="ACME")
    tenant_factory(cloud_id="OTHER")
    return create_app(runtime)


def signed_in(app, tenant_id: str = "ACME", username: str = "alice"):
    token, session = app.extensions["text_manager"].sessions.create(tenant_id, username)
    client = app.test_client()
    client.set_cookie(COOKIE_NAME, token)
    return client, {"X-CSRF-Token": session["csrf_token"]}


@pytest.fixture
def staff(app):
    return signed_in(app)


def create(staff, **fields) -> dict:
    client, headers = staff
    response = client.post("/api/campaigns", json={**CAMPAIGN, **fields}, headers=headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def put(staff, campaign_id: str, fields: dict):
    client, headers = staff
    return client.put(f"/api/campaigns/{campaign_id}", json=fields, headers=headers)


def read(staff, campaign_id: str) -> dict:
    return staff[0].get(f"/api/campaigns/{campaign_id}").get_json()


def schedule_once(staff, campaign_id: str, runtime, after: timedelta) -> dict:
    client, headers = staff
    send_at = (runtime.clock.now() + after).isoformat()
    response = client.post(f"/api/campaigns/{campaign_id}/send", json={"send_at": send_at}, headers=headers)
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.get_json()


def finish_run(runtime, campaign_id: str, status: str, sent: int) -> None:
    """Give the campaign a finished run, as the pipeline would leave it."""
    runtime.db.runs.insert_one({"_id": f"run-{campaign_id}", "tenant_id": "ACME", "campaign_id": campaign_id,
                                "status": status, "due_at": runtime.clock.now(), "counts": {"sent": sent}})
    runtime.db.campaigns.update_one({"_id": campaign_id}, {"$set": {"status": status,
                                                                    "current_run_id": f"run-{campaign_id}"}})


# ------------------------------------------------------------------ drafts


def test_draft_changed(staff, runtime):
    campaign = create(staff)
    runtime.clock.advance(60)

    response = put(staff, campaign["id"], CHANGED)

    changed = response.get_json()
    assert response.status_code == 200
    assert {key: changed[key] for key in CHANGED} == CHANGED
    assert changed["status"] == "draft"
    assert changed["created_at"] == campaign["created_at"]
    assert changed["updated_at"] > campaign["updated_at"]
    assert read(staff, campaign["id"])["body"] == CHANGED["body"]
    stored = runtime.db.campaigns.find_one({"_id": campaign["id"]})
    assert stored["updated_by"] == "alice"
    assert stored["tenant_id"] == "ACME"


def test_second_editor_of_same_revision_refused(app, staff, runtime):
    """Two staff open the same draft: the second save gets a conflict instead of overwriting the first."""
    campaign = create(staff)
    bob = signed_in(app, username="bob")
    runtime.clock.advance(60)

    first = put(bob, campaign["id"], {**CHANGED, "revision": campaign["revision"]})
    second = put(staff, campaign["id"], {**CAMPAIGN, "body": "Alice's text", "revision": campaign["revision"]})

    assert first.status_code == 200
    assert first.get_json()["revision"] == campaign["revision"] + 1
    assert second.status_code == 409
    assert "bob changed this campaign" in second.get_json()["message"]
    assert "reload it to see their change" in second.get_json()["message"]
    assert read(staff, campaign["id"])["body"] == CHANGED["body"]


def test_edit_from_latest_revision_saved(staff):
    campaign = create(staff)
    first = put(staff, campaign["id"], {**CHANGED, "revision": campaign["revision"]}).get_json()

    second = put(staff, campaign["id"], {**CAMPAIGN, "revision": first["revision"]})

    assert campaign["revision"] == 0
    assert second.status_code == 200
    assert second.get_json()["revision"] == 2


def test_edit_without_revision_replaces(staff):
    campaign = create(staff)
    put(staff, campaign["id"], CHANGED)

    response = put(staff, campaign["id"], CAMPAIGN)

    assert response.status_code == 200
    assert response.get_json()["body"] == CAMPAIGN["body"]


def test_change_lists_columns_for_preview(staff):
    campaign = create(staff)

    response = put(staff, campaign["id"], CHANGED)

    assert response.get_json()["notes"] == [
        "Columns are checked at preview: the IQA $/TextManager/Lapsed must exist, be available via the REST API, "
        "and return the columns Cell, MemberID, FirstName."]


def test_omitted_fields_take_defaults(staff):
    """PUT replaces the campaign: an omitted optional field goes back to its default."""
    campaign = create(staff, email="owner@acme.example", phone_column="Cell", prompts={"Chapter": "North"})

    changed = put(staff, campaign["id"], CAMPAIGN).get_json()

    assert changed["email"] == ""
    assert changed["phone_column"] == "Mobile"
    assert changed["prompts"] == {}


def test_round_trip_keeps_prompts(staff):
    """What GET returns can be sent back unchanged, prompts included, as the edit form does."""
    campaign = create(staff, prompts={"Chapter": "North"})
    shown = read(staff, campaign["id"])
    fields = {key: shown[key] for key in ("name", "body", "iqa_path", "phone_column", "id_column",
                                          "smart_encoding", "prompts")}

    changed = put(staff, campaign["id"], dict(fields, body="Hi {FirstName}.")).get_json()

    assert changed["prompts"] == {"Chapter": "North"}
    assert changed["body"] == "Hi {FirstName}."


@pytest.mark.parametrize("fields, field", [
    pytest.param({**CAMPAIGN, "body": "Hi {FirstName"}, "body", id="unclosed-field"),
    pytest.param({**CAMPAIGN, "body": "\u200b"}, "body", id="invisible-body"),
    pytest.param({**CAMPAIGN, "iqa_path": "$/"}, "iqa_path", id="empty-iqa-path"),
    pytest.param({"name": "Renewals", "body": "Hi"}, "iqa_path", id="missing-iqa-path"),
    pytest.param({**CAMPAIGN, "status": "completed"}, "status", id="server-field"),
    pytest.param({**CAMPAIGN, "tenant_id": "OTHER"}, "tenant_id", id="tenant"),
])
def test_invalid_change_is_422_and_keeps_campaign(staff, runtime, fields, field):
    campaign = create(staff)
    before = runtime.db.campaigns.find_one({"_id": campaign["id"]})

    response = put(staff, campaign["id"], fields)

    assert response.status_code == 422
    assert list(response.get_json()["details"]["fields"]) == [field]
    assert runtime.db.campaigns.find_one({"_id": campaign["id"]}) == before


def test_edit_needs_csrf_header(staff):
    client, _ = staff
    campaign = create(staff)

    response = client.put(f"/api/campaigns/{campaign['id']}", json=CHANGED)

    assert response.status_code == 403
    assert read(staff, campaign["id"])["name"] == CAMPAIGN["name"]


def test_other_tenant_gets_404(app, staff, runtime):
    campaign = create(staff)
    other = signed_in(app, "OTHER", "olga")

    response = put(other, campaign["id"], CHANGED)

    assert response.status_code == 404
    assert runtime.db.campaigns.find_one({"_id": campaign["id"]})["name"] == CAMPAIGN["name"]


def test_unknown_campaign_is_404(staff):
    assert put(staff, "0" * 32, CHANGED).status_code == 404


# ------------------------------------------------------------------ campaigns under way or sent


def test_sending_campaign_is_409(staff, runtime):
    client, headers = staff
    campaign = create(staff)
    client.post(f"/api/campaigns/{campaign['id']}/send", headers=headers)

    response = put(staff, campaign["id"], CHANGED)

    body = response.get_json()
    assert response.status_code == 409
    assert body["message"].startswith("the campaign is sending, and the texts already sent used the saved text")
    assert "wait until it finishes, or cancel it" in body["message"]
    assert read(staff, campaign["id"])["body"] == CAMPAIGN["body"]
    assert read(staff, campaign["id"])["editable"] is False


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_campaign_that_sent_texts_is_409(staff, runtime, status):
    campaign = create(staff)
    finish_run(runtime, campaign["id"], status, sent=233)

    response = put(staff, campaign["id"], CHANGED)

    assert response.status_code == 409
    assert f"the campaign is {status} after sending 233 texts" in response.get_json()["message"]
    assert read(staff, campaign["id"])["editable"] is False


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_campaign_that_sent_nothing_changes(staff, runtime, status):
    """A run that failed or was cancelled before its first text leaves a campaign to correct and send again."""
    campaign = create(staff)
    finish_run(runtime, campaign["id"], status, sent=0)
    editable = read(staff, campaign["id"])["editable"]

    response = put(staff, campaign["id"], CHANGED)

    assert editable is True
    assert response.status_code == 200
    assert response.get_json()["status"] == status


def test_recurring_campaign_is_409(staff):
    client, headers = staff
    campaign = create(staff)
    client.put(f"/api/campaigns/{campaign['id']}/schedule", headers=headers,
               json={"freq": "daily", "time": "09:00", "start": "2100-01-05"})

    response = put(staff, campaign["id"], CHANGED)

    assert response.status_code == 409
    assert "stop its schedule, edit the campaign, then set the schedule again" in response.get_json()["message"]


# ------------------------------------------------------------------ scheduled once


def test_scheduled_campaign_changes_before_send(staff, runtime):
    campaign = create(staff)
    scheduled = schedule_once(staff, campaign["id"], runtime, timedelta(hours=3))

    response = put(staff, campaign["id"], CHANGED)

    changed = response.get_json()
    assert scheduled["editable"] is True
    assert response.status_code == 200
    assert changed["status"] == "scheduled"
    assert changed["current_run"]["id"] == scheduled["current_run"]["id"]
    assert changed["current_run"]["due_at"] == scheduled["current_run"]["due_at"]


def test_scheduled_campaign_closes_before_send(staff, runtime):
    campaign = create(staff)
    schedule_once(staff, campaign["id"], runtime, timedelta(minutes=10))
    runtime.clock.advance(8 * 60)

    response = put(staff, campaign["id"], CHANGED)

    assert response.status_code == 409
    assert "less than 2 minutes from now, so it can no longer change" in response.get_json()["message"]
    assert read(staff, campaign["id"])["body"] == CAMPAIGN["body"]


def test_scheduled_campaign_claimed_is_409(staff, runtime):
    """Once the scheduler has claimed the run, the texts are being made from the saved campaign."""
    campaign = create(staff)
    schedule_once(staff, campaign["id"], runtime, timedelta(minutes=5))
    runtime.clock.advance(5 * 60)
    Scheduler(runtime.db, broker=runtime.broker, clock=runtime.clock).tick()

    response = put(staff, campaign["id"], CHANGED)

    assert response.status_code == 409
    assert read(staff, campaign["id"])["body"] == CAMPAIGN["body"]


class StaleCampaigns:
    """The campaign service, but `get` returns the campaign as it was before `change` ran once."""

    def __init__(self, campaigns, change):
        self._campaigns = campaigns
        self._change = change

    def get(self, tenant_id: str, campaign_id: str) -> dict:
        campaign = self._campaigns.get(tenant_id, campaign_id)
        if self._change is not None:
            change, self._change = self._change, None
            change()
        return campaign


@pytest.mark.parametrize("action", ["send", "cancel"])
def test_change_racing_a_send_or_cancel_is_409(app, staff, runtime, action):
    client, headers = staff
    campaign = create(staff)
    if action == "cancel":
        schedule_once(staff, campaign["id"], runtime, timedelta(hours=1))
    context = app.extensions["text_manager"]
    racing = StaleCampaigns(context.campaigns,
                            lambda: client.post(f"/api/campaigns/{campaign['id']}/{action}", headers=headers))
    editor = CampaignEditor(runtime.db, campaigns=racing, clock=runtime.clock)

    with pytest.raises(Conflict) as raised:
        editor.update("ACME", campaign["id"], dict(CAMPAIGN, body="Changed."), "alice")

    assert "while the change was saved" in raised.value.message
    assert runtime.db.campaigns.find_one({"_id": campaign["id"]})["body"] == CAMPAIGN["body"]


def test_draft_editable_flag(staff):
    campaign = create(staff)

    assert campaign["editable"] is True
    assert read(staff, campaign["id"])["editable"] is True
