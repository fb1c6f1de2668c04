"""Unit tests of the Twilio gateway with a fake HTTP client (no sockets)."""

import datetime as dt
import json

import pytest
import requests
from twilio.http import HttpClient
from twilio.http.response import Response

from libs.common.twilio_client import (
    TwilioError,
    TwilioGateway,
    TwilioUnavailable,
    verify_signature,
)

ACCOUNT_SID = "AC" + "1" * 32
AUTH_TOKEN = "unit-test-token"
BASE_URL = "http://127.0.0.1:9"

# Worked example of Twilio's webhook signature (see twilio.md in the shared reference).
EXAMPLE_URL = "https://example.com/myapp.php?foo=1&bar=2"
EXAMPLE_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675310",
    "Digits": "1234",
    "From": "+14158675310",
    "To": "+18005551212",
}
EXAMPLE_SIGNATURE = "L/OH5YylLD5NRKLltdqwSvS0BnU="


class FakeHttpClient(HttpClient):
    """Returns queued responses (a Response, or an exception to raise) and records the requests."""

    def __init__(self, *answers):
        super().__init__(logger=None, is_async=False)
        self.answers = list(answers)
        self.requests = []

    def request(self, method, uri, params=None, data=None, headers=None, auth=None, timeout=None,
                allow_redirects=False):
        self.requests.append({"method": method, "uri": uri, "params": params, "data": data})
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def json_response(status, body):
    return Response(status, json.dumps(body))


def message_body(**overrides):
    body = {
        "sid": "SM" + "a" * 32,
        "account_sid": ACCOUNT_SID,
        "to": "+12025550143",
        "from": "+12025550100",
        "body": "Hello",
        "status": "queued",
        "num_segments": "2",
        "date_created": "Fri, 01 Mar 2024 12:00:00 +0000",
    }
    return body | overrides


def error_body(code, status, message="rejected"):
    return {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status}


def build_gateway(*answers):
    fake = FakeHttpClient(*answers)
    return TwilioGateway(ACCOUNT_SID, AUTH_TOKEN, base_url=BASE_URL, http_client=fake), fake


def test_signature_worked_example():
    assert verify_signature("12345", EXAMPLE_URL, EXAMPLE_PARAMS, EXAMPLE_SIGNATURE)


def test_signature_wrong_token():
    assert not verify_signature("54321", EXAMPLE_URL, EXAMPLE_PARAMS, EXAMPLE_SIGNATURE)


def test_signature_changed_param():
    params = EXAMPLE_PARAMS | {"Digits": "1235"}
    assert not verify_signature("12345", EXAMPLE_URL, params, EXAMPLE_SIGNATURE)


def test_signature_other_url():
    assert not verify_signature("12345", "https://example.com/myapp.php", EXAMPLE_PARAMS, EXAMPLE_SIGNATURE)


@pytest.mark.parametrize("signature", [None, ""])
def test_signature_missing(signature):
    assert not verify_signature("12345", EXAMPLE_URL, EXAMPLE_PARAMS, signature)


def test_create_returns_message():
    gateway, _ = build_gateway(json_response(201, message_body()))
    created = gateway.create_message(to="+12025550143", from_="+12025550100", body="Hello")
    assert created.sid == "SM" + "a" * 32
    assert created.status == "queued"
    assert created.num_segments == 2
    assert created.date_created == dt.datetime(2024, 3, 1, 12, tzinfo=dt.timezone.utc)


def test_create_sends_form_fields():
    gateway, fake = build_gateway(json_response(201, message_body()))
    gateway.create_message(to="+12025550143", from_="+12025550100", body="Hello",
                           status_callback="https://example.test/cb/1", smart_encoded=True)
    sent = fake.requests[0]
    assert sent["uri"] == f"{BASE_URL}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    assert sent["data"]["To"] == "+12025550143"
    assert sent["data"]["From"] == "+12025550100"
    assert sent["data"]["Body"] == "Hello"
    assert sent["data"]["StatusCallback"] == "https://example.test/cb/1"
    assert sent["data"]["SmartEncoded"] == "true"


def test_create_with_service_omits_from():
    service = "MG" + "b" * 32
    gateway, fake = build_gateway(json_response(201, message_body(status="accepted", num_segments="0")))
    created = gateway.create_message(to="+12025550143", messaging_service_sid=service, body="Hello")
    assert "From" not in fake.requests[0]["data"]
    assert fake.requests[0]["data"]["MessagingServiceSid"] == service
    assert created.num_segments == 0


@pytest.mark.parametrize(
    ("http_status", "code"),
    [(400, 21211), (400, 21610), (401, 20003), (429, 20429), (500, 20500)],
)
def test_create_error_maps_code(http_status, code):
    gateway, _ = build_gateway(json_response(http_status, error_body(code, http_status, "The reason.")))
    with pytest.raises(TwilioError) as raised:
        gateway.create_message(to="+12025550143", from_="+12025550100", body="Hello")
    assert raised.value.http_status == http_status
    assert raised.value.code == code
    assert raised.value.message == "The reason."


def test_create_problem_details_error():
    problem = {"type": "https://www.twilio.com/docs/errors/20429", "title": "Too many requests",
               "status": 429, "code": 20429, "detail": "Slow down."}
    gateway, _ = build_gateway(json_response(429, problem))
    with pytest.raises(TwilioError) as raised:
        gateway.create_message(to="+12025550143", from_="+12025550100", body="Hello")
    assert raised.value.code == 20429
    assert raised.value.message == "Slow down."


def test_create_error_without_json():
    gateway, _ = build_gateway(Response(502, "<html>Bad Gateway</html>"))
    with pytest.raises(TwilioError) as raised:
        gateway.create_message(to="+12025550143", from_="+12025550100", body="Hello")
    assert raised.value.http_status == 502
    assert raised.value.code is None


@pytest.mark.parametrize(
    "failure",
    [requests.ConnectTimeout("connect"), requests.ReadTimeout("read"), requests.ConnectionError("reset")],
)
def test_create_unavailable(failure):
    gateway, _ = build_gateway(failure)
    with pytest.raises(TwilioUnavailable):
        gateway.create_message(to="+12025550143", from_="+12025550100", body="Hello")


def test_create_unreadable_success():
    gateway, _ = build_gateway(Response(201, "{not json"))
    with pytest.raises(TwilioUnavailable):
        gateway.create_message(to="+12025550143", from_="+12025550100", body="Hello")


def test_error_hides_body_and_token(caplog):
    body = "Secret meeting code 7781 for members"
    gateway, _ = build_gateway(json_response(400, error_body(21211, 400)))
    with pytest.raises(TwilioError):
        gateway.create_message(to="+12025550143", from_="+12025550100", body=body)
    assert body not in caplog.text
    assert AUTH_TOKEN not in caplog.text


def test_error_masks_number(caplog):
    message = "The 'To' number +12025550143 is not a valid phone number."
    gateway, _ = build_gateway(json_response(400, error_body(21211, 400, message)))
    with pytest.raises(TwilioError) as raised:
        gateway.create_message(to="+12025550143", from_="+12025550100", body="Hello")

    assert "2025550143" not in str(raised.value)
    assert "0143" in raised.value.message
    assert "2025550143" not in caplog.text


def test_list_unavailable_masks_number(caplog):
    failure = requests.ConnectionError("Max retries exceeded with url: /Messages.json?To=%2B12025550143&PageSize=50")
    gateway, _ = build_gateway(failure)
    with pytest.raises(TwilioUnavailable) as raised:
        gateway.list_messages(to="+12025550143", sent_after=dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc))

    assert "2025550143" not in str(raised.value)
    assert "2025550143" not in caplog.text


def page(messages):
    return json_response(200, {
        "messages": messages, "page": 0, "page_size": 50, "start": 0, "end": len(messages) - 1,
        "uri": "/x", "first_page_uri": "/x", "next_page_uri": None, "previous_page_uri": None,
    })


def test_list_filters_by_created():
    newer = message_body(sid="SM" + "c" * 32, date_created="Fri, 01 Mar 2024 12:05:00 +0000")
    older = message_body(sid="SM" + "d" * 32, date_created="Fri, 01 Mar 2024 11:55:00 +0000")
    gateway, fake = build_gateway(page([newer, older]))
    found = gateway.list_messages(to="+12025550143",
                                  sent_after=dt.datetime(2024, 3, 1, 12, tzinfo=dt.timezone.utc))
    assert [message.sid for message in found] == ["SM" + "c" * 32]
    assert fake.requests[0]["params"]["To"] == "+12025550143"


def test_list_same_second_included():
    gateway, _ = build_gateway(page([message_body(date_created="Fri, 01 Mar 2024 12:00:00 +0000")]))
    sent_after = dt.datetime(2024, 3, 1, 12, 0, 0, 500000, tzinfo=dt.timezone.utc)
    assert len(gateway.list_messages(to="+12025550143", sent_after=sent_after)) == 1


def test_list_returns_fields():
    gateway, _ = build_gateway(page([message_body(status="delivered")]))
    found = gateway.list_messages(to="+12025550143",
                                  sent_after=dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc))
    assert found[0].to == "+12025550143"
    assert found[0].from_ == "+12025550100"
    assert found[0].body == "Hello"
    assert found[0].status == "delivered"


def test_list_rejects_naive_time():
    gateway, _ = build_gateway()
    with pytest.raises(ValueError):
        gateway.list_messages(to="+12025550143", sent_after=dt.datetime(2024, 3, 1))


def test_list_auth_error():
    gateway, _ = build_gateway(json_response(401, error_body(20003, 401, "Authenticate")))
    with pytest.raises(TwilioError) as raised:
        gateway.list_messages(to="+12025550143", sent_after=dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc))
    assert raised.value.http_status == 401
    assert raised.value.code == 20003


def test_list_unavailable():
    gateway, _ = build_gateway(requests.ReadTimeout("read"))
    with pytest.raises(TwilioUnavailable):
        gateway.list_messages(to="+12025550143", sent_after=dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc))


@pytest.mark.parametrize("variable", ["TWILIO_EDGE", "TWILIO_REGION"])
def test_base_url_ignores_edge(monkeypatch, variable):
    monkeypatch.setenv(variable, "sydney")
    gateway, fake = build_gateway(json_response(201, message_body()))
    gateway.create_message(to="+12025550143", from_="+12025550100", body="Hello")
    assert fake.requests[0]["uri"].startswith(BASE_URL + "/2010-04-01/")
