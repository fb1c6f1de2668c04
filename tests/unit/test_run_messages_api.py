"""GET /api/runs/{run_id}/messages: a run's texts, with whether and how iMIS logged each."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from services.gateway.app import create_app
from services.gateway.auth import COOKIE_NAME

SENT_AT = datetime(2100, 1, 1, 0, 0, 5, tzinfo=timezone.utc)
WRITTEN = {"status": "written", "kind": "interaction", "key": "CL7", "fallback": False,
           "written_at": datetime(2100, 1, 1, 0, 0, 6, tzinfo=timezone.utc)}
MISSING = {"status": "missing", "reason": "the event was not published: RabbitMQ is unreachable",
           "at": datetime(2100, 1, 1, 0, 0, 5, tzinfo=timezone.utc)}


@pytest.fixture
def gateway(runtime, tenant_factory):
    tenant_factory(cloud_id="ACME")
    tenant_factory(cloud_id="OTHER")
    db = runtime.db
    db.runs.insert_one({"_id": "r1", "tenant_id": "ACME", "campaign_id": "c1", "status": "completed"})
    db.runs.insert_one({"_id": "r2", "tenant_id": "OTHER", "campaign_id": "c2", "status": "completed"})
    messages = [
        ("+12025550101", "ACME", "r1", {"status": "delivered", "sent_at": SENT_AT, "imis_log": WRITTEN}),
        ("+12025550102", "ACME", "r1", {"status": "sent", "sent_at": SENT_AT}),
        ("+12025550103", "ACME", "r1", {"status": "opted_out", "error_code": 21610}),
        ("+12025550104", "ACME", "r1", {"status": "delivered", "sent_at": SENT_AT, "imis_log": MISSING}),
        ("+12025550101", "OTHER", "r2", {"status": "delivered", "sent_at": SENT_AT, "imis_log": WRITTEN}),
    ]
    for number, tenant_id, run_id, fields in messages:
        db.messages.insert_one({"_id": runtime.message_ids.build(run_id, number), "tenant_id": tenant_id,
                                "run_id": run_id, "campaign_id": "c1", "member_id": "10001", "to": number,
                                "body": "Hello", "sid": "SM" + "ab" * 16, **fields})
    return create_app(runtime)


def signed_in(app, tenant_id: str):
    token, _ = app.extensions["text_manager"].sessions.create(tenant_id, "staff")
    client = app.test_client()
    client.set_cookie(COOKIE_NAME, token)
    return client


def test_messages_listed_by_number(gateway):
    response = signed_in(gateway, "ACME").get("/api/runs/r1/messages")

    assert response.status_code == 200
    page = response.get_json()
    assert page["total"] == 4
    assert [message["to"] for message in page["messages"]] == [
        "+12025550101", "+12025550102", "+12025550103", "+12025550104"]


def test_written_log_shown(gateway):
    first = signed_in(gateway, "ACME").get("/api/runs/r1/messages").get_json()["messages"][0]

    assert first["imis_log"]["status"] == "written"
    assert first["imis_log"]["kind"] == "interaction"
    assert first["imis_log"]["key"] == "CL7"
    assert first["imis_log"]["fallback"] is False
    assert datetime.fromisoformat(first["imis_log"]["written_at"]) == WRITTEN["written_at"]


def test_sent_without_log_is_pending(gateway):
    second = signed_in(gateway, "ACME").get("/api/runs/r1/messages").get_json()["messages"][1]

    assert second["imis_log"] == {"status": "pending"}


def test_unsent_text_has_no_log(gateway):
    third = signed_in(gateway, "ACME").get("/api/runs/r1/messages").get_json()["messages"][2]

    assert third["status"] == "opted_out"
    assert third["imis_log"] is None
    assert third["sent_at"] is None


def test_missing_log_shown_with_reason(gateway):
    fourth = signed_in(gateway, "ACME").get("/api/runs/r1/messages").get_json()["messages"][3]

    assert fourth["imis_log"]["status"] == "missing"
    assert "RabbitMQ is unreachable" in fourth["imis_log"]["reason"]


def test_message_body_not_returned(gateway):
    messages = signed_in(gateway, "ACME").get("/api/runs/r1/messages").get_json()["messages"]

    assert all("body" not in message for message in messages)


def test_paging(gateway):
    client = signed_in(gateway, "ACME")

    page = client.get("/api/runs/r1/messages?offset=1&limit=2").get_json()

    assert page["total"] == 4
    assert [message["to"] for message in page["messages"]] == ["+12025550102", "+12025550103"]


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "offset=-1", "limit=many"])
def test_invalid_paging_is_422(gateway, query):
    response = signed_in(gateway, "ACME").get(f"/api/runs/r1/messages?{query}")

    assert response.status_code == 422
    assert response.get_json()["error"]


def test_other_tenants_run_is_404(gateway):
    response = signed_in(gateway, "OTHER").get("/api/runs/r1/messages")

    assert response.status_code == 404


def test_own_run_lists_only_own_texts(gateway, runtime):
    page = signed_in(gateway, "OTHER").get("/api/runs/r2/messages").get_json()

    assert page["total"] == 1
    assert [message["id"] for message in page["messages"]] == [runtime.message_ids.build("r2", "+12025550101")]
    assert [message["to"] for message in page["messages"]] == ["+12025550101"]


def test_needs_session(gateway):
    assert gateway.test_client().get("/api/runs/r1/messages").status_code == 401


def test_settings_show_text_log(gateway):
    response = signed_in(gateway, "ACME").get("/api/settings")

    assert response.get_json()["imis_text_log"] == "interaction"
