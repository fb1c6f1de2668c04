"""Recurring schedules through the gateway API, with the scheduler creating their runs."""

from datetime import datetime, timezone

import pytest

from services.gateway.app import create_app
from services.gateway.auth import COOKIE_NAME, CSRF_HEADER
from services.scheduler.service import Scheduler

NOW = datetime(2027, 1, 4, 12, 0, tzinfo=timezone.utc)
DAILY = {"freq": "daily", "time": "09:00", "start": "2027-01-04"}


@pytest.fixture
def gateway(runtime, clock, tenant_factory):
    clock.advance(NOW.timestamp() - clock.time())
    tenant_factory(cloud_id="ACME", timezone="America/New_York")
    tenant_factory(cloud_id="OTHER")
    return create_app(runtime)


def signed_in(app, tenant_id: str):
    """Return a test client with a session for the tenant, and its CSRF header."""
    token, session = app.extensions["text_manager"].sessions.create(tenant_id, "staff")
    client = app.test_client()
    client.set_cookie(COOKIE_NAME, token)
    return client, {CSRF_HEADER: session["csrf_token"]}


def make_campaign(client, headers) -> str:
    response = client.post("/api/campaigns", headers=headers, json={
        "name": "Weekly news", "body": "Hello {FirstName}", "iqa_path": "$/TextManager/Demo Members"})
    assert response.status_code == 201
    return response.get_json()["id"]


def test_schedule_sets_next_occurrence(gateway):
    client, headers = signed_in(gateway, "ACME")
    campaign_id = make_campaign(client, headers)

    response = client.put(f"/api/campaigns/{campaign_id}/schedule", headers=headers, json=DAILY)

    body = response.get_json()
    assert response.status_code == 200
    assert body["schedule_active"] is True
    assert body["schedule"]["tz"] == "America/New_York"
    assert body["next_occurrence"] == "2027-01-04T14:00:00+00:00"


def test_schedule_marks_campaign_scheduled(gateway):
    client, headers = signed_in(gateway, "ACME")
    campaign_id = make_campaign(client, headers)

    client.put(f"/api/campaigns/{campaign_id}/schedule", headers=headers, json=DAILY)

    assert client.get(f"/api/campaigns/{campaign_id}").get_json()["status"] == "scheduled"


@pytest.mark.parametrize("rule, expected", [
    ({"freq": "weekly", "time": "09:00", "start": "2027-01-04"}, "weekdays"),
    ({"freq": "monthly", "time": "09:00", "start": "2027-01-04"}, "monthly rule needs day"),
    ({"freq": "daily", "time": "09:00", "start": "2026-01-01", "end": "2026-02-01"}, "no occurrence after now"),
    ({"freq": "daily", "time": "9", "start": "2027-01-04"}, "HH:MM"),
    ({"freq": "daily", "time": "09:00", "start": "2027-01-04", "tz": "Nowhere/City"}, "IANA time zone"),
])
def test_invalid_schedule_is_422(gateway, rule, expected):
    client, headers = signed_in(gateway, "ACME")
    campaign_id = make_campaign(client, headers)

    response = client.put(f"/api/campaigns/{campaign_id}/schedule", headers=headers, json=rule)

    assert response.status_code == 422
    assert expected in str(response.get_json())


def test_schedule_needs_csrf_header(gateway):
    client, headers = signed_in(gateway, "ACME")
    campaign_id = make_campaign(client, headers)

    response = client.put(f"/api/campaigns/{campaign_id}/schedule", json=DAILY)

    assert response.status_code == 403


def test_other_tenant_cannot_schedule(gateway):
    client, headers = signed_in(gateway, "ACME")
    campaign_id = make_campaign(client, headers)
    other, other_headers = signed_in(gateway, "OTHER")

    assert other.put(f"/api/campaigns/{campaign_id}/schedule", headers=other_headers, json=DAILY).status_code == 404
    assert other.get(f"/api/campaigns/{campaign_id}/schedule").status_code == 404
    assert other.delete(f"/api/campaigns/{campaign_id}/schedule", headers=other_headers).status_code == 404


def test_stop_schedule_then_stop_again_is_409(gateway):
    client, headers = signed_in(gateway, "ACME")
    campaign_id = make_campaign(client, headers)
    client.put(f"/api/campaigns/{campaign_id}/schedule", headers=headers, json=DAILY)

    first = client.delete(f"/api/campaigns/{campaign_id}/schedule", headers=headers)
    second = client.delete(f"/api/campaigns/{campaign_id}/schedule", headers=headers)

    assert first.status_code == 200
    assert first.get_json()["schedule_active"] is False
    assert second.status_code == 409


def test_scheduler_creates_run_at_occurrence(gateway, runtime, clock):
    client, headers = signed_in(gateway, "ACME")
    campaign_id = make_campaign(client, headers)
    client.put(f"/api/campaigns/{campaign_id}/schedule", headers=headers, json=DAILY)
    scheduler = Scheduler(runtime.db, broker=runtime.broker, clock=clock)

    scheduler.tick()
    runs_before = runtime.db.runs.count_documents({"campaign_id": campaign_id})
    clock.advance(2 * 3600 + 60)
    scheduler.tick()

    assert runs_before == 0
    assert [run["_id"] for run in runtime.db.runs.find({"campaign_id": campaign_id})] == [
        f"{campaign_id}-20270104T140000Z"]
