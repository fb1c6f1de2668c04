"""The Twilio simulator driven over real HTTP by the twilio library through TwilioGateway."""

import base64
import datetime as dt
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import pytest
import requests
from twilio.rest import Client
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from libs.common.twilio_client import TwilioError, TwilioGateway, TwilioUnavailable, verify_signature
from local.simulators.twilio import ARRIVED_AT_KEY, TwilioSimulator, build_app
from tests.conftest import CASES_DIR, REFERENCE_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]
OPENAPI_PATH = REFERENCE_DIR / "twilio-messages-openapi.json"

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "simulator-test-token"
SENDER = "+12025550100"
SERVICE_SID = "MG" + "fedcba9876543210" * 2
CARLA = "+12025550142"
BEN = "+12025550188"
ANA = "+12025550143"
START = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
WAIT_S = 10.0

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "code": {"type": "integer"},
        "message": {"type": "string"},
        "more_info": {"type": "string", "pattern": r"^https://www\.twilio\.com/docs/errors/\d+$"},
        "status": {"type": "integer"},
    },
    "required": ["code", "message", "more_info", "status"],
    "additionalProperties": False,
}


class FakeClock:
    """A settable epoch clock shared by the test and the simulator's threads."""

    def __init__(self, start: dt.datetime):
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, moment: dt.datetime) -> None:
        self.now = moment.timestamp()


class Receiver:
    """A local HTTP server that records every form POST it receives and responds 200."""

    def __init__(self):
        self.posts: list[dict] = []
        self._changed = threading.Condition()
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def _app(self, environ, start_response):
        incoming = Request(environ)
        post = {"url": incoming.url, "form": incoming.form.to_dict(),
                "signature": incoming.headers.get("X-Twilio-Signature")}
        with self._changed:
            self.posts.append(post)
            self._changed.notify_all()
        return Response("", status=200)(environ, start_response)

    def start(self) -> "Receiver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, predicate, timeout_s: float = WAIT_S) -> list[dict]:
        """Wait until predicate(posts) is true and return the posts received so far."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.posts), timeout=timeout_s):
                raise AssertionError(f"timed out waiting for the receiver; posts so far: {self.posts}")
            return list(self.posts)

    def for_sid(self, sid: str) -> list[dict]:
        with self._changed:
            return [post["form"] for post in self.posts if post["form"].get("MessageSid") == sid]


def wait_until(condition, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the condition")
        time.sleep(0.01)


def openapi_message_schema() -> dict:
    """Return the OpenAPI message schema as JSON Schema (nullable turned into a null type)."""
    schemas = json.loads(OPENAPI_PATH.read_text())["components"]["schemas"]

    def convert(node):
        if isinstance(node, list):
            return [convert(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return convert(schemas[node["$ref"].rsplit("/", 1)[1]])
        converted = {key: convert(value) for key, value in node.items() if key not in ("nullable", "x-twilio")}
        if node.get("nullable") and "type" in node:
            converted["type"] = [node["type"], "null"]
        return converted

    return convert(schemas["api.v2010.account.message"])


MESSAGE_SCHEMA = openapi_message_schema()


@pytest.fixture
def clock():
    return FakeClock(START)


@pytest.fixture
def simulator(clock):
    sim = TwilioSimulator({ACCOUNT_SID: AUTH_TOKEN}, callback_delay_s=0.01, clock=clock)
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def gateway(simulator):
    return TwilioGateway(ACCOUNT_SID, AUTH_TOKEN, base_url=simulator.url, timeout_s=5.0)


@pytest.fixture
def twilio_client(simulator):
    """The twilio library's own client pointed at the simulator."""
    client = Client(ACCOUNT_SID, AUTH_TOKEN)
    client.api.base_url = simulator.url
    return client


@pytest.fixture
def receiver():
    server = Receiver().start()
    yield server
    server.stop()


def messages_url(simulator: TwilioSimulator, suffix: str = ".json") -> str:
    return f"{simulator.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages{suffix}"


def raw_create(simulator, auth=(ACCOUNT_SID, AUTH_TOKEN), **form) -> requests.Response:
    return requests.post(messages_url(simulator), data=form, auth=auth, timeout=5)


def raw_get(simulator, suffix=".json", **params) -> requests.Response:
    return requests.get(messages_url(simulator, suffix), params=params, auth=(ACCOUNT_SID, AUTH_TOKEN), timeout=5)


def send(gateway, to, **overrides):
    fields = {"to": to, "from_": SENDER, "body": "Board meeting on Friday"} | overrides
    return gateway.create_message(**fields)


def load_case_text(text) -> str:
    if isinstance(text, str):
        return text
    if "repeat" in text:
        return text["repeat"] * text["times"]
    return "".join(load_case_text(part) for part in text["concat"])


SEGMENT_CASES = json.loads((CASES_DIR / "segments.json").read_text())["cases"]


# --- create ---------------------------------------------------------------------------


def test_create_returns_queued(gateway):
    created = send(gateway, ANA)
    assert re.fullmatch(r"SM[0-9a-f]{32}", created.sid)
    assert created.status == "queued"
    assert created.num_segments == 1
    assert created.date_created == START


def test_create_body_matches_openapi(simulator):
    response = raw_create(simulator, To=ANA, From=SENDER, Body="Hello 👍")
    body = response.json()
    assert response.status_code == 201
    jsonschema.validate(body, MESSAGE_SCHEMA)
    assert set(MESSAGE_SCHEMA["properties"]) <= set(body)
    assert body["num_segments"] == "1"
    assert body["num_media"] == "0"
    assert body["direction"] == "outbound-api"
    assert body["price"] is None
    assert body["date_sent"] is None
    assert body["date_created"] == "Fri, 01 Mar 2024 12:00:00 +0000"
    assert body["uri"] == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{body['sid']}.json"


def test_create_recorded(simulator, gateway):
    created = send(gateway, ANA, status_callback="http://127.0.0.1:9/cb/1")
    record = simulator.messages()[0]
    assert record["to"] == ANA
    assert record["from"] == SENDER
    assert record["body"] == "Board meeting on Friday"
    assert record["sid"] == created.sid
    assert record["status"] == "queued"
    assert record["error_code"] is None
    assert record["received_at"] == START.timestamp()
    assert record["status_callback"] == "http://127.0.0.1:9/cb/1"
    assert record["messaging_service_sid"] is None


def test_recorded_served_as_json(simulator, gateway):
    send(gateway, ANA)
    with pytest.raises(TwilioError):
        send(gateway, "not-a-number")
    served = requests.get(f"{simulator.url}/_sim/messages", timeout=5).json()
    assert served == simulator.messages()
    assert [record["status"] for record in served] == ["queued", "rejected"]


@pytest.mark.parametrize("case", SEGMENT_CASES, ids=lambda case: f"{case['encoding']}-{case['segments']}")
def test_segments_match_cases(gateway, case):
    created = send(gateway, ANA, body=load_case_text(case["text"]))
    assert created.num_segments == case["segments"]


def test_smart_encoding_counts_gsm(gateway):
    body = "\u201cBoard\u201d meeting \u2014 Friday\u2026" + "x" * 130
    assert send(gateway, ANA, body=body).num_segments == 3
    assert send(gateway, ANA, body=body, smart_encoded=True).num_segments == 1


def test_service_create_accepted(simulator, gateway):
    created = send(gateway, ANA, from_=None, messaging_service_sid=SERVICE_SID)
    assert created.status == "accepted"
    assert created.num_segments == 0
    assert simulator.messages()[0]["messaging_service_sid"] == SERVICE_SID


def test_service_body_matches_openapi(simulator):
    response = raw_create(simulator, To=ANA, MessagingServiceSid=SERVICE_SID, Body="Hello")
    body = response.json()
    assert response.status_code == 201
    jsonschema.validate(body, MESSAGE_SCHEMA)
    assert body["from"] is None
    assert body["messaging_service_sid"] == SERVICE_SID
    assert body["num_segments"] == "0"


# --- create errors --------------------------------------------------------------------


def assert_twilio_error(response: requests.Response, http_status: int, code: int) -> None:
    body = response.json()
    jsonschema.validate(body, ERROR_SCHEMA)
    assert response.status_code == http_status
    assert body["code"] == code
    assert body["status"] == http_status
    assert body["more_info"] == f"https://www.twilio.com/docs/errors/{code}"


@pytest.mark.parametrize(
    ("form", "code"),
    [
        ({"From": SENDER, "Body": "Hi"}, 21604),
        ({"To": "2025550143", "From": SENDER, "Body": "Hi"}, 21211),
        ({"To": "+1 202 555 0143", "From": SENDER, "Body": "Hi"}, 21211),
        ({"To": ANA, "Body": "Hi"}, 21603),
        ({"To": ANA, "MessagingServiceSid": "MG123", "Body": "Hi"}, 21701),
        ({"To": ANA, "From": SENDER}, 21602),
        ({"To": ANA, "From": SENDER, "Body": "x" * 1601}, 21617),
        ({"To": ANA, "From": SENDER, "Body": "Hi", "ValidityPeriod": "0"}, 90007),
        ({"To": ANA, "From": SENDER, "Body": "Hi", "ValidityPeriod": "36001"}, 90007),
        ({"To": ANA, "From": SENDER, "Body": "Hi", "ValidityPeriod": "soon"}, 90014),
    ],
)
def test_invalid_create_rejected(simulator, form, code):
    assert_twilio_error(raw_create(simulator, **form), 400, code)


@pytest.mark.parametrize("body", ["x" * 1600, "é" * 1600])
def test_body_limit_inclusive(simulator, body):
    assert raw_create(simulator, To=ANA, From=SENDER, Body=body).status_code == 201


@pytest.mark.parametrize("seconds", ["1", "36000"])
def test_validity_period_bounds(simulator, seconds):
    assert raw_create(simulator, To=ANA, From=SENDER, Body="Hi", ValidityPeriod=seconds).status_code == 201


@pytest.mark.parametrize(
    "auth",
    [(ACCOUNT_SID, "wrong-token"), ("AC" + "9" * 32, AUTH_TOKEN), None],
    ids=["wrong-token", "other-account", "no-auth"],
)
def test_bad_credentials_rejected(simulator, auth):
    assert_twilio_error(raw_create(simulator, auth=auth, To=ANA, From=SENDER, Body="Hi"), 401, 20003)


def test_wrong_token_through_gateway(simulator):
    gateway = TwilioGateway(ACCOUNT_SID, "wrong-token", base_url=simulator.url)
    with pytest.raises(TwilioError) as raised:
        send(gateway, ANA)
    assert raised.value.http_status == 401
    assert raised.value.code == 20003


def test_invalid_to_through_gateway(gateway):
    with pytest.raises(TwilioError) as raised:
        send(gateway, "555-0100")
    assert raised.value.http_status == 400
    assert raised.value.code == 21211
    # The gateway masks the number in Twilio's message, because the message is logged.
    assert raised.value.message == "The 'To' number ****0100 is not a valid phone number."


def test_long_body_through_gateway(gateway):
    with pytest.raises(TwilioError) as raised:
        send(gateway, ANA, body="x" * 1601)
    assert raised.value.code == 21617


@pytest.mark.parametrize("code", [21211, 21408, 21606, 21611, 21612, 21614, 21617])
def test_number_error_switch(simulator, gateway, code):
    simulator.set_create_error(BEN, code)
    with pytest.raises(TwilioError) as raised:
        send(gateway, BEN)
    assert raised.value.http_status == 400
    assert raised.value.code == code
    assert send(gateway, ANA).status == "queued"


def test_number_error_body_shape(simulator):
    simulator.set_create_error(BEN, 21614)
    assert_twilio_error(raw_create(simulator, To=BEN, From=SENDER, Body="Hi"), 400, 21614)


@pytest.mark.parametrize(("code", "http_status"), [(20429, 429), (20003, 401), (20500, 500), (20503, 503)])
def test_fail_next_then_success(simulator, gateway, code, http_status):
    simulator.fail_next(2, code, http_status)
    for _ in range(2):
        with pytest.raises(TwilioError) as raised:
            send(gateway, ANA)
        assert raised.value.http_status == http_status
        assert raised.value.code == code
    assert send(gateway, ANA).status == "queued"
    assert [record["error_code"] for record in simulator.messages()] == [code, code, None]


def test_fail_next_body_shape(simulator):
    simulator.fail_next(1, 20429, 429)
    assert_twilio_error(raw_create(simulator, To=ANA, From=SENDER, Body="Hi"), 429, 20429)


def test_opted_out_rejected(simulator, gateway):
    simulator.set_opted_out([CARLA])
    with pytest.raises(TwilioError) as raised:
        send(gateway, CARLA)
    assert raised.value.code == 21610
    assert raised.value.http_status == 400
    assert simulator.messages()[0]["status"] == "rejected"
    assert simulator.messages()[0]["error_code"] == 21610


def test_opted_out_removed(simulator, gateway):
    simulator.add_opted_out(CARLA)
    simulator.remove_opted_out(CARLA)
    assert send(gateway, CARLA).status == "queued"


def test_rejected_create_stores_nothing(simulator, gateway):
    simulator.add_opted_out(CARLA)
    with pytest.raises(TwilioError):
        send(gateway, CARLA)
    assert raw_get(simulator, To=CARLA).json()["messages"] == []


def test_reset_clears_switches(simulator, gateway):
    simulator.add_opted_out(CARLA)
    simulator.set_create_error(BEN, 21614)
    simulator.fail_next(5, 20429, 429)
    with pytest.raises(TwilioError):
        send(gateway, ANA)
    simulator.reset()
    assert simulator.messages() == []
    assert send(gateway, CARLA).status == "queued"
    assert send(gateway, BEN).status == "queued"


def test_restart_same_port(simulator, gateway):
    created = send(gateway, ANA)
    port = int(simulator.url.rsplit(":", 1)[1])
    simulator.stop()
    with pytest.raises(TwilioUnavailable):
        send(gateway, ANA)
    simulator.start(port)
    assert send(gateway, BEN).status == "queued"
    assert [record["sid"] for record in simulator.messages()][0] == created.sid


def test_unknown_route_shape(simulator):
    response = requests.get(f"{simulator.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json", timeout=5)
    assert_twilio_error(response, 404, 20404)


# --- status callbacks -----------------------------------------------------------------


def callback_url(receiver, message_id: str) -> str:
    return f"{receiver.url}/twilio/status/{message_id}?tenant=t1"


def test_callbacks_sent_then_delivered(gateway, receiver):
    created = send(gateway, ANA, status_callback=callback_url(receiver, "m1"))
    receiver.wait_for(lambda posts: len(posts) == 2)
    forms = receiver.for_sid(created.sid)
    assert [form["MessageStatus"] for form in forms] == ["sent", "delivered"]
    assert [form["SmsStatus"] for form in forms] == ["sent", "delivered"]
    assert forms[1]["SmsSid"] == created.sid
    assert forms[1]["To"] == ANA
    assert forms[1]["From"] == SENDER
    assert forms[1]["AccountSid"] == ACCOUNT_SID
    assert forms[1]["ApiVersion"] == "2010-04-01"
    assert "ErrorCode" not in forms[1]


def test_callbacks_signed(gateway, receiver):
    url = callback_url(receiver, "m1")
    send(gateway, ANA, status_callback=url)
    posts = receiver.wait_for(lambda posts: len(posts) == 2)
    for post in posts:
        assert post["url"] == url
        assert verify_signature(AUTH_TOKEN, url, post["form"], post["signature"])
        assert not verify_signature("other-token", url, post["form"], post["signature"])


def test_callbacks_in_order_per_message(gateway, receiver):
    sids = [send(gateway, ANA, status_callback=callback_url(receiver, f"m{i}")).sid for i in range(10)]
    receiver.wait_for(lambda posts: len(posts) == 20)
    for sid in sids:
        assert [form["MessageStatus"] for form in receiver.for_sid(sid)] == ["sent", "delivered"]


@pytest.mark.parametrize("code", [30001, 30003, 30004, 30005, 30006, 30007, 30008, 30032, 30036, 30410])
def test_undelivered_callback(simulator, gateway, receiver, code):
    simulator.set_undelivered({BEN: code})
    created = send(gateway, BEN, status_callback=callback_url(receiver, "m1"))
    receiver.wait_for(lambda posts: len(posts) == 2)
    forms = receiver.for_sid(created.sid)
    assert [form["MessageStatus"] for form in forms] == ["sent", "undelivered"]
    assert forms[1]["ErrorCode"] == str(code)
    assert "ErrorCode" not in forms[0]


@pytest.mark.parametrize("code", [30001, 30003, 30008, 30036, 30410])
def test_delivery_error_then_delivered(simulator, gateway, receiver, code):
    """A temporary delivery error hits the first text only, so a retry is delivered."""
    simulator.set_delivery_error(BEN, code, times=1)
    first = send(gateway, BEN, status_callback=callback_url(receiver, "m1"))
    second = send(gateway, BEN, status_callback=callback_url(receiver, "m1"))
    receiver.wait_for(lambda posts: len(posts) == 4)
    assert [form["MessageStatus"] for form in receiver.for_sid(first.sid)] == ["sent", "undelivered"]
    assert receiver.for_sid(first.sid)[1]["ErrorCode"] == str(code)
    assert [form["MessageStatus"] for form in receiver.for_sid(second.sid)] == ["sent", "delivered"]


def test_delivery_error_failed_status(simulator, gateway, receiver):
    simulator.set_delivery_error(BEN, 30032, status="failed")
    created = send(gateway, BEN, status_callback=callback_url(receiver, "m1"))
    receiver.wait_for(lambda posts: len(posts) == 1)
    forms = receiver.for_sid(created.sid)
    assert [form["MessageStatus"] for form in forms] == ["failed"]
    assert forms[0]["ErrorCode"] == "30032"
    assert raw_get(simulator, f"/{created.sid}.json").json()["status"] == "failed"


def test_delivery_error_every_text(simulator, gateway, receiver):
    simulator.set_delivery_error(BEN, 30007)
    sids = [send(gateway, BEN, status_callback=callback_url(receiver, f"m{i}")).sid for i in range(3)]
    receiver.wait_for(lambda posts: len(posts) == 6)
    assert [receiver.for_sid(sid)[1]["ErrorCode"] for sid in sids] == ["30007"] * 3


def test_delivery_error_status_checked(simulator):
    with pytest.raises(ValueError, match="undelivered or failed"):
        simulator.set_delivery_error(BEN, 30003, status="delivered")


def test_slow_next_times_out_once(simulator):
    """The response comes too late for the client, but the text was created and is listed."""
    impatient = TwilioGateway(ACCOUNT_SID, AUTH_TOKEN, base_url=simulator.url, timeout_s=0.2)
    simulator.slow_next(1, 1.0)
    with pytest.raises(TwilioUnavailable):
        send(impatient, ANA)
    second = send(impatient, BEN)
    listed = impatient.list_messages(to=ANA, sent_after=START)
    assert [message.sid for message in listed] == [simulator.messages()[0]["sid"]]
    assert second.status == "queued"


def test_undelivered_resource_state(simulator, gateway, receiver):
    simulator.set_undelivered({BEN: 30003})
    created = send(gateway, BEN, status_callback=callback_url(receiver, "m1"))
    receiver.wait_for(lambda posts: len(posts) == 2)
    fetched = raw_get(simulator, f"/{created.sid}.json").json()
    assert fetched["status"] == "undelivered"
    assert fetched["error_code"] == 30003
    assert fetched["error_message"]


def test_service_opt_out_callback(simulator, gateway, receiver):
    """A Messaging Service accepts a text to an opted-out number, then fails it with 21610."""
    simulator.set_opted_out([CARLA])
    url = callback_url(receiver, "carla")
    created = send(gateway, CARLA, from_=None, messaging_service_sid=SERVICE_SID, status_callback=url)
    posts = receiver.wait_for(lambda posts: len(posts) == 1)
    forms = receiver.for_sid(created.sid)
    assert created.status == "accepted"
    assert [form["MessageStatus"] for form in forms] == ["failed"]
    assert forms[0]["ErrorCode"] == "21610"
    assert forms[0]["MessagingServiceSid"] == SERVICE_SID
    assert verify_signature(AUTH_TOKEN, url, posts[0]["form"], posts[0]["signature"])
    assert raw_get(simulator, f"/{created.sid}.json").json()["status"] == "failed"


def test_service_delivery_assigns_sender(simulator, gateway, receiver):
    created = send(gateway, ANA, from_=None, messaging_service_sid=SERVICE_SID,
                   status_callback=callback_url(receiver, "m1"))
    receiver.wait_for(lambda posts: len(posts) == 2)
    forms = receiver.for_sid(created.sid)
    fetched = raw_get(simulator, f"/{created.sid}.json").json()
    assert [form["MessageStatus"] for form in forms] == ["sent", "delivered"]
    assert forms[0]["From"] == simulator.service_sender
    assert fetched["num_segments"] == "1"
    assert fetched["from"] == simulator.service_sender


def test_refused_callback_logged(gateway, simulator, caplog):
    caplog.set_level(logging.WARNING, logger="local.simulators.twilio")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    created = send(gateway, ANA, status_callback=f"http://127.0.0.1:{closed_port}/cb")
    wait_until(lambda: sum(created.sid in record.getMessage() for record in caplog.records) == 2)
    assert raw_get(simulator, f"/{created.sid}.json").json()["status"] == "delivered"
    assert send(gateway, ANA).status == "queued"


def test_no_callback_still_advances(simulator, gateway):
    created = send(gateway, ANA)
    wait_until(lambda: raw_get(simulator, f"/{created.sid}.json").json()["status"] == "delivered")
    assert raw_get(simulator, f"/{created.sid}.json").json()["date_sent"] == "Fri, 01 Mar 2024 12:00:00 +0000"


# --- list and fetch -------------------------------------------------------------------


def deliver(simulator, gateway, to, clock, moment, body="Board meeting on Friday"):
    clock.set(moment)
    created = send(gateway, to, body=body)
    wait_until(lambda: raw_get(simulator, f"/{created.sid}.json").json()["status"] == "delivered")
    return created.sid


@pytest.fixture
def history(simulator, gateway, clock):
    """Three delivered texts: Ana on 1 and 2 March, Ben on 1 March."""
    return {
        "ana_day1": deliver(simulator, gateway, ANA, clock, START),
        "ben_day1": deliver(simulator, gateway, BEN, clock, START + dt.timedelta(minutes=5)),
        "ana_day2": deliver(simulator, gateway, ANA, clock, START + dt.timedelta(days=1)),
    }


def test_list_by_to_newest_first(twilio_client, history):
    listed = twilio_client.messages.list(to=ANA)
    assert [message.sid for message in listed] == [history["ana_day2"], history["ana_day1"]]


def test_list_by_date_sent(twilio_client, history):
    listed = twilio_client.messages.list(to=ANA, date_sent=dt.date(2024, 3, 1))
    assert [message.sid for message in listed] == [history["ana_day1"]]


def test_list_by_date_sent_after(twilio_client, history):
    listed = twilio_client.messages.list(date_sent_after=START + dt.timedelta(minutes=1))
    assert [message.sid for message in listed] == [history["ana_day2"], history["ben_day1"]]


def test_list_by_date_sent_before(twilio_client, history):
    listed = twilio_client.messages.list(date_sent_before=START + dt.timedelta(minutes=1))
    assert [message.sid for message in listed] == [history["ana_day1"]]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"DateSent": "2024-03-02"}, ["ana_day2"]),
        ({"DateSent>": "2024-03-01"}, ["ana_day2", "ben_day1", "ana_day1"]),
        ({"DateSent<": "2024-03-01"}, ["ben_day1", "ana_day1"]),
        ({"DateSent>": "2024-03-02", "To": BEN}, []),
        ({"From": SENDER, "To": BEN}, ["ben_day1"]),
    ],
)
def test_list_raw_filters(simulator, history, params, expected):
    page = raw_get(simulator, **params).json()
    assert [message["sid"] for message in page["messages"]] == [history[name] for name in expected]


def test_list_excludes_unsent(simulator, gateway, clock):
    simulator.callback_delay_s = 30.0
    created = send(gateway, ANA)
    assert raw_get(simulator, DateSent="2024-03-01").json()["messages"] == []
    assert [m["sid"] for m in raw_get(simulator, To=ANA).json()["messages"]] == [created.sid]


def test_list_envelope(simulator, history):
    page = raw_get(simulator, To=ANA, PageSize="1").json()
    assert page["page"] == 0
    assert page["page_size"] == 1
    assert page["start"] == 0
    assert page["end"] == 0
    assert page["previous_page_uri"] is None
    assert "Page=1" in page["next_page_uri"]
    assert page["first_page_uri"].startswith(f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json?")
    for message in page["messages"]:
        jsonschema.validate(message, MESSAGE_SCHEMA)


def test_list_pages_followed(twilio_client, history):
    listed = twilio_client.messages.list(page_size=1)
    assert [message.sid for message in listed] == [history["ana_day2"], history["ben_day1"], history["ana_day1"]]


def test_gateway_list_by_created(gateway, history):
    found = gateway.list_messages(to=ANA, sent_after=START + dt.timedelta(hours=1))
    assert [message.sid for message in found] == [history["ana_day2"]]
    assert found[0].status == "delivered"
    assert found[0].from_ == SENDER


@pytest.mark.parametrize(("name", "value"), [("DateSent", "March 1"), ("PageSize", "0"), ("PageSize", "x")])
def test_list_invalid_filter(simulator, name, value):
    assert_twilio_error(raw_get(simulator, **{name: value}), 400, 20001)


def test_fetch_delivered(simulator, history):
    response = raw_get(simulator, f"/{history['ben_day1']}.json")
    body = response.json()
    jsonschema.validate(body, MESSAGE_SCHEMA)
    assert body["status"] == "delivered"
    assert body["to"] == BEN
    assert body["date_sent"] == "Fri, 01 Mar 2024 12:05:00 +0000"


def test_fetch_unknown_sid(simulator):
    assert_twilio_error(raw_get(simulator, "/SM" + "0" * 32 + ".json"), 404, 20404)


def test_fetch_through_library(twilio_client, history):
    fetched = twilio_client.messages(history["ana_day1"]).fetch()
    assert fetched.status == "delivered"
    assert fetched.date_sent == START


# --- unknown outcomes and latency -----------------------------------------------------


def test_latency_recorded_at_arrival(simulator, gateway, clock):
    simulator.latency_s = 0.3
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(created=send(gateway, ANA)))
    worker.start()
    wait_until(lambda: len(simulator.messages()) == 1)
    clock.set(START + dt.timedelta(minutes=10))
    worker.join(timeout=WAIT_S)
    assert simulator.messages()[0]["received_at"] == START.timestamp()
    assert outcome["created"].date_created == START


def test_arrival_is_stamped_before_routing_and_parsing(clock):
    """Pacing is measured by arrival: time the request spent in this process is left out."""
    simulator = TwilioSimulator({ACCOUNT_SID: AUTH_TOKEN}, clock=clock)
    client = build_app(simulator).test_client()
    credentials = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()

    response = client.post(
        f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
        data={"To": ANA, "From": SENDER, "Body": "Hello"},
        headers={"Authorization": f"Basic {credentials}"},
        environ_overrides={ARRIVED_AT_KEY: time.perf_counter() - 0.5},
    )

    assert response.status_code == 201
    record = simulator.messages()[0]
    assert record["received_at"] == START.timestamp()
    assert record["received_at"] - 0.6 < record["arrived_at"] <= record["received_at"] - 0.5


def test_latency_keeps_arrival_order(simulator, gateway, clock):
    simulator.latency_s = 0.2
    first = threading.Thread(target=send, args=(gateway, ANA))
    first.start()
    wait_until(lambda: len(simulator.messages()) == 1)
    clock.set(START + dt.timedelta(seconds=1))
    second = threading.Thread(target=send, args=(gateway, BEN))
    second.start()
    first.join(timeout=WAIT_S)
    second.join(timeout=WAIT_S)
    records = simulator.messages()
    assert [record["to"] for record in records] == [ANA, BEN]
    assert records[0]["received_at"] < records[1]["received_at"]


def test_timeout_is_unavailable_then_listed(simulator):
    impatient = TwilioGateway(ACCOUNT_SID, AUTH_TOKEN, base_url=simulator.url, timeout_s=0.2)
    simulator.latency_s = 1.0
    with pytest.raises(TwilioUnavailable):
        send(impatient, ANA)
    simulator.latency_s = 0.0
    found = impatient.list_messages(to=ANA, sent_after=START)
    assert [message.sid for message in found] == [simulator.messages()[0]["sid"]]


def test_refused_connection_unavailable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    gateway = TwilioGateway(ACCOUNT_SID, AUTH_TOKEN, base_url=f"http://127.0.0.1:{closed_port}")
    with pytest.raises(TwilioUnavailable):
        send(gateway, ANA)


@pytest.mark.parametrize("variable", ["TWILIO_EDGE", "TWILIO_REGION"])
def test_edge_variables_ignored(simulator, monkeypatch, variable):
    monkeypatch.setenv(variable, "sydney")
    gateway = TwilioGateway(ACCOUNT_SID, AUTH_TOKEN, base_url=simulator.url)
    assert send(gateway, ANA).status == "queued"


# --- inbound --------------------------------------------------------------------------


@pytest.fixture
def inbound_url(simulator, receiver):
    url = f"{receiver.url}/twilio/inbound"
    simulator.set_inbound_url(SENDER, url)
    return url


def test_inbound_stop_opts_out(simulator, gateway, receiver, inbound_url):
    assert simulator.simulate_inbound(CARLA, SENDER, "STOP") == 200
    post = receiver.wait_for(lambda posts: len(posts) == 1)[0]
    assert post["form"]["OptOutType"] == "STOP"
    assert CARLA in simulator.opted_out()
    with pytest.raises(TwilioError) as raised:
        send(gateway, CARLA)
    assert raised.value.code == 21610


def test_inbound_fields_signed(simulator, receiver, inbound_url):
    simulator.simulate_inbound(CARLA, SENDER, "Thanks, see you there")
    post = receiver.wait_for(lambda posts: len(posts) == 1)[0]
    form = post["form"]
    assert verify_signature(AUTH_TOKEN, inbound_url, form, post["signature"])
    assert re.fullmatch(r"SM[0-9a-f]{32}", form["MessageSid"])
    assert form["SmsSid"] == form["MessageSid"]
    assert form["SmsMessageSid"] == form["MessageSid"]
    assert form["AccountSid"] == ACCOUNT_SID
    assert form["From"] == CARLA
    assert form["To"] == SENDER
    assert form["Body"] == "Thanks, see you there"
    assert form["NumSegments"] == "1"
    assert form["SmsStatus"] == "received"
    assert form["ApiVersion"] == "2010-04-01"
    assert "OptOutType" not in form


@pytest.mark.parametrize(
    ("body", "opt_out_type"),
    [
        ("stop", "STOP"), (" StopAll ", "STOP"), ("UNSUBSCRIBE", "STOP"), ("cancel", "STOP"), ("End", "STOP"),
        ("quit", "STOP"), ("REVOKE", "STOP"), ("optout", "STOP"),
        ("START", "START"), ("yes", "START"), ("Unstop", "START"),
        ("HELP", "HELP"), ("info", "HELP"),
        ("stop please", None), ("STOP!", None), ("opt out", None),
    ],
)
def test_inbound_keywords(simulator, receiver, inbound_url, body, opt_out_type):
    simulator.simulate_inbound(CARLA, SENDER, body)
    form = receiver.wait_for(lambda posts: len(posts) == 1)[0]["form"]
    assert form.get("OptOutType") == opt_out_type
    assert (CARLA in simulator.opted_out()) == (opt_out_type == "STOP")


def test_inbound_start_opts_in(simulator, gateway, receiver, inbound_url):
    simulator.simulate_inbound(CARLA, SENDER, "STOP")
    simulator.simulate_inbound(CARLA, SENDER, "start")
    assert CARLA not in simulator.opted_out()
    assert send(gateway, CARLA).status == "queued"


def test_inbound_over_http(simulator, receiver, inbound_url):
    response = requests.post(f"{simulator.url}/_sim/inbound",
                             json={"from": CARLA, "to": SENDER, "body": "quit"}, timeout=5)
    assert response.json() == {"webhook_status": 200}
    assert CARLA in simulator.opted_out()


def test_inbound_without_webhook(simulator):
    assert simulator.simulate_inbound(CARLA, "+12025550199", "STOP") is None
    assert CARLA in simulator.opted_out()


def test_inbound_http_invalid_json(simulator):
    response = requests.post(f"{simulator.url}/_sim/inbound", json={"from": CARLA}, timeout=5)
    assert response.status_code == 400


# --- command line ---------------------------------------------------------------------


def test_cli_serves_until_sigterm():
    process = subprocess.Popen(
        [sys.executable, "-m", "local.simulators.twilio", "--port", "0", "--account", f"{ACCOUNT_SID}:{AUTH_TOKEN}"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={key: value for key, value in os.environ.items() if not key.startswith("TWILIO_")},
    )
    try:
        line = process.stdout.readline()
        match = re.fullmatch(r"Twilio simulator listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert match, line
        gateway = TwilioGateway(ACCOUNT_SID, AUTH_TOKEN, base_url=match.group(1))
        assert send(gateway, ANA).status == "queued"
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=WAIT_S)
        process.stdout.close()
    assert exit_code == 0
