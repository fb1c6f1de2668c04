"""JSON request bodies the API must reject with a 4xx and a message, never a 500."""

from __future__ import annotations

import io
import json

import pytest

from services.gateway.app import MAX_REQUEST_BYTES, create_app
from services.gateway.auth import COOKIE_NAME

ERROR_KEYS = {"error", "message", "details"}
CAMPAIGN = {"name": "Renewals", "body": "Hello {FirstName|member}, renew by Friday.",
            "iqa_path": "$/TextManager/Members"}


@pytest.fixture
def client(runtime, tenant_factory):
    """(test client signed in to ACME, headers with the CSRF token)."""
    tenant_factory(cloud_id="ACME")
    app = create_app(runtime)
    token, session = app.extensions["text_manager"].sessions.create("ACME", "alice")
    test_client = app.test_client()
    test_client.set_cookie(COOKIE_NAME, token)
    return test_client, {"X-CSRF-Token": session["csrf_token"]}


def post_raw(client, path: str, raw: str | bytes, content_type: str = "application/json"):
    test_client, headers = client
    return test_client.post(path, data=raw, content_type=content_type, headers=headers)


def create(client, **fields):
    test_client, headers = client
    return test_client.post("/api/campaigns", json={**CAMPAIGN, **fields}, headers=headers)


def field_errors(response) -> dict:
    return response.get_json()["details"].get("fields", {})


@pytest.mark.parametrize("path", ["/api/texts/measure", "/api/campaigns", "/api/phone-numbers/check",
                                  "/api/session"])
@pytest.mark.parametrize("raw, expected", [
    pytest.param("[" * 100_000, "more than 20 levels deep", id="deep-list"),
    pytest.param('{"a":' * 30_000, "more than 20 levels deep", id="deep-object"),
    pytest.param('{"body": ' + "[" * 25 + "]" * 25 + "}", "more than 20 levels deep", id="deep-within-limit-of-parser"),
    pytest.param('{"body": "\\ud800"}', "unpaired UTF-16 surrogate (\\ud800) at character 1", id="lone-surrogate"),
    pytest.param('{"body": "ok \\udfff"}', "unpaired UTF-16 surrogate (\\udfff) at character 4", id="lone-low-surrogate"),
    pytest.param('{"\\ud800": "x"}', "unpaired UTF-16 surrogate", id="surrogate-in-name"),
    pytest.param(b'{"body": "\xff\xfe"}', "not valid UTF-8 (byte 11)", id="not-utf-8"),
    pytest.param('{"body": NaN}', "NaN is not a JSON value", id="nan"),
    pytest.param('{"body": Infinity}', "Infinity is not a JSON value", id="infinity"),
    pytest.param('{"body": "x",}', "not valid JSON", id="trailing-comma"),
    pytest.param('{"n": ' + "1" * 5000 + "}", "not valid JSON", id="huge-integer"),
    pytest.param('["body"]', "must be a JSON object", id="list"),
    pytest.param('"body"', "must be a JSON object", id="string"),
    pytest.param("", "not valid JSON", id="empty"),
])
def test_odd_body_is_422(client, path, raw, expected):
    response = post_raw(client, path, raw)

    body = response.get_json()
    assert response.status_code == 422
    assert set(body) == ERROR_KEYS
    assert expected in json.dumps(body, ensure_ascii=False).replace("\\\\", "\\")


def test_surrogate_names_its_field(client):
    response = post_raw(client, "/api/campaigns", json.dumps({**CAMPAIGN, "name": "Spring \ud800"}))

    assert response.status_code == 422
    assert list(field_errors(response)) == ["name"]


def test_surrogate_pair_accepted(client):
    response = post_raw(client, "/api/texts/measure", '{"body": "Hi \\ud83d\\ude00"}')

    assert response.status_code == 200
    assert response.get_json()["units"] == 5


def test_nul_in_prompt_name_is_422(client, runtime):
    response = create(client, prompts={"Chapter\u0000": "North"})

    assert response.status_code == 422
    assert "NUL character" in field_errors(response)["prompts"][0]
    assert runtime.db.campaigns.count_documents({}) == 0


def test_form_body_is_422(client):
    response = post_raw(client, "/api/campaigns", "name=x", content_type="application/x-www-form-urlencoded")

    assert response.status_code == 422
    assert "Content-Type: application/json" in response.get_json()["message"]


def test_large_body_is_413(client):
    response = post_raw(client, "/api/texts/measure", json.dumps({"body": "x" * MAX_REQUEST_BYTES}))

    body = response.get_json()
    assert response.status_code == 413
    assert body["error"] == "request_too_large"
    assert "larger than 256 KB" in body["message"]


def test_large_chunked_body_is_413(client):
    """werkzeug cuts a body without Content-Length at the limit, so the cut body must not be read as JSON."""
    test_client, headers = client
    raw = b'{"body": "' + b"x" * MAX_REQUEST_BYTES + b'"}'

    response = test_client.post("/api/texts/measure", input_stream=io.BytesIO(raw), content_type="application/json",
                                headers={**headers, "Transfer-Encoding": "chunked"},
                                environ_overrides={"wsgi.input_terminated": True})

    assert response.status_code == 413


def test_body_below_limit_accepted(client):
    response = post_raw(client, "/api/texts/measure", json.dumps({"body": "x" * 200_000}))

    assert response.status_code == 200
    assert response.get_json()["too_long"] is True
