"""Recurring schedules through the gateway API, with the scheduler creating their runs."""

from datetime import datetime, timedelta, timezone

import pytest

from libs.common.progress import RunProgress
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


# ------------------------------------------------------------------ stopping keeps the campaign's state


def finished_run(runtime, campaign_id: str, status: str = "completed", sent: int = 233) -> str:
    """Store a finished run as the campaign's current one, and the campaign status that run leaves."""
    run_id = f"{campaign_id}-once"
    runtime.db.runs.insert_one({"_id": run_id, "tenant_id": "ACME", "campaign_id": campaign_id, "status": status,
                                "expanded": True, "counts": {"recipients": sent, "sent": sent, "done": sent}})
    runtime.db.campaigns.update_one({"_id": campaign_id}, {"$set": {"status": status, "current_run_id": run_id}})
    return run_id


@pytest.mark.parametrize("status", ["completed", "cancelled", "failed"])
def test_stop_keeps_finished_status(gateway, runtime, status):
    client, headers = signed_in(gateway, "ACME")
    campaign_id = make_campaign(client, headers)
    run_id = finished_run(runtime, campaign_id, status)
    client.put(f"/api/campaigns/{campaign_id}/schedule", headers=headers, json=DAILY)
    between = client.get(f"/api/campaigns/{campaign_id}").get_json()["status"]

    response = client.delete(f"/api/campaigns/{campaign_id}/schedule", headers=headers)

    campaign = client.get(f"/api/campaigns/{campaign_id}").get_json()
    assert between == "scheduled"
    assert response.status_code == 200
    assert response.get_json()["status"] == status
    assert campaign["status"] == status
    assert campaign["current_run"]["id"] == run_id
    assert campaign["counts"]["sent"] == 233


def test_stop_completed_keeps_dashboard_count(gateway, runtime):
    client, headers = signed_in(gateway, "ACME")
    campaign_id = make_campaign(client, headers)
    finished_run(runtime, campaign_id)
    before = client.get("/api/dashboard").get_json()["campaigns"]["completed"]
    client.put(f"/api/campaigns/{campaign_id}/schedule", headers=headers,
               json={"freq": "daily", "time": "09:00", "start": "2027-01-04"})

    client.delete(f"/api/campaigns/{campaign_id}/schedule", headers=headers)

    assert before == 1
    assert client.get("/api/dashboard").get_json()["campaigns"]["completed"] == 1


def test_stop_never_sent_is_draft(gateway):
    client, headers = signed_in(gateway, "ACME")
    campaign_id = make_campaign(client, headers)
    client.put(f"/api/campaigns/{campaign_id}/schedule", headers=headers, json=DAILY)

    response = client.delete(f"/api/campaigns/{campaign_id}/schedule", headers=headers)

    assert response.get_json()["status"] == "draft"


def test_stop_keeps_history(gateway, runtime, clock):
    """The rule, every run and the missed occurrences stay readable after the schedule stops."""
    client, headers = signed_in(gateway, "ACME")
    campaign_id = make_campaign(client, headers)
    client.put(f"/api/campaigns/{campaign_id}/schedule", headers=headers, json=DAILY)
    scheduler = Scheduler(runtime.db, broker=runtime.broker, clock=clock)
    clock.advance(2 * 3600 + 60)
    scheduler.tick()
    runtime.db.runs.update_many({"campaign_id": campaign_id}, {"$set": {"status": "completed"}})
    clock.advance(3 * 86400)
    for _ in range(3):  # each tick handles one occurrence: two missed, then one on time
        scheduler.tick()
    client, headers = signed_in(gateway, "ACME")  # the first session expired meanwhile

    stopped = client.delete(f"/api/campaigns/{campaign_id}/schedule", headers=headers).get_json()

    assert stopped["schedule"]["freq"] == "daily"
    assert stopped["schedule_active"] is False
    assert stopped["upcoming"] == []
    assert stopped["missed_occurrences"] == ["2027-01-05T14:00:00+00:00", "2027-01-06T14:00:00+00:00"]
    assert stopped["skipped_occurrences"] == []
    assert runtime.db.runs.count_documents({"campaign_id": campaign_id}) == 2
    assert client.get(f"/api/campaigns/{campaign_id}").get_json()["schedule"]["time"] == "09:00"


def test_stop_during_occurrence_run(gateway, runtime, clock):
    """A run under way goes on after the schedule stops, and then completes the campaign."""
    client, headers = signed_in(gateway, "ACME")
    campaign_id = make_campaign(client, headers)
    client.put(f"/api/campaigns/{campaign_id}/schedule", headers=headers, json=DAILY)
    clock.advance(2 * 3600 + 60)
    Scheduler(runtime.db, broker=runtime.broker, clock=clock).tick()
    run_id = f"{campaign_id}-20270104T140000Z"
    runtime.db.runs.update_one({"_id": run_id}, {"$set": {"status": "sending", "expanded": True}})

    stopped = client.delete(f"/api/campaigns/{campaign_id}/schedule", headers=headers).get_json()
    RunProgress(runtime.db, clock).complete_if_done(runtime.db.runs.find_one({"_id": run_id}))

    assert stopped["status"] == "sending"
    assert client.get(f"/api/campaigns/{campaign_id}").get_json()["status"] == "completed"


# ------------------------------------------------------------------ a recurring campaign's status


def test_occurrences_move_status(gateway, runtime, clock):
    """Each occurrence shows the campaign sending, and it waits as scheduled between occurrences."""
    client, headers = signed_in(gateway, "ACME")
    campaign_id = make_campaign(client, headers)
    client.put(f"/api/campaigns/{campaign_id}/schedule", headers=headers, json=DAILY)
    scheduler = Scheduler(runtime.db, broker=runtime.broker, clock=clock)
    statuses = []
    for day in ("20270104", "20270105"):
        clock.advance(86400 if statuses else 2 * 3600 + 60)
        scheduler.tick()
        client, headers = signed_in(gateway, "ACME")  # a session lasts less than a day
        statuses.append(client.get(f"/api/campaigns/{campaign_id}").get_json()["status"])
        run_id = f"{campaign_id}-{day}T140000Z"
        runtime.db.runs.update_one({"_id": run_id}, {"$set": {"status": "sending", "expanded": True}})
        RunProgress(runtime.db, clock).complete_if_done(runtime.db.runs.find_one({"_id": run_id}))
        statuses.append(client.get(f"/api/campaigns/{campaign_id}").get_json()["status"])

    assert statuses == ["sending", "scheduled", "sending", "scheduled"]


def test_cancel_occurrence_keeps_schedule(gateway, runtime, clock):
    client, headers = signed_in(gateway, "ACME")
    campaign_id = make_campaign(client, headers)
    client.put(f"/api/campaigns/{campaign_id}/schedule", headers=headers, json=DAILY)
    clock.advance(2 * 3600 + 60)
    Scheduler(runtime.db, broker=runtime.broker, clock=clock).tick()

    response = client.post(f"/api/campaigns/{campaign_id}/cancel", headers=headers)

    body = response.get_json()
    assert response.status_code == 200
    assert body["status"] == "scheduled"
    assert body["schedule_active"] is True
    assert body["current_run"]["status"] == "cancelled"
    assert body["next_occurrence"] == "2027-01-05T14:00:00+00:00"


@pytest.mark.parametrize("action", ["cancel", "pause", "resume"])
def test_run_action_between_occurrences(gateway, action):
    """Before any occurrence there is no run to act on, and the error names the way to stop the schedule."""
    client, headers = signed_in(gateway, "ACME")
    campaign_id = make_campaign(client, headers)
    client.put(f"/api/campaigns/{campaign_id}/schedule", headers=headers, json=DAILY)

    response = client.post(f"/api/campaigns/{campaign_id}/{action}", headers=headers)

    assert response.status_code == 409
    assert "Stop repeating" in response.get_json()["message"]
    assert f"DELETE /api/campaigns/{campaign_id}/schedule" in response.get_json()["message"]


def test_send_while_repeating_is_409(gateway):
    client, headers = signed_in(gateway, "ACME")
    campaign_id = make_campaign(client, headers)
    client.put(f"/api/campaigns/{campaign_id}/schedule", headers=headers, json=DAILY)

    response = client.post(f"/api/campaigns/{campaign_id}/send", headers=headers)

    assert response.status_code == 409
    assert "stop the schedule first" in response.get_json()["message"]


def test_schedule_beside_once_run_is_409(gateway, clock):
    client, headers = signed_in(gateway, "ACME")
    campaign_id = make_campaign(client, headers)
    send_at = (clock.now() + timedelta(days=1)).isoformat()
    client.post(f"/api/campaigns/{campaign_id}/send", headers=headers, json={"send_at": send_at})

    response = client.put(f"/api/campaigns/{campaign_id}/schedule", headers=headers, json=DAILY)

    assert response.status_code == 409
    assert "current run is due" in response.get_json()["message"]
    assert client.get(f"/api/campaigns/{campaign_id}").get_json()["schedule_active"] is False


def test_campaign_shows_schedule(gateway):
    client, headers = signed_in(gateway, "ACME")
    campaign_id = make_campaign(client, headers)
    client.put(f"/api/campaigns/{campaign_id}/schedule", headers=headers, json=DAILY)

    campaign = client.get(f"/api/campaigns/{campaign_id}").get_json()

    assert campaign["schedule_active"] is True
    assert campaign["schedule"] == {"freq": "daily", "time": "09:00", "start": "2027-01-04",
                                    "tz": "America/New_York"}
    assert campaign["next_occurrence"] == "2027-01-04T14:00:00+00:00"


# ------------------------------------------------------------------ next occurrences and dates


def test_upcoming_occurrences(gateway):
    """Monday and Thursday at 09:00 in New York, across the start of daylight saving time on 14 March."""
    client, headers = signed_in(gateway, "ACME")
    campaign_id = make_campaign(client, headers)
    rule = {"freq": "weekly", "time": "09:00", "start": "2027-03-04", "weekdays": ["thu", "mon"]}

    body = client.put(f"/api/campaigns/{campaign_id}/schedule", headers=headers, json=rule).get_json()

    assert body["upcoming"] == ["2027-03-04T14:00:00+00:00", "2027-03-08T14:00:00+00:00",
                                "2027-03-11T14:00:00+00:00", "2027-03-15T13:00:00+00:00",
                                "2027-03-18T13:00:00+00:00"]
    assert client.get(f"/api/campaigns/{campaign_id}/schedule").get_json()["upcoming"] == body["upcoming"]


def test_upcoming_stops_at_end(gateway):
    client, headers = signed_in(gateway, "ACME")
    campaign_id = make_campaign(client, headers)
    rule = {"freq": "monthly", "time": "09:00", "start": "2027-01-04", "end": "2027-03-31", "day": 31}

    body = client.put(f"/api/campaigns/{campaign_id}/schedule", headers=headers, json=rule).get_json()

    assert body["upcoming"] == ["2027-01-31T14:00:00+00:00", "2027-02-28T14:00:00+00:00",
                                "2027-03-31T13:00:00+00:00"]


@pytest.mark.parametrize("rule, field", [
    ({"freq": "daily", "time": "09:00", "start": "2025-06-01"}, "start"),
    ({"freq": "daily", "time": "09:00", "start": "2040-01-01"}, "start"),
    ({"freq": "daily", "time": "09:00", "start": "2027-01-04", "end": "2040-01-01"}, "end"),
])
def test_far_dates_are_422(gateway, rule, field):
    client, headers = signed_in(gateway, "ACME")
    campaign_id = make_campaign(client, headers)

    response = client.put(f"/api/campaigns/{campaign_id}/schedule", headers=headers, json=rule)

    assert response.status_code == 422
    assert field in response.get_json()["details"]["fields"]


def test_skipped_occurrence_shown_with_reason(gateway, runtime, clock):
    """An occurrence due while the earlier run still sends is not sent, and staff see why."""
    client, headers = signed_in(gateway, "ACME")
    campaign_id = make_campaign(client, headers)
    client.put(f"/api/campaigns/{campaign_id}/schedule", headers=headers, json=DAILY)
    scheduler = Scheduler(runtime.db, broker=runtime.broker, clock=clock)
    clock.advance(2 * 3600 + 60)
    scheduler.tick()
    clock.advance(86400)
    scheduler.tick()
    client, headers = signed_in(gateway, "ACME")

    schedule = client.get(f"/api/campaigns/{campaign_id}/schedule", headers=headers).get_json()

    skipped = schedule["skipped_occurrences"]
    assert [entry["at"] for entry in skipped] == ["2027-01-05T14:00:00+00:00"]
    assert "was still queued" in skipped[0]["reason"]
    assert runtime.db.runs.count_documents({"campaign_id": campaign_id}) == 1
