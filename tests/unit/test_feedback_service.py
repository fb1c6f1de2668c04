"""Feedback: status callbacks, STOP and START replies, and TEXTUNSUB writes to iMIS."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from libs.common.broker import QUEUE_IMIS, Delivery
from libs.common.imis import ImisUnavailable
from libs.common.imis_queue import tenant_imis_queue
from libs.common.twilio_client import CreatedMessage
from services.feedback.service import FeedbackService, ImisWriter, keyword_of
from services.sender.pacing import Pacer
from services.sender.service import Sender

# Carla Diaz, whose opt-out Twilio reports only in a status callback (under a Messaging Service).
CARLA_NUMBER = "+12025550142"
CARLA_ID = "10045"
MESSAGING_SERVICE_SID = "MG" + "5c" * 16
SID = "SM" + "ab" * 16


class FakeImis:
    """In-memory stand-in for an iMIS session: activities with SEQNs."""

    def __init__(self):
        self.activities: dict[str, dict] = {}
        self.created: list[dict] = []
        self.deleted: list[str] = []
        self.unavailable = False
        self._next_seqn = 100

    def create_activity(self, *, party_id, activity_type, transaction_date, category, uf_1) -> str:
        if self.unavailable:
            raise ImisUnavailable("iMIS is down")
        self._next_seqn += 1
        seqn = str(self._next_seqn)
        activity = {"seqn": seqn, "party_id": party_id, "activity_type": activity_type,
                    "transaction_date": transaction_date, "category": category, "uf_1": uf_1}
        self.activities[seqn] = activity
        self.created.append(activity)
        return seqn

    def find_activities(self, party_id, activity_type) -> list[dict]:
        return [dict(a) for a in self.activities.values()
                if a["party_id"] == party_id and a["activity_type"] == activity_type]

    def delete_activity(self, seqn) -> bool:
        self.deleted.append(seqn)
        return self.activities.pop(seqn, None) is not None


@pytest.fixture
def tenant(tenant_factory):
    return tenant_factory()


@pytest.fixture
def feedback(runtime, tenant) -> FeedbackService:
    return FeedbackService(runtime.db, broker=runtime.broker, tenants=runtime.tenants, clock=runtime.clock)


@pytest.fixture
def imis() -> FakeImis:
    return FakeImis()


@pytest.fixture
def writer(runtime, tenant, imis) -> ImisWriter:
    return ImisWriter(runtime.db, tenants=runtime.tenants, imis_factory=lambda _tenant: imis, clock=runtime.clock)


@pytest.fixture
def run(runtime, tenant) -> dict:
    runtime.db.campaigns.insert_one({"_id": "c1", "tenant_id": "ACME", "status": "sending", "current_run_id": "r1"})
    document = {"_id": "r1", "tenant_id": "ACME", "campaign_id": "c1", "status": "sending", "expanded": True,
                "counts": {"recipients": 1, "sent": 0, "delivered": 0, "failed": 0, "opted_out": 0, "skipped": 0,
                           "done": 0}}
    runtime.db.runs.insert_one(document)
    return document


def add_message(runtime, number: str = CARLA_NUMBER, member_id: str = CARLA_ID, **fields) -> str:
    message_id = runtime.message_ids.build("r1", number)
    document = {"_id": message_id, "tenant_id": "ACME", "run_id": "r1", "campaign_id": "c1", "to": number,
                "member_id": member_id, "status": "sent", "sid": SID, "sent_at": runtime.clock.now()}
    document.update(fields)
    runtime.db.messages.insert_one(document)
    return message_id


def callback(status: str, **extra) -> dict:
    return {"MessageSid": SID, "MessageStatus": status, "SmsStatus": status, "To": CARLA_NUMBER,
            "AccountSid": "AC" + "7e" * 16, **extra}


def imis_jobs(broker) -> list[dict]:
    """Return and remove the jobs in ACME's partition of `tm.imis`, after checking that `tm.imis` itself has none."""
    assert broker.server.take(QUEUE_IMIS, 100) == []
    partition = tenant_imis_queue("ACME")
    broker.server.declare_partition(broker.queue_prefix, partition, broker.retry_delays_s)
    return [json.loads(message.payload) for message in broker.server.take(partition, 100)]


def delivery(body: dict, queue: str = QUEUE_IMIS) -> Delivery:
    return Delivery(queue=queue, body=body, headers={}, attempt=1, redelivered=False, message_id=None)


def counts_of(runtime) -> dict:
    return runtime.db.runs.find_one({"_id": "r1"})["counts"]


# ------------------------------------------------------------------ callback before the SID is stored


class CallbackFirstTwilio:
    """A Twilio whose `delivered` callback reaches feedback before the create call returns."""

    def __init__(self, feedback: FeedbackService):
        self._feedback = feedback
        self.creates: list[dict] = []

    def create_message(self, **fields) -> CreatedMessage:
        self.creates.append(fields)
        message_id = fields["status_callback"].rsplit("/", 1)[1]
        self._feedback.on_status_callback("ACME", message_id, callback("delivered", To=fields["to"]))
        return CreatedMessage(sid=SID, status="queued", num_segments=1, date_created=None)


def test_callback_before_sid_stored(runtime, feedback, run):
    twilio = CallbackFirstTwilio(feedback)
    sender = Sender(runtime.db, broker=runtime.broker, tenants=runtime.tenants,
                    twilio_factory=lambda sid, token: twilio, pacer=Pacer(runtime.db, runtime.clock),
                    notifier=runtime.notifier, clock=runtime.clock, public_callback_url="http://feedback.invalid")
    message_id = runtime.message_ids.build("r1", CARLA_NUMBER)
    job = {"tenant_id": "ACME", "campaign_id": "c1", "run_id": "r1", "message_id": message_id,
           "member_id": CARLA_ID, "to": CARLA_NUMBER, "body": "Hello Carla", "segments": 1, "encoding": "GSM-7"}

    sender.handle(delivery(job, queue="tm.jobs"))

    message = runtime.db.messages.find_one({"_id": message_id})
    assert len(twilio.creates) == 1
    assert message["status"] == "delivered"
    assert message["sid"] == SID
    counts = counts_of(runtime)
    assert counts["sent"] == 1
    assert counts["delivered"] == 1
    assert counts["done"] == 1
    assert runtime.db.runs.find_one({"_id": "r1"})["status"] == "completed"


def test_callback_for_unknown_message_kept(runtime, feedback, run):
    unknown = runtime.message_ids.build("r1", "+12025550199")
    feedback.on_status_callback("ACME", unknown, callback("delivered"))

    assert runtime.db.callbacks.count_documents({"message_id": unknown}) == 1
    assert runtime.db.messages.count_documents({}) == 0


# ------------------------------------------------------------------ callbacks out of order and repeated


def test_out_of_order_callbacks(runtime, feedback, run):
    message_id = add_message(runtime)

    for status in ("delivered", "sent", "queued", "delivered"):
        feedback.on_status_callback("ACME", message_id, callback(status))

    assert runtime.db.messages.find_one({"_id": message_id})["status"] == "delivered"
    kept = [document["form"]["MessageStatus"] for document in runtime.db.callbacks.find({"message_id": message_id})]
    assert kept == ["delivered", "sent", "queued", "delivered"]
    counts = counts_of(runtime)
    assert counts["delivered"] == 1
    assert counts["done"] == 1


def test_callback_stores_sid_when_missing(runtime, feedback, run):
    message_id = add_message(runtime, status="sending", sid=None)
    runtime.db.messages.update_one({"_id": message_id}, {"$unset": {"sid": ""}})

    feedback.on_status_callback("ACME", message_id, callback("sent"))

    message = runtime.db.messages.find_one({"_id": message_id})
    assert message["sid"] == SID
    assert message["status"] == "sent"


# ------------------------------------------------------------------ opt-out in a status callback


def test_opt_out_in_callback(runtime, feedback, run):
    message_id = add_message(runtime, status="sent")

    feedback.on_status_callback("ACME", message_id, callback("failed", ErrorCode="21610",
                                                             MessagingServiceSid=MESSAGING_SERVICE_SID))

    message = runtime.db.messages.find_one({"_id": message_id})
    assert message["status"] == "opted_out"
    optout = runtime.db.optouts.find_one({"_id": f"ACME:{CARLA_NUMBER}"})
    assert optout["member_ids"] == [CARLA_ID]
    assert optout["number"] == CARLA_NUMBER
    assert counts_of(runtime)["opted_out"] == 1
    assert counts_of(runtime)["failed"] == 0


def test_opt_out_queues_textunsub(runtime, feedback, run):
    message_id = add_message(runtime, status="sent")
    sent_at = runtime.db.messages.find_one({"_id": message_id})["sent_at"]

    feedback.on_status_callback("ACME", message_id, callback("failed", ErrorCode="21610",
                                                             MessagingServiceSid=MESSAGING_SERVICE_SID))

    jobs = imis_jobs(runtime.broker)
    assert len(jobs) == 1
    assert jobs[0]["kind"] == "textunsub"
    assert jobs[0]["number"] == CARLA_NUMBER
    assert jobs[0]["member_ids"] == [CARLA_ID]
    assert datetime.fromisoformat(jobs[0]["sent_at"]) == sent_at


def test_repeated_opt_out_callback(runtime, feedback, run):
    message_id = add_message(runtime, status="sent")
    form = callback("failed", ErrorCode="21610", MessagingServiceSid=MESSAGING_SERVICE_SID)

    feedback.on_status_callback("ACME", message_id, form)
    feedback.on_status_callback("ACME", message_id, form)

    assert len(imis_jobs(runtime.broker)) == 1
    assert counts_of(runtime)["opted_out"] == 1


def test_opt_out_writes_textunsub(runtime, feedback, writer, imis, run):
    message_id = add_message(runtime, status="sent")
    feedback.on_status_callback("ACME", message_id, callback("failed", ErrorCode="21610",
                                                             MessagingServiceSid=MESSAGING_SERVICE_SID))

    writer.handle(delivery(imis_jobs(runtime.broker)[0]))

    assert len(imis.created) == 1
    activity = imis.created[0]
    assert activity["activity_type"] == "TEXTUNSUB"
    assert activity["party_id"] == CARLA_ID
    assert activity["category"] == "Text Manager"
    assert activity["uf_1"] == CARLA_NUMBER
    assert activity["transaction_date"] == runtime.db.messages.find_one({"_id": message_id})["sent_at"]


def test_undelivered_is_not_opt_out(runtime, feedback, run):
    message_id = add_message(runtime, status="sent")

    feedback.on_status_callback("ACME", message_id, callback("undelivered", ErrorCode="30003"))

    assert runtime.db.messages.find_one({"_id": message_id})["status"] == "undelivered"
    assert runtime.db.optouts.count_documents({}) == 0
    assert imis_jobs(runtime.broker) == []


# ------------------------------------------------------------------ keywords


@pytest.mark.parametrize("body, keyword", [
    ("STOP", "STOP"),
    ("stop", "STOP"),
    ("  Stop  ", "STOP"),
    ("\tstop\n", "STOP"),
    ("StopAll", "STOP"),
    ("unsubscribe", "STOP"),
    ("cancel", "STOP"),
    ("END", "STOP"),
    ("quit", "STOP"),
    ("revoke", "STOP"),
    ("optout", "STOP"),
    ("START", "START"),
    (" start ", "START"),
    ("Yes", "START"),
    ("unstop", "START"),
    ("stop please", None),
    ("please stop", None),
    ("STOP!", None),
    ("start now", None),
    ("", None),
    ("Thanks", None),
])
def test_keyword_of(body, keyword):
    assert keyword_of(body, None) == keyword


def test_opt_out_type_wins():
    assert keyword_of("arrête", "STOP") == "STOP"
    assert keyword_of("go", "START") == "START"


def test_inbound_stop_records_opt_out(runtime, feedback, run):
    add_message(runtime, status="delivered")

    keyword = feedback.on_inbound("ACME", {"From": CARLA_NUMBER, "To": "+18885550199", "Body": " stop "})

    assert keyword == "STOP"
    optout = runtime.db.optouts.find_one({"_id": f"ACME:{CARLA_NUMBER}"})
    assert optout["member_ids"] == [CARLA_ID]
    jobs = imis_jobs(runtime.broker)
    assert [job["kind"] for job in jobs] == ["textunsub"]


@pytest.mark.parametrize("sent_from", ["2025550142", "(202) 555-0142", " +12025550142 "],
                         ids=["national", "formatted", "spaces"])
def test_inbound_stop_from_national_number(runtime, feedback, run, sent_from):
    add_message(runtime, status="delivered")

    feedback.on_inbound("ACME", {"From": sent_from, "To": "+18885550199", "Body": "STOP"})

    optout = runtime.db.optouts.find_one({"_id": f"ACME:{CARLA_NUMBER}"})
    assert optout["member_ids"] == [CARLA_ID]
    assert runtime.db.optouts.count_documents({}) == 1


def test_inbound_sentence_ignored(runtime, feedback, run):
    add_message(runtime, status="delivered")

    keyword = feedback.on_inbound("ACME", {"From": CARLA_NUMBER, "To": "+18885550199", "Body": "stop please"})

    assert keyword is None
    assert runtime.db.optouts.count_documents({}) == 0
    assert imis_jobs(runtime.broker) == []


def test_inbound_body_not_stored(runtime, feedback, run):
    feedback.on_inbound("ACME", {"From": CARLA_NUMBER, "To": "+18885550199", "Body": "my private reply"})

    stored = runtime.db.callbacks.find_one({"kind": "inbound"})
    assert "Body" not in stored["form"]
    assert stored["form"]["From"] == CARLA_NUMBER


def test_start_deletes_textunsub_by_seqn(runtime, feedback, writer, imis, run):
    add_message(runtime, status="delivered")
    unrelated = imis.create_activity(party_id=CARLA_ID, activity_type="TEXTUNSUB", category="Text Manager",
                                     transaction_date=datetime(2026, 1, 5, tzinfo=timezone.utc), uf_1="+13125550100")
    feedback.on_inbound("ACME", {"From": CARLA_NUMBER, "To": "+18885550199", "Body": "STOP"})
    writer.handle(delivery(imis_jobs(runtime.broker)[0]))
    written = imis.created[-1]["seqn"]

    keyword = feedback.on_inbound("ACME", {"From": CARLA_NUMBER, "To": "+18885550199", "Body": "Start"})
    jobs = imis_jobs(runtime.broker)
    writer.handle(delivery(jobs[0]))

    assert keyword == "START"
    assert [job["kind"] for job in jobs] == ["resubscribe"]
    assert imis.deleted == [written]
    assert sorted(imis.activities) == [unrelated]
    assert runtime.db.optouts.count_documents({}) == 0


def test_start_without_opt_out(runtime, feedback, run):
    keyword = feedback.on_inbound("ACME", {"From": CARLA_NUMBER, "To": "+18885550199", "Body": "START"})

    assert keyword == "START"
    assert imis_jobs(runtime.broker) == []


# ------------------------------------------------------------------ ImisWriter


def textunsub_job(runtime, member_ids=(CARLA_ID,)) -> dict:
    runtime.db.optouts.insert_one({"_id": f"ACME:{CARLA_NUMBER}", "tenant_id": "ACME", "number": CARLA_NUMBER,
                                   "member_ids": list(member_ids)})
    return {"kind": "textunsub", "tenant_id": "ACME", "number": CARLA_NUMBER, "member_ids": list(member_ids),
            "sent_at": "2026-03-02T15:04:05+00:00", "message_id": runtime.message_ids.build("r1", CARLA_NUMBER)}


def test_writer_twice_one_activity(runtime, writer, imis):
    job = textunsub_job(runtime)

    writer.handle(delivery(job))
    writer.handle(delivery(job))

    assert len(imis.created) == 1
    assert runtime.db.optouts.find_one({"_id": f"ACME:{CARLA_NUMBER}"})["activities"] == [
        {"member_id": CARLA_ID, "seqn": imis.created[0]["seqn"]}]


def test_writer_after_crash_one_activity(runtime, writer, imis):
    """The activity was created, then the writer died before recording its SEQN."""
    job = textunsub_job(runtime)
    writer.handle(delivery(job))
    runtime.db.optouts.update_one({"_id": f"ACME:{CARLA_NUMBER}"}, {"$unset": {"activities": ""}})

    writer.handle(delivery(job))

    assert len(imis.created) == 1
    assert runtime.db.optouts.find_one({"_id": f"ACME:{CARLA_NUMBER}"})["activities"] == [
        {"member_id": CARLA_ID, "seqn": imis.created[0]["seqn"]}]


def test_writer_one_activity_per_member(runtime, writer, imis):
    writer.handle(delivery(textunsub_job(runtime, member_ids=(CARLA_ID, "10188"))))

    assert sorted(activity["party_id"] for activity in imis.created) == sorted([CARLA_ID, "10188"])


def test_writer_skips_resubscribed(runtime, writer, imis):
    job = textunsub_job(runtime)
    runtime.db.optouts.delete_one({"_id": f"ACME:{CARLA_NUMBER}"})

    writer.handle(delivery(job))

    assert imis.created == []


def test_writer_retries_when_imis_down(runtime, writer, imis):
    from libs.common.broker import Retry

    imis.unavailable = True

    with pytest.raises(Retry):
        writer.handle(delivery(textunsub_job(runtime)))


@pytest.mark.parametrize("body", [
    {"kind": "greeting", "tenant_id": "ACME"},
    {"tenant_id": "ACME"},
    {"kind": "textunsub", "tenant_id": "NO-SUCH-TENANT", "number": CARLA_NUMBER, "member_ids": [CARLA_ID]},
])
def test_writer_rejects_invalid_job(writer, body):
    from libs.common.broker import Reject

    with pytest.raises(Reject):
        writer.handle(delivery(body))
