"""GET /api/opt-outs: the organisation's opted-out numbers, masked, latest first, a page at a time."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from services.gateway.app import create_app
from services.gateway.auth import COOKIE_NAME

FIRST = datetime(2100, 1, 1, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def app(runtime, tenant_factory):
    tenant_factory(cloud_id="ACME")
    tenant_factory(cloud_id="OTHER")
    optouts = [
        ("ACME", "+12025550101", 0, "inbound-stop", ["10001"]),
        ("ACME", "+12025550102", 2, "twilio-callback", ["10002", "10003"]),
        ("ACME", "+12025550103", 1, "twilio-21610", []),
        ("OTHER", "+12025550104", 3, "inbound-stop", ["20001"]),
    ]
    for tenant_id, number, hours, source, member_ids in optouts:
        runtime.db.optouts.insert_one({"_id": f"{tenant_id}:{number}", "tenant_id": tenant_id, "number": number,
                                       "opted_out_at": FIRST + timedelta(hours=hours), "source": source,
                                       "member_ids": member_ids, "activities": [{"member_id": "x", "seqn": "7"}]})
    return create_app(runtime)


def signed_in(app, tenant_id: str = "ACME"):
    token, _ = app.extensions["text_manager"].sessions.create(tenant_id, "staff")
    client = app.test_client()
    client.set_cookie(COOKIE_NAME, token)
    return client


def test_listed_latest_first(app):
    response = signed_in(app).get("/api/opt-outs")

    body = response.get_json()
    assert response.status_code == 200
    assert body["total"] == 3
    assert body["opt_outs"] == [
        {"number": "********0102", "opted_out_at": "2100-01-01T11:00:00+00:00", "source": "twilio-callback",
         "members": 2},
        {"number": "********0103", "opted_out_at": "2100-01-01T10:00:00+00:00", "source": "twilio-21610",
         "members": 0},
        {"number": "********0101", "opted_out_at": "2100-01-01T09:00:00+00:00", "source": "inbound-stop",
         "members": 1},
    ]


def test_numbers_never_whole(app):
    text = signed_in(app).get("/api/opt-outs").get_data(as_text=True)

    for number in ("2025550101", "2025550102", "2025550103"):
        assert number not in text
    assert "seqn" not in text
    assert "10001" not in text


def test_other_tenant_sees_only_its_own(app):
    body = signed_in(app, "OTHER").get("/api/opt-outs").get_json()

    assert body["total"] == 1
    assert [optout["number"] for optout in body["opt_outs"]] == ["********0104"]


def test_paging(app):
    client = signed_in(app)

    first = client.get("/api/opt-outs?limit=2").get_json()
    rest = client.get("/api/opt-outs?limit=2&offset=2").get_json()

    assert [optout["number"] for optout in first["opt_outs"]] == ["********0102", "********0103"]
    assert [optout["number"] for optout in rest["opt_outs"]] == ["********0101"]
    assert first["total"] == rest["total"] == 3


def test_needs_sign_in(app):
    assert app.test_client().get("/api/opt-outs").status_code == 401
