"""Logging each sent text in iMIS: the writers, the setting, the fallback and idempotency."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from marshmallow import ValidationError

from libs.common.broker import QUEUE_IMIS, Delivery, PublishError, Reject, Retry
from libs.common.imis import (
    ACTIVITY_PROPERTIES, COMMUNICATION_LOG_ENTITY, COMMUNICATION_LOG_PROPERTIES, ImisNotSupported,
    ImisOutcomeUnknown, ImisRequestError, ImisUnavailable, build_activity_entity, build_communication_log_entity,
    unwrap_entity,
)
from libs.common.imis_log import (
    ACTIVITY, INTERACTION, OFF, SMS_MESSAGE_TYPE, TEXT_LOG_MODES, TEXT_MANAGER_CATEGORY, TEXTMSG, WRITERS, SentText,
    body_as_html,
)
from libs.common.imis_queue import tenant_imis_queue
from services.feedback.service import ImisWriter
from services.feedback.text_log import NO_INTERACTIONS_RECHECK_S
from services.gateway import schemas
from services.gateway.openapi import build_spec

MEMBER_ID = "10045"
NUMBER = "+12025550142"
BODY = "Board meeting moved to Friday <6 pm> & later.\nReply STOP to opt out."
SENT_AT = datetime(2100, 1, 1, 0, 0, 5, tzinfo=timezone.utc)


class FakeImis:
    """In-memory stand-in for an iMIS session: communication log entries and activities.

    `interactions_status` makes create_communication_log raise ImisNotSupported with
    that HTTP status; `errors` are raised, in turn, by the next writes of either kind.
    """

    def __init__(self):
        self.interactions: list[dict] = []
        self.activities: list[dict] = []
        self.interaction_calls = 0
        self.interactions_status: int | None = None
        self.errors: list[Exception] = []

    def create_communication_log(self, *, recipient_id, subject, html, message_type) -> str:
        self.interaction_calls += 1
        if self.interactions_status is not None:
            raise ImisNotSupported(f"iMIS answered HTTP {self.interactions_status} to the communication log.")
        self._raise_next_error()
        key = f"CL{len(self.interactions) + 1}"
        self.interactions.append({"key": key, "recipient_id": recipient_id, "subject": subject, "html": html,
                                  "message_type": message_type})
        return key

    def create_activity(self, *, party_id, activity_type, transaction_date, category, uf_1, note=None) -> str:
        self._raise_next_error()
        seqn = str(500 + len(self.activities))
        self.activities.append({"seqn": seqn, "party_id": party_id, "activity_type": activity_type,
                                "transaction_date": transaction_date, "category": category, "uf_1": uf_1,
                                "note": note})
        return seqn

    def find_activities(self, party_id, activity_type) -> list[dict]:
        return [dict(activity, transaction_date=activity["transaction_date"].strftime("%Y-%m-%dT%H:%M:%S"))
                for activity in self.activities
                if activity["party_id"] == party_id and activity["activity_type"] == activity_type]

    def _raise_next_error(self) -> None:
        if self.errors:
            raise self.errors.pop(0)


@pytest.fixture
def imis() -> FakeImis:
    return FakeImis()


@pytest.fixture
def writer(runtime, imis) -> ImisWriter:
    return ImisWriter(runtime.db, tenants=runtime.tenants, imis_factory=lambda _tenant: imis, clock=runtime.clock,
                      notifier=runtime.notifier)


@pytest.fixture
def sent_message(runtime, tenant_factory):
    """Return `add(number, tenant_id="ACME", **fields)`, which stores a sent text and returns its id."""
    tenant_factory(cloud_id="ACME")
    runtime.db.campaigns.insert_one({"_id": "c1", "tenant_id": "ACME", "name": "Board meeting"})

    def add(number: str = NUMBER, tenant_id: str = "ACME", **fields) -> str:
        message_id = runtime.message_ids.build("r1", number)
        document = {"_id": message_id, "tenant_id": tenant_id, "run_id": "r1", "campaign_id": "c1", "to": number,
                    "member_id": MEMBER_ID, "body": BODY, "status": "sent", "sid": "SM" + "ab" * 16,
                    "sent_at": SENT_AT}
        document.update(fields)
        runtime.db.messages.insert_one(document)
        return message_id

    return add


def sent_event(message_id: str, tenant_id: str = "ACME") -> dict:
    return {"kind": "sent", "tenant_id": tenant_id, "message_id": message_id, "number": NUMBER,
            "member_ids": [MEMBER_ID], "sent_at": SENT_AT.isoformat()}


def delivery(body: dict, attempt: int = 1, redelivered: bool = False) -> Delivery:
    return Delivery(queue=QUEUE_IMIS, body=body, headers={}, attempt=attempt, redelivered=redelivered,
                    message_id=f"sent:{body.get('message_id')}")


def imis_log(runtime, message_id: str) -> dict | None:
    return runtime.db.messages.find_one({"_id": message_id}).get("imis_log")


def set_mode(runtime, mode: str) -> None:
    runtime.tenants.update("ACME", {"imis_text_log": mode})


def notices(runtime) -> list[dict]:
    return list(runtime.db.notifications.find({"tenant_id": "ACME"}))


# ------------------------------------------------------------------ request bodies


def test_communication_log_body_names():
    entity = build_communication_log_entity(MEMBER_ID, "Text Manager: Board meeting", "Hi", SMS_MESSAGE_TYPE)

    properties = unwrap_entity(entity)
    names = COMMUNICATION_LOG_PROPERTIES
    assert entity["EntityTypeName"] == COMMUNICATION_LOG_ENTITY
    assert properties[names["recipient_id"]] == MEMBER_ID
    assert properties[names["subject"]] == "Text Manager: Board meeting"
    assert properties[names["html"]] == "Hi"
    assert properties[names["message_type"]] == 1


def test_communication_log_message_type_wrapped():
    entity = build_communication_log_entity(MEMBER_ID, "Subject", "Hi", SMS_MESSAGE_TYPE)

    raw = {prop["Name"]: prop["Value"] for prop in entity["Properties"]["$values"]}

    assert raw[COMMUNICATION_LOG_PROPERTIES["message_type"]] == {"$type": "System.Int32", "$value": 1}
    assert list(raw[COMMUNICATION_LOG_PROPERTIES["message_type"]])[0] == "$type"


def test_activity_note_only_when_given():
    with_note = unwrap_entity(build_activity_entity(MEMBER_ID, TEXTMSG, SENT_AT, "Text Manager", NUMBER, "Hi"))
    without = unwrap_entity(build_activity_entity(MEMBER_ID, "TEXTUNSUB", SENT_AT, "Text Manager", NUMBER))

    assert with_note[ACTIVITY_PROPERTIES["note"]] == "Hi"
    assert ACTIVITY_PROPERTIES["note"] not in without


@pytest.mark.parametrize("body, expected", [
    ("Hello", "Hello"),
    ("a < b & c > d", "a &lt; b &amp; c &gt; d"),
    ("line one\nline two", "line one<br>line two"),
    ("line one\r\nline two", "line one<br>line two"),
    ('say "hi"', "say &quot;hi&quot;"),
])
def test_body_as_html(body, expected):
    assert body_as_html(body) == expected


# ------------------------------------------------------------------ the two writers


def test_interaction_writer_call(imis):
    text = SentText(member_id=MEMBER_ID, to=NUMBER, body=BODY, sent_at=SENT_AT, subject="Text Manager: Board")

    entry = WRITERS[INTERACTION].write(imis, text)

    assert entry.kind == INTERACTION
    assert entry.key == "CL1"
    assert imis.interactions == [{"key": "CL1", "recipient_id": MEMBER_ID, "subject": "Text Manager: Board",
                                  "html": body_as_html(BODY), "message_type": SMS_MESSAGE_TYPE}]


def test_activity_writer_call(imis):
    text = SentText(member_id=MEMBER_ID, to=NUMBER, body=BODY, sent_at=SENT_AT, subject="Text Manager: Board")

    entry = WRITERS[ACTIVITY].write(imis, text)

    assert entry.kind == ACTIVITY
    assert entry.key == "500"
    assert imis.activities == [{"seqn": "500", "party_id": MEMBER_ID, "activity_type": TEXTMSG,
                                "transaction_date": SENT_AT, "category": TEXT_MANAGER_CATEGORY, "uf_1": NUMBER,
                                "note": BODY}]


def test_activity_writer_finds_same_text(imis):
    text = SentText(member_id=MEMBER_ID, to=NUMBER, body=BODY, sent_at=SENT_AT, subject="S")
    WRITERS[ACTIVITY].write(imis, text)
    later = SentText(member_id=MEMBER_ID, to=NUMBER, body=BODY, sent_at=SENT_AT + timedelta(seconds=1), subject="S")
    other_number = SentText(member_id=MEMBER_ID, to="+12025550143", body=BODY, sent_at=SENT_AT, subject="S")

    assert WRITERS[ACTIVITY].find(imis, text).key == "500"
    assert WRITERS[ACTIVITY].find(imis, later) is None
    assert WRITERS[ACTIVITY].find(imis, other_number) is None


# ------------------------------------------------------------------ the setting


def test_tenant_default_is_interaction(tenant_factory):
    tenant = tenant_factory()

    assert tenant.imis_text_log == INTERACTION
    assert tenant.public_view()["imis_text_log"] == INTERACTION


def test_stored_tenant_without_setting_logs_interactions(runtime, tenant_factory):
    tenant_factory(cloud_id="OLD")
    runtime.db.tenants.update_one({"_id": "OLD"}, {"$unset": {"imis_text_log": ""}})

    assert runtime.tenants.get("OLD").imis_text_log == INTERACTION


@pytest.mark.parametrize("mode", TEXT_LOG_MODES)
def test_setting_accepts_mode(mode):
    assert schemas.SettingsIn().load({"imis_text_log": mode}) == {"imis_text_log": mode}


@pytest.mark.parametrize("value", ["Interaction", "activities", "", "none", 1, None, ["off"]])
def test_setting_rejects_value(value):
    with pytest.raises(ValidationError) as raised:
        schemas.SettingsIn().load({"imis_text_log": value})

    assert "imis_text_log" in raised.value.messages


def test_setting_error_lists_choices():
    with pytest.raises(ValidationError) as raised:
        schemas.SettingsIn().load({"imis_text_log": "sms"})

    assert raised.value.messages["imis_text_log"] == ["must be one of interaction, activity, off"]


def test_setting_saved_and_shown(runtime, tenant_factory):
    tenant_factory()

    updated = runtime.tenants.update("ACME", {"imis_text_log": OFF})

    assert updated.imis_text_log == OFF
    assert runtime.tenants.get("ACME").imis_text_log == OFF
    assert schemas.SettingsOut().dump(updated.public_view())["imis_text_log"] == OFF


def test_setting_in_openapi():
    spec = build_spec()["components"]["schemas"]

    assert spec["SettingsIn"]["properties"]["imis_text_log"]["enum"] == list(TEXT_LOG_MODES)
    assert "imis_text_log" in spec["SettingsOut"]["properties"]


# ------------------------------------------------------------------ writing a sent text


def test_interaction_written(runtime, writer, imis, sent_message):
    message_id = sent_message()

    writer.handle(delivery(sent_event(message_id)))

    assert len(imis.interactions) == 1
    assert imis.interactions[0]["recipient_id"] == MEMBER_ID
    assert imis.interactions[0]["subject"] == "Text Manager: Board meeting"
    assert imis.activities == []
    log = imis_log(runtime, message_id)
    assert log["status"] == "written"
    assert log["kind"] == INTERACTION
    assert log["key"] == "CL1"
    assert log["fallback"] is False
    assert log["written_at"].replace(tzinfo=timezone.utc) == runtime.clock.now()


def test_subject_without_campaign(runtime, writer, imis, sent_message):
    message_id = sent_message(campaign_id="gone")

    writer.handle(delivery(sent_event(message_id)))

    assert imis.interactions[0]["subject"] == "Text Manager"


def test_activity_written(runtime, writer, imis, sent_message):
    set_mode(runtime, ACTIVITY)
    message_id = sent_message()

    writer.handle(delivery(sent_event(message_id)))

    assert imis.interaction_calls == 0
    assert len(imis.activities) == 1
    activity = imis.activities[0]
    assert activity["activity_type"] == TEXTMSG
    assert activity["party_id"] == MEMBER_ID
    assert activity["uf_1"] == NUMBER
    assert activity["category"] == TEXT_MANAGER_CATEGORY
    assert activity["note"] == BODY
    assert activity["transaction_date"] == SENT_AT
    assert activity["transaction_date"].utcoffset() == timedelta(0)
    assert imis_log(runtime, message_id) | {"written_at": None} == {
        "status": "written", "kind": ACTIVITY, "key": "500", "fallback": False, "written_at": None}


def test_naive_sent_at_taken_as_utc(runtime, writer, imis, sent_message):
    set_mode(runtime, ACTIVITY)
    runtime.db.messages.insert_one({"_id": "r1:naive", "tenant_id": "ACME", "run_id": "r1", "campaign_id": "c1",
                                    "to": NUMBER, "member_id": MEMBER_ID, "body": BODY, "status": "sent",
                                    "sent_at": SENT_AT.replace(tzinfo=None)})

    writer.handle(delivery(sent_event("r1:naive")))

    assert imis.activities[0]["transaction_date"] == SENT_AT


def test_off_writes_nothing(runtime, writer, imis, sent_message):
    set_mode(runtime, OFF)
    message_id = sent_message()

    writer.handle(delivery(sent_event(message_id)))

    assert imis.interaction_calls == 0
    assert imis.activities == []
    assert imis_log(runtime, message_id)["status"] == "off"


# ------------------------------------------------------------------ idempotency


def test_event_twice_writes_once(runtime, writer, imis, sent_message):
    message_id = sent_message()

    writer.handle(delivery(sent_event(message_id)))
    writer.handle(delivery(sent_event(message_id), attempt=2, redelivered=True))
    writer.handle(delivery(sent_event(message_id)))

    assert len(imis.interactions) == 1
    assert imis.activities == []
    assert imis_log(runtime, message_id)["key"] == "CL1"


def test_activity_after_unknown_outcome_written_once(runtime, writer, imis, sent_message):
    """iMIS stored the row but the response was lost; the retry finds the row instead of writing another."""
    set_mode(runtime, ACTIVITY)
    message_id = sent_message()
    original = imis.create_activity

    def store_then_fail(**fields):
        original(**fields)
        raise ImisOutcomeUnknown("the connection dropped after the request was sent")

    imis.create_activity = store_then_fail
    with pytest.raises(Retry):
        writer.handle(delivery(sent_event(message_id)))
    imis.create_activity = original

    writer.handle(delivery(sent_event(message_id), attempt=2))

    assert len(imis.activities) == 1
    assert imis_log(runtime, message_id)["key"] == imis.activities[0]["seqn"]


def test_first_attempt_does_not_search(runtime, writer, imis, sent_message):
    set_mode(runtime, ACTIVITY)
    message_id = sent_message()
    imis.find_activities = lambda *args: pytest.fail("a first attempt searched the activities")

    writer.handle(delivery(sent_event(message_id)))

    assert len(imis.activities) == 1


def test_written_log_not_overwritten(runtime, writer, imis, sent_message):
    message_id = sent_message(imis_log={"status": "written", "kind": INTERACTION, "key": "CL9", "fallback": False})
    set_mode(runtime, OFF)

    writer.handle(delivery(sent_event(message_id)))

    assert imis_log(runtime, message_id)["key"] == "CL9"
    assert imis.interaction_calls == 0


# ------------------------------------------------------------------ fallback to TEXTMSG


@pytest.mark.parametrize("status", [404, 501])
def test_no_interactions_falls_back(runtime, writer, imis, sent_message, status):
    imis.interactions_status = status
    message_id = sent_message()

    writer.handle(delivery(sent_event(message_id)))

    assert len(imis.activities) == 1
    assert imis.activities[0]["activity_type"] == TEXTMSG
    log = imis_log(runtime, message_id)
    assert log["kind"] == ACTIVITY
    assert log["fallback"] is True
    assert runtime.tenants.get("ACME").imis_text_log == INTERACTION


def test_fallback_told_once(runtime, writer, imis, sent_message, caplog):
    imis.interactions_status = 404
    caplog.set_level("WARNING", logger="services.feedback.text_log")

    for number in ("+12025550142", "+12025550143", "+12025550144"):
        writer.handle(delivery(sent_event(sent_message(number))))

    assert len(notices(runtime)) == 1
    assert "TEXTMSG" in notices(runtime)[0]["subject"]
    assert notices(runtime)[0]["to"] == ["admin@acme.example"]
    warnings = [record for record in caplog.records if "does not take interactions" in record.getMessage()]
    assert len(warnings) == 1
    assert len(imis.activities) == 3


def test_fallback_skips_interactions_for_an_hour(runtime, writer, imis, sent_message):
    imis.interactions_status = 404
    writer.handle(delivery(sent_event(sent_message("+12025550142"))))
    writer.handle(delivery(sent_event(sent_message("+12025550143"))))
    assert imis.interaction_calls == 1

    imis.interactions_status = None
    runtime.clock.advance(NO_INTERACTIONS_RECHECK_S)
    message_id = sent_message("+12025550144")
    writer.handle(delivery(sent_event(message_id)))

    assert imis.interaction_calls == 2
    assert imis_log(runtime, message_id)["kind"] == INTERACTION


def test_fallback_found_after_unknown_outcome(runtime, writer, imis, sent_message):
    imis.interactions_status = 404
    message_id = sent_message()
    original = imis.create_activity

    def store_then_fail(**fields):
        original(**fields)
        raise ImisOutcomeUnknown("the connection dropped after the request was sent")

    imis.create_activity = store_then_fail
    with pytest.raises(Retry):
        writer.handle(delivery(sent_event(message_id)))
    imis.create_activity = original

    writer.handle(delivery(sent_event(message_id), attempt=2))

    assert len(imis.activities) == 1
    assert imis_log(runtime, message_id)["fallback"] is True


# ------------------------------------------------------------------ failures


def test_unavailable_retried_without_record(runtime, writer, imis, sent_message):
    message_id = sent_message()
    imis.errors.append(ImisUnavailable("iMIS is down"))

    with pytest.raises(Retry):
        writer.handle(delivery(sent_event(message_id)))

    assert imis_log(runtime, message_id) is None
    assert notices(runtime) == []


def test_rejected_entry_recorded(runtime, writer, imis, sent_message):
    set_mode(runtime, ACTIVITY)
    message_id = sent_message()
    imis.errors.append(ImisRequestError("iMIS rejected the TEXTMSG activity: Activity type 'TEXTMSG' does not exist."))

    with pytest.raises(Reject):
        writer.handle(delivery(sent_event(message_id)))

    log = imis_log(runtime, message_id)
    assert log["status"] == "failed"
    assert "does not exist" in log["error"]
    assert len(notices(runtime)) == 1
    assert "not being logged" in notices(runtime)[0]["subject"]


def test_unknown_message_rejected(runtime, writer, imis, sent_message):
    sent_message()

    with pytest.raises(Reject):
        writer.handle(delivery(sent_event(runtime.message_ids.build("r1", "+19995550100"))))

    assert imis.interaction_calls == 0


def test_other_tenants_message_rejected(runtime, writer, imis, sent_message, tenant_factory):
    tenant_factory(cloud_id="OTHER")
    message_id = sent_message(tenant_id="OTHER")

    with pytest.raises(Reject):
        writer.handle(delivery(sent_event(message_id, tenant_id="ACME")))

    assert imis.interaction_calls == 0
    assert imis_log(runtime, message_id) is None


def test_unsent_message_rejected(runtime, writer, imis, sent_message):
    message_id = sent_message(status="opted_out", sent_at=None)

    with pytest.raises(Reject):
        writer.handle(delivery(sent_event(message_id)))

    assert imis.interaction_calls == 0


@pytest.mark.parametrize("message_id", [None, "", 7])
def test_event_without_message_id_rejected(writer, imis, sent_message, message_id):
    sent_message()

    with pytest.raises(Reject):
        writer.handle(delivery(dict(sent_event("x"), message_id=message_id)))

    assert imis.interaction_calls == 0


# ------------------------------------------------------------------ the sender's event


@pytest.fixture
def sender_world(clock):
    from tests.sender_support import SenderWorld

    world = SenderWorld(clock)
    yield world
    world.close()


def test_sender_publishes_sent_event(sender_world):
    from tests.sender_support import delivery as job_delivery

    world = sender_world
    broker = world.broker()
    job = world.run(world.tenant(), 1)[0]

    world.sender(broker).handle(job_delivery(job))

    events = world.take_imis_jobs()
    assert len(events) == 1
    assert events[0]["kind"] == "sent"
    assert events[0]["message_id"] == job["message_id"]
    assert events[0]["tenant_id"] == job["tenant_id"]
    assert events[0]["member_ids"] == [job["member_id"]]
    assert datetime.fromisoformat(events[0]["sent_at"]) == world.message(job)["sent_at"]


def test_sender_publishes_once_per_text(sender_world):
    from tests.sender_support import delivery as job_delivery

    world = sender_world
    broker = world.broker()
    job = world.run(world.tenant(), 1)[0]
    sender = world.sender(broker)

    sender.handle(job_delivery(job))
    sender.handle(job_delivery(job, attempt=2))

    assert len(world.take_imis_jobs()) == 1


def test_failed_publish_not_sent_again(sender_world):
    from tests.sender_support import delivery as job_delivery

    world = sender_world
    broker = world.broker()
    job = world.run(world.tenant(), 1)[0]
    publish = broker.publish

    def fail_imis(queue, body, **options):
        if queue in (QUEUE_IMIS, tenant_imis_queue("ACME")):
            raise PublishError("RabbitMQ is unreachable")
        publish(queue, body, **options)

    broker.publish = fail_imis
    world.sender(broker).handle(job_delivery(job))
    broker.publish = publish
    world.sender(broker).handle(job_delivery(job, attempt=2))

    message = world.message(job)
    assert world.twilio.creates_to(job["to"]) == 1
    assert message["status"] == "sent"
    assert message["imis_log"]["status"] == "missing"
    assert "RabbitMQ is unreachable" in message["imis_log"]["reason"]
    assert world.take_imis_jobs() == []
