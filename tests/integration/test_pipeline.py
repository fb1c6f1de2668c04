"""The whole product end to end: campaigns to the demo members over both brokers.

Each broker gets one Stack for the module, with real HTTP to both simulators. On it,
staff send the demo campaign twice (the second run must skip the members who opted
out in the first), then the fault tests run against the same stack. Every text sent
must be logged in iMIS as one interaction.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone

import phonenumbers
import pytest
import requests
from twilio.request_validator import RequestValidator

from libs.common.broker import DEATH_REASON_HEADER, QUEUE_DEAD, QUEUE_JOBS
from libs.common.phones import REASON_INVALID, REASON_NO_NUMBER
from local import demo_data
from local.stack import DEMO_CLOUD_ID, DEMO_TWILIO_TOKEN
from libs.common.progress import CALLBACK_RETRIES, CALLBACK_SKIPS
from services.recipients.expansion import DUPLICATE_NUMBER, OPTED_OUT
from tests.conftest import wait_until
from tests.integration.conftest import QueueProbe, StaffApi

BROKERS = [
    pytest.param("memory", id="memory"),
    pytest.param("rabbitmq", id="rabbitmq", marks=pytest.mark.rabbitmq),
]
each_backend = pytest.mark.parametrize("backend", BROKERS)

OPTED_OUT_NUMBERS = demo_data.DEMO_TWILIO_OPTED_OUT
UNDELIVERED_NUMBERS = tuple(demo_data.DEMO_UNDELIVERED)
# Undelivered texts end failed, or skipped where the code means the number cannot take texts.
SKIPPED_AFTER_SENDING = tuple(number for number, code in demo_data.DEMO_UNDELIVERED.items()
                              if code in CALLBACK_SKIPS)
FAILED_AFTER_SENDING = tuple(number for number in UNDELIVERED_NUMBERS if number not in SKIPPED_AFTER_SENDING)
SENT_COUNT = demo_data.DEMO_RECIPIENT_COUNT - len(OPTED_OUT_NUMBERS)
DELIVERED_COUNT = SENT_COUNT - len(UNDELIVERED_NUMBERS)
TEXTUNSUB_CATEGORY = "Text Manager"
FIRST_CAMPAIGN = "First demo campaign"
SECOND_CAMPAIGN = "Second demo campaign"


def member_of_number() -> dict[str, str]:
    """Return the first member id of each valid demo number, keyed by E.164.

    Normalises with phonenumbers directly, not with the product's code, so that the
    expected recipients do not depend on what is under test.
    """
    members: dict[str, str] = {}
    for row in demo_data.build_demo_members():
        try:
            parsed = phonenumbers.parse(row["Mobile"] or "", demo_data.DEMO_DEFAULT_COUNTRY)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(parsed):
            e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
            members.setdefault(e164, row["ID"])
    return members


MEMBER_OF_NUMBER = member_of_number()


@dataclass
class CampaignOutcome:
    """One campaign to the demo query: the API's view, the creates Twilio got, the run's messages."""

    campaign: dict
    creates: list[dict]
    messages: dict[str, dict]

    @property
    def run(self) -> dict:
        return self.campaign["current_run"]


@dataclass
class DemoPipeline:
    """A Stack on one broker, and the two demo campaigns sent on it."""

    stack: object
    staff: StaffApi
    first: CampaignOutcome
    second: CampaignOutcome


class Pipelines:
    """Start one Stack per broker on first use and send the two demo campaigns on it.

    A failure while doing so is kept and raised again in every later test of that
    broker, instead of repeating a long wait.
    """

    def __init__(self, start_stack):
        self._start_stack = start_stack
        self._done: dict[str, DemoPipeline | BaseException] = {}

    def demo(self, broker: str) -> DemoPipeline:
        if broker not in self._done:
            try:
                self._done[broker] = self._run_demo(broker)
            except BaseException as error:
                self._done[broker] = error
                raise
        outcome = self._done[broker]
        if isinstance(outcome, BaseException):
            raise AssertionError(f"the demo campaigns on {broker} failed earlier: {outcome!r}")
        return outcome

    def _run_demo(self, broker: str) -> DemoPipeline:
        stack = self._start_stack(broker)
        staff = StaffApi(stack.gateway_url, username=demo_data.DEMO_STAFF_USER[0],
                         password=demo_data.DEMO_STAFF_USER[1], cloud_id=DEMO_CLOUD_ID)
        first = _send_demo_campaign(stack, staff, FIRST_CAMPAIGN)
        wait_until(lambda: len(_textunsub_activities(stack)) >= len(OPTED_OUT_NUMBERS),
                   "every opted-out member has a TEXTUNSUB activity")
        wait_until(lambda: len(_interactions(stack, FIRST_CAMPAIGN)) >= SENT_COUNT,
                   "every text of the first campaign is logged in iMIS")
        second = _send_demo_campaign(stack, staff, SECOND_CAMPAIGN)
        # The second campaign texts the same members as the first one sent to: all but the opted-out.
        wait_until(lambda: len(_interactions(stack, SECOND_CAMPAIGN)) >= SENT_COUNT,
                   "every text of the second campaign is logged in iMIS")
        return DemoPipeline(stack=stack, staff=staff, first=first, second=second)


def _send_demo_campaign(stack, staff: StaffApi, name: str) -> CampaignOutcome:
    creates_before = len(stack.twilio.messages())
    campaign = staff.create_campaign(name=name)
    finished = staff.send_and_wait(campaign["id"])
    run_id = finished["current_run"]["id"]
    messages = {document["_id"]: document for document in stack.runtime.db.messages.find({"run_id": run_id})}
    return CampaignOutcome(campaign=finished, creates=stack.twilio.messages()[creates_before:], messages=messages)


def _textunsub_activities(stack) -> list[dict]:
    return [activity for activity in stack.imis.activities() if activity["activity_type"] == "TEXTUNSUB"]


def _interactions(stack, campaign_name: str) -> list[dict]:
    """Return the communication log entries of one campaign's texts, found by their subject."""
    return [entry for entry in stack.imis.communication_log() if entry["subject"] == f"Text Manager: {campaign_name}"]


def _accepted_members(outcome: CampaignOutcome) -> list[str]:
    return sorted(MEMBER_OF_NUMBER[create["to"]] for create in outcome.creates if create["sid"])


@pytest.fixture(scope="module")
def pipelines(module_stack_factory) -> Pipelines:
    return Pipelines(module_stack_factory)


# ------------------------------------------------------------------ first campaign


@each_backend
def test_campaign_completes(pipelines, backend):
    first = pipelines.demo(backend).first

    assert first.campaign["status"] == "completed"
    assert first.run["status"] == "completed"


@each_backend
def test_recipient_count(pipelines, backend):
    assert pipelines.demo(backend).first.run["counts"]["recipients"] == demo_data.DEMO_RECIPIENT_COUNT


@each_backend
def test_skipped_by_reason(pipelines, backend):
    expected = {
        DUPLICATE_NUMBER: demo_data.DEMO_DUPLICATE_COUNT,
        REASON_INVALID: demo_data.DEMO_INVALID_COUNT,
        REASON_NO_NUMBER: demo_data.DEMO_EMPTY_COUNT,
    }

    assert pipelines.demo(backend).first.run["skipped_by_reason"] == expected


@each_backend
def test_final_counts(pipelines, backend):
    counts = pipelines.demo(backend).first.run["counts"]

    assert counts["sent"] == SENT_COUNT
    assert counts["opted_out"] == len(OPTED_OUT_NUMBERS)
    assert counts["delivered"] == DELIVERED_COUNT
    assert counts["failed"] == len(FAILED_AFTER_SENDING)
    assert counts["undeliverable"] == len(SKIPPED_AFTER_SENDING)
    assert counts["cancelled"] == 0


def test_demo_undelivered_codes_end_at_once():
    retried = [code for code in demo_data.DEMO_UNDELIVERED.values() if code in CALLBACK_RETRIES]

    assert retried == []


def test_expected_recipients_match_demo_data():
    assert len(MEMBER_OF_NUMBER) == demo_data.DEMO_RECIPIENT_COUNT


@each_backend
def test_one_create_per_number(pipelines, backend):
    creates = pipelines.demo(backend).first.creates

    per_number = Counter(create["to"] for create in creates)

    assert set(per_number) == set(MEMBER_OF_NUMBER)
    assert [number for number, count in per_number.items() if count != 1] == []


@each_backend
def test_opted_out_rejected_by_twilio(pipelines, backend):
    creates = pipelines.demo(backend).first.creates

    rejected = sorted(create["to"] for create in creates if create["error_code"] == 21610)

    assert rejected == sorted(OPTED_OUT_NUMBERS)


@each_backend
def test_message_statuses(pipelines, backend):
    messages = pipelines.demo(backend).first.messages

    statuses = Counter(message["status"] for message in messages.values())

    assert statuses == {"delivered": DELIVERED_COUNT, "opted_out": len(OPTED_OUT_NUMBERS),
                        "undelivered": len(FAILED_AFTER_SENDING), "skipped": len(SKIPPED_AFTER_SENDING)}


@each_backend
@pytest.mark.parametrize("number", OPTED_OUT_NUMBERS)
def test_textunsub_activity(pipelines, backend, number):
    """ACTIVITY_TYPE TEXTUNSUB, PartyId the member, CATEGORY "Text Manager", UF_1 the number, date sent in UTC."""
    demo = pipelines.demo(backend)
    activities = [activity for activity in _textunsub_activities(demo.stack) if activity["uf_1"] == number]
    create = next(create for create in demo.first.creates if create["to"] == number)

    assert len(activities) == 1
    activity = activities[0]
    assert activity["party_id"] == MEMBER_OF_NUMBER[number]
    assert activity["category"] == TEXTUNSUB_CATEGORY
    sent_at = datetime.fromisoformat(activity["transaction_date"]).replace(tzinfo=timezone.utc)
    assert abs(sent_at.timestamp() - create["received_at"]) < 2.0


@each_backend
def test_one_textunsub_per_opt_out(pipelines, backend):
    activities = _textunsub_activities(pipelines.demo(backend).stack)

    assert sorted(activity["uf_1"] for activity in activities) == sorted(OPTED_OUT_NUMBERS)


@each_backend
def test_status_callback_has_message_id(pipelines, backend):
    demo = pipelines.demo(backend)
    run_id = demo.first.run["id"]

    for create in demo.first.creates:
        message_id = demo.stack.runtime.message_ids.build(run_id, create["to"])
        assert create["status_callback"] == f"{demo.stack.feedback_url}/twilio/status/{DEMO_CLOUD_ID}/{message_id}"
        assert create["to"].lstrip("+") not in create["status_callback"]
        assert message_id in demo.first.messages


@each_backend
def test_sids_recorded(pipelines, backend):
    demo = pipelines.demo(backend)
    run_id = demo.first.run["id"]

    accepted = [create for create in demo.first.creates if create["sid"]]

    assert len(accepted) == SENT_COUNT
    message_ids = demo.stack.runtime.message_ids
    assert all(demo.first.messages[message_ids.build(run_id, create["to"])].get("sid") == create["sid"]
               for create in accepted)


@each_backend
def test_each_sent_text_logged(pipelines, backend):
    demo = pipelines.demo(backend)

    interactions = _interactions(demo.stack, FIRST_CAMPAIGN)

    assert len(interactions) == SENT_COUNT
    assert sorted(entry["recipient_id"] for entry in interactions) == _accepted_members(demo.first)
    assert {entry["message_type"] for entry in interactions} == {1}


@each_backend
def test_logged_text_has_body(pipelines, backend):
    demo = pipelines.demo(backend)
    member = MEMBER_OF_NUMBER[UNDELIVERED_NUMBERS[0]]

    entries = [entry for entry in _interactions(demo.stack, FIRST_CAMPAIGN) if entry["recipient_id"] == member]

    assert len(entries) == 1
    assert entries[0]["html"].startswith("Hello ")
    assert entries[0]["html"].endswith(", this is the Demo Association.")


@each_backend
def test_opted_out_texts_not_logged(pipelines, backend):
    demo = pipelines.demo(backend)
    opted_out_members = {MEMBER_OF_NUMBER[number] for number in OPTED_OUT_NUMBERS}

    logged = {entry["recipient_id"] for entry in demo.stack.imis.communication_log()}

    assert logged & opted_out_members == set()


@each_backend
def test_messages_record_imis_key(pipelines, backend):
    demo = pipelines.demo(backend)
    keys = {entry["key"] for entry in _interactions(demo.stack, FIRST_CAMPAIGN)}

    messages = list(demo.stack.runtime.db.messages.find({"run_id": demo.first.run["id"], "sent_at": {"$ne": None}}))

    assert len(messages) == SENT_COUNT
    assert {message["imis_log"]["status"] for message in messages} == {"written"}
    assert {message["imis_log"]["kind"] for message in messages} == {"interaction"}
    assert {message["imis_log"]["key"] for message in messages} == keys


@each_backend
def test_messages_api_shows_imis_log(pipelines, backend):
    demo = pipelines.demo(backend)

    response = demo.staff.get(f"/api/runs/{demo.first.run['id']}/messages?limit=1000")

    assert response.status_code == 200
    page = response.json()
    assert page["total"] == demo_data.DEMO_RECIPIENT_COUNT
    logs = Counter((message["imis_log"] or {}).get("status") for message in page["messages"])
    assert logs == {"written": SENT_COUNT, None: len(OPTED_OUT_NUMBERS)}


@pytest.mark.rabbitmq
def test_brokers_agree(pipelines):
    on_memory = pipelines.demo("memory").first.run
    on_rabbitmq = pipelines.demo("rabbitmq").first.run

    assert on_memory["counts"] == on_rabbitmq["counts"]
    assert on_memory["skipped_by_reason"] == on_rabbitmq["skipped_by_reason"]


# ------------------------------------------------------------------ second campaign


@each_backend
def test_second_campaign_completes(pipelines, backend):
    assert pipelines.demo(backend).second.campaign["status"] == "completed"


@each_backend
def test_second_campaign_skips_opted_out(pipelines, backend):
    run = pipelines.demo(backend).second.run

    assert run["skipped_by_reason"].get(OPTED_OUT) == len(OPTED_OUT_NUMBERS)
    assert run["counts"]["recipients"] == demo_data.DEMO_RECIPIENT_COUNT - len(OPTED_OUT_NUMBERS)


@each_backend
def test_second_campaign_spares_opted_out(pipelines, backend):
    creates = pipelines.demo(backend).second.creates

    per_number = Counter(create["to"] for create in creates)

    assert [number for number in OPTED_OUT_NUMBERS if number in per_number] == []
    assert set(per_number) == set(MEMBER_OF_NUMBER) - set(OPTED_OUT_NUMBERS)
    assert [number for number, count in per_number.items() if count != 1] == []


@each_backend
def test_second_campaign_writes_no_activity(pipelines, backend):
    assert len(_textunsub_activities(pipelines.demo(backend).stack)) == len(OPTED_OUT_NUMBERS)


@each_backend
def test_second_campaign_texts_logged(pipelines, backend):
    demo = pipelines.demo(backend)

    interactions = _interactions(demo.stack, SECOND_CAMPAIGN)

    assert sorted(entry["recipient_id"] for entry in interactions) == _accepted_members(demo.second)


# ------------------------------------------------------------------ forged status callbacks


def _delivered_message(demo: DemoPipeline) -> dict:
    return next(message for message in demo.first.messages.values() if message["status"] == "delivered")


def _status_form(message: dict) -> dict:
    return {"MessageSid": message["sid"], "SmsSid": message["sid"], "MessageStatus": "failed", "SmsStatus": "failed",
            "ErrorCode": "21610", "To": message["to"], "From": "+18885550100", "AccountSid": "AC" + "d3" * 16,
            "ApiVersion": "2010-04-01"}


@each_backend
@pytest.mark.parametrize("signature", [None, "wrong", "other token"])
def test_forged_callback_rejected(pipelines, backend, signature, caplog):
    demo = pipelines.demo(backend)
    message = _delivered_message(demo)
    url = f"{demo.stack.feedback_url}/twilio/status/{DEMO_CLOUD_ID}/{message['_id']}"
    form = _status_form(message)
    headers = {}
    if signature == "wrong":
        headers["X-Twilio-Signature"] = "bm90IGEgc2lnbmF0dXJl"
    elif signature == "other token":
        headers["X-Twilio-Signature"] = RequestValidator("not-the-tenant-token").compute_signature(url, form)
    db = demo.stack.runtime.db
    message_before = db.messages.find_one({"_id": message["_id"]})
    callbacks_before = db.callbacks.count_documents({})
    optouts_before = db.optouts.count_documents({})
    caplog.set_level(logging.WARNING, logger="services.feedback.app")

    response = requests.post(url, data=form, headers=headers, timeout=10)

    assert response.status_code == 403
    assert db.messages.find_one({"_id": message["_id"]}) == message_before
    assert db.callbacks.count_documents({}) == callbacks_before
    assert db.optouts.count_documents({}) == optouts_before
    rejections = [record for record in caplog.records
                  if record.name == "services.feedback.app" and "rejected a webhook" in record.getMessage()]
    assert len(rejections) == 1
    assert ("missing" if signature is None else "wrong") in rejections[0].getMessage()


@each_backend
def test_signed_callback_accepted(pipelines, backend):
    """The control for the forged ones: the same request, signed, gets through."""
    demo = pipelines.demo(backend)
    message = _delivered_message(demo)
    url = f"{demo.stack.feedback_url}/twilio/status/{DEMO_CLOUD_ID}/{message['_id']}"
    form = dict(_status_form(message), MessageStatus="sent", SmsStatus="sent")
    form.pop("ErrorCode")
    signature = RequestValidator(DEMO_TWILIO_TOKEN).compute_signature(url, form)

    response = requests.post(url, data=form, headers={"X-Twilio-Signature": signature}, timeout=10)

    assert response.status_code == 204
    assert demo.stack.runtime.db.messages.find_one({"_id": message["_id"]})["status"] == "delivered"


# ------------------------------------------------------------------ malformed jobs


@each_backend
@pytest.mark.parametrize("payload", [
    pytest.param(json.dumps({"tenant_id": DEMO_CLOUD_ID, "to": "+12025550199"}).encode(), id="missing-fields"),
    pytest.param(b"{not json", id="not-json"),
    pytest.param(b"[1, 2, 3]", id="json-array"),
    pytest.param(json.dumps({"tenant_id": DEMO_CLOUD_ID, "campaign_id": "c", "run_id": "r", "message_id": "r:+1",
                             "member_id": "1", "to": "+12025550199", "body": "Hi", "segments": "many",
                             "encoding": "GSM-7"}).encode(), id="bad-segments"),
])
def test_malformed_job_kept(pipelines, backend, payload):
    """The job is dead-lettered, and the scheduler's dead-letter handler keeps it as it arrived."""
    demo = pipelines.demo(backend)
    db, broker = demo.stack.runtime.db, demo.stack.runtime.broker
    probe = QueueProbe(demo.stack)
    messages_before = db.messages.count_documents({})

    probe.publish_raw(QUEUE_JOBS, payload, message_id="malformed-job")

    kept = wait_until(lambda: db.dead_letters.find_one({"message_id": "malformed-job", "payload": payload}),
                      "the dead-letter handler kept the malformed job")
    assert kept["queue"] == QUEUE_JOBS
    assert kept["attempts"] == 1
    assert kept["reason"] == json.loads(kept["headers_json"])[DEATH_REASON_HEADER]
    assert kept["reason"]
    assert kept["kept_because"]
    wait_until(lambda: broker.queue_depth(QUEUE_DEAD) == 0, "the dead letter was acknowledged")
    assert broker.queue_depth(QUEUE_JOBS) == 0
    assert demo.stack.runtime.db.messages.count_documents({}) == messages_before
