"""Fields and query strings the JSON API rejects with 422 and a message per field, and those it accepts."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from services.gateway.app import create_app
from services.gateway.auth import COOKIE_NAME

CAMPAIGN = {"name": "Renewals", "body": "Hello {FirstName|member}, renew by Friday.",
            "iqa_path": "$/TextManager/Members"}


@pytest.fixture
def app(runtime, tenant_factory):
    tenant_factory(cloud_id="ACME", admins=("alice",))
    return create_app(runtime)


@pytest.fixture
def client(app):
    """(test client signed in to ACME as its administrator, headers with the CSRF token)."""
    token, session = app.extensions["text_manager"].sessions.create("ACME", "alice", is_admin=True)
    test_client = app.test_client()
    test_client.set_cookie(COOKIE_NAME, token)
    return test_client, {"X-CSRF-Token": session["csrf_token"]}


def create(client, **fields):
    test_client, headers = client
    return test_client.post("/api/campaigns", json={**CAMPAIGN, **fields}, headers=headers)


def field_errors(response) -> dict:
    return response.get_json()["details"].get("fields", {})


# ------------------------------------------------------------------ campaign fields


@pytest.mark.parametrize("field, value, expected", [
    pytest.param("body", "Hi {FirstName", "merge field opened at character 4 is not closed", id="unclosed-field"),
    pytest.param("body", "Hi {FirstName\n}", "is not closed on its line", id="field-across-lines"),
    pytest.param("body", "Hi }", "Unmatched '}' at character 4", id="lone-closing-brace"),
    pytest.param("body", "Hi {}", "at character 4 has no column name", id="empty-field"),
    pytest.param("body", "Hi { |friend}", "has no column name", id="blank-field-name"),
    pytest.param("body", "", "empty or only has invisible characters", id="empty"),
    pytest.param("body", " \t\n", "empty or only has invisible characters", id="whitespace"),
    pytest.param("body", "\u200b", "empty or only has invisible characters", id="zero-width-space"),
    pytest.param("body", "x\u0000", "control characters that phones cannot show (U+0000)", id="nul"),
    pytest.param("body", "\ufeff\u2060\u200d\u00ad\u3000", "empty or only has invisible characters",
                 id="format-characters"),
    pytest.param("body", "\u202e\u3164\u2800", "empty or only has invisible characters", id="blank-letters"),
    pytest.param("body", "a" * 1601, "longer than 1,600 characters", id="1601-characters"),
    pytest.param("name", "\u200b\u200b", "the name is blank", id="invisible-name"),
    pytest.param("iqa_path", "TextManager/Members", "must be an IQA path starting with $/", id="no-prefix"),
    pytest.param("iqa_path", "$/", "empty folder or query name", id="prefix-only"),
    pytest.param("iqa_path", "  $/ \u200b ", "empty folder or query name", id="blank-query"),
    pytest.param("iqa_path", "$/TextManager//Members", "empty folder or query name", id="empty-folder"),
    pytest.param("iqa_path", "$/TextManager/", "empty folder or query name", id="trailing-slash"),
    pytest.param("phone_column", "   ", "must name a column of the IQA", id="blank-phone-column"),
    pytest.param("id_column", "", "must name a column of the IQA", id="empty-id-column"),
])
def test_invalid_campaign_is_422(client, runtime, field, value, expected):
    response = create(client, **{field: value})

    assert response.status_code == 422
    assert list(field_errors(response)) == [field]
    assert expected in field_errors(response)[field][0]
    assert runtime.db.campaigns.count_documents({}) == 0


def test_missing_iqa_path_is_422(client):
    test_client, headers = client
    fields = {key: value for key, value in CAMPAIGN.items() if key != "iqa_path"}

    response = test_client.post("/api/campaigns", json=fields, headers=headers)

    assert response.status_code == 422
    assert field_errors(response) == {"iqa_path": ["Missing data for required field."]}


@pytest.mark.parametrize("body", [
    pytest.param("Hi {{literal}} braces", id="literal-braces"),
    pytest.param("Hi {FirstName|friend}, \u200bsee you", id="zero-width-inside"),
    pytest.param("\U0001F44B", id="emoji-only"),
    pytest.param("{FirstName}", id="field-only"),
])
def test_valid_body_saved(client, body):
    response = create(client, body=body)

    assert response.status_code == 201
    assert response.get_json()["body"] == body


def test_save_names_columns_for_preview(client):
    response = create(client, body="Hi {FirstName}, {city|your city} awaits {FIRSTNAME}.", phone_column=" Cell ")

    saved = response.get_json()
    assert response.status_code == 201
    assert saved["phone_column"] == "Cell"
    assert saved["notes"] == ["Columns are checked at preview: the IQA $/TextManager/Members must exist, be "
                              "available via the REST API, and return the columns Cell, ID, FirstName, city."]


def test_iqa_path_trimmed(client):
    response = create(client, iqa_path="  $/TextManager/Demo Members ")

    assert response.get_json()["iqa_path"] == "$/TextManager/Demo Members"


# ------------------------------------------------------------------ send_at


def test_send_at_beyond_a_year_is_422(client, runtime):
    test_client, headers = client
    campaign_id = create(client).get_json()["id"]
    too_late = runtime.clock.now() + timedelta(days=366, minutes=1)

    response = test_client.post(f"/api/campaigns/{campaign_id}/send", json={"send_at": too_late.isoformat()},
                                headers=headers)

    assert response.status_code == 422
    assert "send_at is more than 366 days ahead" in field_errors(response)["send_at"][0]
    assert test_client.get(f"/api/campaigns/{campaign_id}").get_json()["status"] == "draft"


@pytest.mark.parametrize("send_at", ["9999-12-31T23:59:00+00:00", "2999-01-01T09:00:00-05:00"])
def test_send_at_far_future_is_422(client, send_at):
    test_client, headers = client
    campaign_id = create(client).get_json()["id"]

    response = test_client.post(f"/api/campaigns/{campaign_id}/send", json={"send_at": send_at}, headers=headers)

    assert response.status_code == 422


def test_send_at_within_a_year_accepted(client, runtime):
    test_client, headers = client
    campaign_id = create(client).get_json()["id"]
    latest = runtime.clock.now() + timedelta(days=366)

    response = test_client.post(f"/api/campaigns/{campaign_id}/send", json={"send_at": latest.isoformat()},
                                headers=headers)

    assert response.status_code == 202
    assert response.get_json()["status"] == "scheduled"


# ------------------------------------------------------------------ query strings


@pytest.fixture
def run_id(runtime) -> str:
    runtime.db.runs.insert_one({"_id": "r1", "tenant_id": "ACME", "campaign_id": "c1", "status": "completed",
                                "counts": {}})
    return "r1"


@pytest.mark.parametrize("path", ["/api/runs/r1", "/api/runs/r1/messages", "/api/opt-outs"])
@pytest.mark.parametrize("query, parameter", [
    ("limit=abc", "limit"),
    ("limit=0", "limit"),
    ("limit=1001", "limit"),
    ("limit=1.5", "limit"),
    ("offset=-1", "offset"),
    ("offset=x", "offset"),
    ("colour=blue", "colour"),
])
def test_invalid_query_is_422(client, run_id, path, query, parameter):
    test_client, _ = client

    response = test_client.get(f"{path}?{query}")

    body = response.get_json()
    assert response.status_code == 422
    assert body["message"] == "some query parameters are invalid: correct them and send again"
    assert list(body["details"]["fields"]) == [parameter]


@pytest.mark.parametrize("path", ["/api/runs/r1", "/api/runs/r1/messages", "/api/opt-outs"])
def test_valid_query_accepted(client, run_id, path):
    test_client, _ = client

    assert test_client.get(f"{path}?limit=1000&offset=0").status_code == 200


# ------------------------------------------------------------------ sender number


@pytest.mark.parametrize("changes, expected", [
    pytest.param({"sender_number": "+1888555010"}, "+1888555010 is not a valid phone number", id="digit-missing"),
    pytest.param({"sender_number": "+99912345678"}, "is not a valid phone number", id="no-such-country"),
    pytest.param({"sender_number": "+442079460000"}, "cannot send texts (fixed line)", id="uk-landline"),
    pytest.param({"sender_number": "+19005550100"}, "cannot send texts (premium rate)", id="premium-rate"),
    pytest.param({"sender_number": "1234567"}, "or a short code of 5 or 6 digits", id="seven-digits"),
    pytest.param({"sender_number": "(888) 555-0100"}, "must be an E.164 number", id="not-e164"),
    pytest.param({"sender_number": ""}, "must be an E.164 number", id="empty"),
    pytest.param({"sender_number": "12345", "sender_kind": "toll-free"}, "make the two match",
                 id="short-code-as-toll-free"),
    pytest.param({"sender_number": "+18885550123", "sender_kind": "short-code"}, "make the two match",
                 id="number-as-short-code"),
])
def test_invalid_sender_number_is_422(client, runtime, changes, expected):
    test_client, headers = client

    response = test_client.put("/api/settings", json=changes, headers=headers)

    assert response.status_code == 422
    assert expected in json.dumps(field_errors(response))
    assert runtime.tenants.get("ACME").sender_number == "+18885550199"


@pytest.mark.parametrize("changes, stored", [
    pytest.param({"sender_number": "+18885550123"}, "+18885550123", id="toll-free"),
    pytest.param({"sender_number": " +12025550143 "}, "+12025550143", id="us-long-code"),
    pytest.param({"sender_number": "+447911123456"}, "+447911123456", id="uk-mobile"),
    pytest.param({"sender_number": "12345", "sender_kind": "short-code"}, "12345", id="short-code"),
    pytest.param({"sender_number": "123456"}, "123456", id="six-digit-short-code"),
])
def test_valid_sender_number_saved(client, runtime, changes, stored):
    test_client, headers = client

    response = test_client.put("/api/settings", json=changes, headers=headers)

    assert response.status_code == 200, response.get_data(as_text=True)
    assert runtime.tenants.get("ACME").sender_number == stored
