"""The Twilio webhooks over HTTP (Flask test client): odd but signed input gets a response, never a 500."""

from __future__ import annotations

import pytest
from twilio.request_validator import RequestValidator
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from services.feedback.app import MAX_REQUEST_BYTES, create_app
from tests.conftest import TEST_TWILIO_TOKEN

NUMBER = "+12025550142"
MESSAGE_ID = "r1:0123456789abcdef0123"
FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def webhooks(runtime, tenant_factory):
    tenant_factory(cloud_id="ACME")
    runtime.db.runs.insert_one({"_id": "r1", "tenant_id": "ACME", "campaign_id": "c1", "status": "sending",
                                "counts": {}})
    runtime.db.messages.insert_one({"_id": MESSAGE_ID, "tenant_id": "ACME", "campaign_id": "c1", "run_id": "r1",
                                    "member_id": "10045", "to": NUMBER, "status": "sent", "sid": "SM1",
                                    "sent_at": runtime.clock.now()})
    return create_app(runtime), runtime.settings.public_callback_url.rstrip("/")


def post_signed(webhooks, path: str, raw: str):
    """POST a raw form body signed over the parameters as Flask parses them, as Twilio signs what it sends."""
    app, public_base = webhooks
    params = Request(EnvironBuilder(path=path, method="POST", data=raw, content_type=FORM).get_environ()).form
    signature = RequestValidator(TEST_TWILIO_TOKEN).compute_signature(public_base + path, params.to_dict())
    return app.test_client().post(path, data=raw, content_type=FORM, headers={"X-Twilio-Signature": signature})


@pytest.mark.parametrize("raw", [
    pytest.param("From=%2B12025550142&Body=%ED%A0%80", id="encoded-surrogate"),
    pytest.param("From=%2B12025550142&Body=%FF%FE", id="not-utf-8"),
    pytest.param("From=%2B12025550142&Body=STOP%00", id="nul-in-value"),
    pytest.param("From=%2B12025550142&Body=hi&a%00b=1", id="nul-in-name"),
    pytest.param("From=%2B12025550142&Body=hi&%24where=1&a.b=2", id="dollar-and-dot-in-name"),
    pytest.param("&".join(f"Field{index}=1" for index in range(3000)), id="many-fields"),
])
def test_odd_inbound_answered(webhooks, runtime, raw):
    response = post_signed(webhooks, "/twilio/inbound/ACME", raw)

    assert response.status_code == 200
    assert runtime.db.callbacks.count_documents({"kind": "inbound"}) == 1


def test_unstorable_names_dropped(webhooks, runtime):
    post_signed(webhooks, "/twilio/inbound/ACME", "From=%2B12025550142&Body=hi&a%00b=1&%24where=2&To=%2B18885550199")

    stored = runtime.db.callbacks.find_one({"kind": "inbound"})["form"]
    assert stored == {"From": NUMBER, "To": "+18885550199"}


def test_stop_still_applied_beside_odd_names(webhooks, runtime):
    post_signed(webhooks, "/twilio/inbound/ACME", "From=%2B12025550142&Body=STOP&a%00b=1")

    assert runtime.db.optouts.find_one({"_id": f"ACME:{NUMBER}"})["source"] == "inbound-stop"


@pytest.mark.parametrize("code", ["99999999999999999999999", "9" * 5000, "%ED%A0%80", "-5", "3.5e4"])
def test_odd_error_code_ignored(webhooks, runtime, code):
    response = post_signed(webhooks, f"/twilio/status/ACME/{MESSAGE_ID}",
                           f"MessageSid=SM1&MessageStatus=undelivered&ErrorCode={code}")

    message = runtime.db.messages.find_one({"_id": MESSAGE_ID})
    assert response.status_code == 204
    assert message["status"] == "undelivered"
    assert message.get("error_code") is None


def test_error_code_read(webhooks, runtime):
    post_signed(webhooks, f"/twilio/status/ACME/{MESSAGE_ID}",
                "MessageSid=SM1&MessageStatus=undelivered&ErrorCode=30003")

    assert runtime.db.messages.find_one({"_id": MESSAGE_ID})["error_code"] == 30003


def test_large_body_is_413(webhooks, runtime):
    response = post_signed(webhooks, "/twilio/inbound/ACME", "From=%2B12025550142&Body=" + "x" * MAX_REQUEST_BYTES)

    assert response.status_code == 413
    assert runtime.db.callbacks.count_documents({}) == 0


def test_unsigned_odd_body_is_403(webhooks):
    app, _ = webhooks

    response = app.test_client().post("/twilio/inbound/ACME", data="a%00b=1", content_type=FORM)

    assert response.status_code == 403
