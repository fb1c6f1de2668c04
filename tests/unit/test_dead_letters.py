"""Dead-letter handler: every text, run and iMIS write a work queue gave up on is settled or kept."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from pymongo.errors import AutoReconnect

from libs.common.broker import (
    ATTEMPT_HEADER, DEAD_ATTEMPT_HEADER, DEATH_REASON_HEADER, ORIGINAL_QUEUE_HEADER, QUEUE_DEAD, QUEUE_IMIS,
    QUEUE_JOBS, QUEUE_RUNS, Delivery, Retry, tenant_jobs_queue,
)
from services.scheduler.dead_letters import (
    MAX_IMIS_NOTICES_PER_HOUR, MAX_TRIES, DeadLetterHandler, read_dead_letter,
)
from tests.broker_support import ConsumerThread
from tests.sender_fixtures import clock, tenant, world  # noqa: F401 (fixtures)
from tests.sender_support import SenderWorld, unavailable

STORE_ERROR = "AutoReconnect: the store did not respond"
GAVE_UP = f"gave up after 5 attempts: {STORE_ERROR}"


class Pauses:
    """Records the pauses the handler takes before a dead letter goes back to the queue."""

    def __init__(self):
        self.seconds: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


@pytest.fixture
def pauses() -> Pauses:
    return Pauses()


@pytest.fixture
def handler(world, pauses) -> DeadLetterHandler:
    return build_handler(world, pauses=pauses)


def build_handler(world: SenderWorld, *, tenants=None, pauses=None) -> DeadLetterHandler:
    return DeadLetterHandler(world.db, broker=world.broker(), tenants=tenants or world.tenants,
                             twilio_factory=lambda sid, token: world.twilio, notifier=world.notifier,
                             clock=world.clock, pause=pauses or (lambda seconds: None))


def dead(body: dict | bytes, queue: str | None, *, reason: str = GAVE_UP, attempts: int = 5, tries: int = 1,
         message_id: str | None = None) -> Delivery:
    """Return the delivery from `tm.dead` of a message that died in `queue` (None: no origin header)."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {ATTEMPT_HEADER: attempts, DEATH_REASON_HEADER: reason}
    if queue is not None:
        headers[ORIGINAL_QUEUE_HEADER] = queue
    if tries > 1:
        headers[DEAD_ATTEMPT_HEADER] = tries
    return Delivery(queue=QUEUE_DEAD, body=_decoded(payload), headers=headers, attempt=tries,
                    redelivered=False, message_id=message_id, payload=payload)


def _decoded(payload: bytes) -> dict:
    """Return the body as the broker hands it to a dead-queue handler: {} unless a JSON object."""
    try:
        body = json.loads(payload)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def dead_job(job: dict, **options) -> Delivery:
    return dead(job, tenant_jobs_queue(job["tenant_id"]), message_id=job["message_id"], **options)


def claim(world: SenderWorld, job: dict, *, call_started: bool, lease_left_s: float = -1.0) -> None:
    """Store the message as a sender leaves it after a claim, with its lease ending in lease_left_s."""
    now = world.clock.now()
    document = {key: job[key] for key in job if key != "message_id"}
    document.update(_id=job["message_id"], status="sending", claim_token="token-1", attempts=5,
                    claim_until=now + timedelta(seconds=lease_left_s), claimed_at=now - timedelta(seconds=60))
    if call_started:
        document.update(call_started_at=now - timedelta(seconds=50), first_call_at=now - timedelta(seconds=50))
    world.db.messages.insert_one(document)


def counts(world: SenderWorld, job: dict) -> dict:
    return world.run_document(job["run_id"])["counts"]


def kept(world: SenderWorld) -> list[dict]:
    return list(world.db.dead_letters.find({}))


# ------------------------------------------------------------------ jobs


def test_unclaimed_job_fails_text(world, tenant, handler):
    job = world.run(tenant, 1)[0]

    handler.handle(dead_job(job))

    message = world.message(job)
    assert message["status"] == "failed"
    assert message["reason"] == GAVE_UP
    assert message["tenant_id"] == tenant.cloud_id
    assert message["to"] == job["to"]


def test_unclaimed_job_completes_run(world, tenant, handler):
    job = world.run(tenant, 1)[0]

    handler.handle(dead_job(job))

    run = world.run_document(job["run_id"])
    assert run["counts"]["failed"] == 1
    assert run["counts"]["done"] == 1
    assert run["status"] == "completed"


def test_run_waits_for_other_texts(world, tenant, handler):
    jobs = world.run(tenant, 2)

    handler.handle(dead_job(jobs[0]))

    run = world.run_document(jobs[0]["run_id"])
    assert run["counts"]["done"] == 1
    assert run["status"] == "sending"


def test_claim_without_call_fails(world, tenant, handler):
    job = world.run(tenant, 1)[0]
    claim(world, job, call_started=False)

    handler.handle(dead_job(job))

    message = world.message(job)
    assert message["status"] == "failed"
    assert message["reason"] == GAVE_UP
    assert "claim_token" not in message
    assert "claim_until" not in message
    assert world.twilio.calls == 0
    assert counts(world, job)["failed"] == 1


def test_text_in_twilio_recorded_sent(world, tenant, handler):
    """The call that may have reached Twilio did: the text is sent, not failed."""
    job = world.run(tenant, 1)[0]
    world.clock.advance(-50)
    created = world.twilio.create_message(to=job["to"], from_=tenant.sender_number, body=job["body"])
    world.clock.advance(50)
    claim(world, job, call_started=True)

    handler.handle(dead_job(job))

    message = world.message(job)
    assert message["status"] == "sent"
    assert message["sid"] == created.sid
    assert "claim_token" not in message
    assert counts(world, job)["sent"] == 1
    assert counts(world, job)["failed"] == 0
    assert counts(world, job)["done"] == 0
    assert [event["message_id"] for event in world.take_imis_jobs()] == [job["message_id"]]


def test_text_not_in_twilio_fails(world, tenant, handler):
    job = world.run(tenant, 1)[0]
    world.twilio.create_message(to=job["to"], from_=tenant.sender_number, body="Another text")
    claim(world, job, call_started=True)

    handler.handle(dead_job(job))

    assert world.message(job)["status"] == "failed"
    assert counts(world, job)["sent"] == 0
    assert counts(world, job)["failed"] == 1


def test_sender_lost_response_reconciled(world, tenant, handler):
    """A sender's call reached Twilio but its response was lost; the job then died."""
    job = world.run(tenant, 1)[0]

    def lose_answer(_create):
        world.twilio.after_create = None
        raise unavailable()

    world.twilio.after_create = lose_answer
    with pytest.raises(Retry):
        world.sender(world.broker()).handle(Delivery(queue=tenant_jobs_queue("ACME"), body=job, headers={},
                                                     attempt=1, redelivered=False, message_id=job["message_id"]))
    world.clock.advance(61)

    handler.handle(dead_job(job))

    assert world.message(job)["status"] == "sent"
    assert world.message(job)["sid"] == world.twilio.creates[0].sid
    assert world.twilio.creates_to(job["to"]) == 1


def test_held_claim_comes_back(world, tenant, handler, pauses):
    job = world.run(tenant, 1)[0]
    claim(world, job, call_started=True, lease_left_s=30)

    with pytest.raises(Retry, match="claimed by a sender"):
        handler.handle(dead_job(job))

    assert world.message(job)["status"] == "sending"
    assert pauses.seconds == [30.0]
    assert kept(world) == []


def test_twilio_list_down_comes_back(world, tenant, handler):
    job = world.run(tenant, 1)[0]
    claim(world, job, call_started=True)
    world.twilio.list_error = unavailable()

    with pytest.raises(Retry, match="message list could not be read"):
        handler.handle(dead_job(job))

    assert world.message(job)["status"] == "sending"


def test_twilio_list_down_last_try_fails(world, tenant, handler):
    job = world.run(tenant, 1)[0]
    claim(world, job, call_started=True)
    world.twilio.list_error = unavailable()

    handler.handle(dead_job(job, tries=MAX_TRIES))

    message = world.message(job)
    assert message["status"] == "failed"
    assert message["reason"].startswith(GAVE_UP)
    assert message["reason"].endswith("so the text may have been sent")
    assert counts(world, job)["done"] == 1


def test_retrying_text_fails(world, tenant, handler):
    job = world.run(tenant, 1)[0]
    world.db.messages.insert_one({"_id": job["message_id"], "tenant_id": tenant.cloud_id, "run_id": job["run_id"],
                                  "status": "retrying", "job": job})

    handler.handle(dead_job(job))

    assert world.message(job)["status"] == "failed"
    assert counts(world, job)["failed"] == 1


@pytest.mark.parametrize("status", ["sent", "delivered", "undelivered", "opted_out", "cancelled", "paused",
                                    "deferred"])
def test_text_past_claim_unchanged(world, tenant, handler, status):
    job = world.run(tenant, 1)[0]
    world.db.messages.insert_one({"_id": job["message_id"], "tenant_id": tenant.cloud_id, "run_id": job["run_id"],
                                  "status": status})

    handler.handle(dead_job(job))

    assert world.message(job)["status"] == status
    assert counts(world, job)["done"] == 0
    assert kept(world) == []


def test_same_dead_job_twice(world, tenant, handler):
    job = world.run(tenant, 1)[0]
    handler.handle(dead_job(job))
    message, run = world.message(job), world.run_document(job["run_id"])

    handler.handle(dead_job(job))

    assert world.message(job) == message
    assert world.run_document(job["run_id"]) == run


def test_reason_for_rejected_job(world, tenant, handler):
    job = world.run(tenant, 1)[0]

    handler.handle(dead_job(job, reason="job has an invalid segment count 0", attempts=1))

    assert world.message(job)["reason"] == "gave up after 1 attempt: job has an invalid segment count 0"


def test_job_from_shared_queue(world, tenant, handler):
    job = world.run(tenant, 1)[0]

    handler.handle(dead(job, QUEUE_JOBS, message_id=job["message_id"]))

    assert world.message(job)["status"] == "failed"


def test_other_tenants_text_untouched(world, tenant, handler):
    """A job naming tenant BETA, dead in ACME's queue, reaches no document of either tenant."""
    world.tenant("BETA")
    job = world.run(tenant, 1)[0]
    forged = dict(job, tenant_id="BETA")

    handler.handle(dead(forged, tenant_jobs_queue("ACME"), message_id=job["message_id"]))

    assert world.message(job) is None
    assert counts(world, job)["done"] == 0
    assert "another tenant's queue" in kept(world)[0]["kept_because"]


def test_run_of_other_tenant_untouched(world, tenant, handler):
    beta = world.tenant("BETA")
    job = world.run(beta, 1)[0]
    forged = dict(job, tenant_id="ACME")

    handler.handle(dead(forged, tenant_jobs_queue("ACME"), message_id=job["message_id"]))

    assert world.message(job) is None
    assert counts(world, job)["done"] == 0
    assert kept(world)[0]["tenant_id"] == "ACME"


# ------------------------------------------------------------------ a job driven to the dead queue


def test_store_errors_end_text_failed(world, tenant, clock):
    """A sender fails after each claim until the job dies; the handler then ends the text and the run."""
    world.max_attempts = 3
    job = world.run(tenant, 1)[0]
    broker = world.broker()

    def store_fails(step: str) -> None:
        if step == "claimed":
            raise AutoReconnect("the store did not respond")

    sender = world.sender(broker, checkpoint=store_fails, lease_s=0.5)
    handler = build_handler(world, pauses=clock.sleep)
    world.publish(broker, [job])

    with ConsumerThread(broker, tenant_jobs_queue("ACME"), sender.handle), \
            ConsumerThread(broker, QUEUE_DEAD, handler.handle):
        deadline = time.monotonic() + 10
        while world.run_document(job["run_id"])["status"] != "completed":
            assert time.monotonic() < deadline, f"the text is still {world.message(job)['status']}"
            clock.advance(2)
            time.sleep(0.02)

    message = world.message(job)
    assert message["status"] == "failed"
    assert message["reason"] == f"gave up after 3 attempts: {STORE_ERROR}"
    assert counts(world, job)["failed"] == 1
    assert world.twilio.calls == 0
    assert broker.queue_depth(QUEUE_DEAD) == 0


# ------------------------------------------------------------------ runs


def add_run(world: SenderWorld, status: str, **fields) -> dict:
    run_id = f"run-{status}"
    campaign_id = f"campaign-{status}"
    world.db.campaigns.insert_one({"_id": campaign_id, "tenant_id": "ACME", "name": "Board meeting",
                                   "email": "staff@example.org", "status": "sending", "current_run_id": run_id})
    run = {"_id": run_id, "tenant_id": "ACME", "campaign_id": campaign_id, "status": status, "expanded": False,
           "counts": {"recipients": 0, "done": 0}, **fields}
    world.db.runs.insert_one(run)
    return run


def dead_run(run: dict, **options) -> Delivery:
    body = {"tenant_id": run["tenant_id"], "campaign_id": run["campaign_id"], "run_id": run["_id"]}
    return dead(body, QUEUE_RUNS, message_id=run["_id"], **options)


def run_notices(world: SenderWorld) -> list[dict]:
    return [notice for notice in world.db.notifications.find({}) if ":run-failed:" in notice["_id"]]


@pytest.mark.parametrize("status", ["publishing", "queued", "expanding", "paused"])
def test_dead_run_fails(world, tenant, handler, status):
    run = add_run(world, status)

    handler.handle(dead_run(run))

    stored = world.db.runs.find_one({"_id": run["_id"]})
    assert stored["status"] == "failed"
    assert stored["error"] == (f"Text Manager gave up preparing the texts after 5 attempts ({STORE_ERROR}). "
                               "Send the campaign again; if it fails again, contact support.")
    campaign = world.db.campaigns.find_one({"_id": run["campaign_id"]})
    assert campaign["status"] == "failed"
    assert campaign["error"] == stored["error"]


def test_dead_run_sends_notice(world, tenant, handler):
    run = add_run(world, "expanding")

    handler.handle(dead_run(run))

    [notice] = run_notices(world)
    assert notice["tenant_id"] == "ACME"
    assert notice["to"] == ["admin@acme.example", "staff@example.org"]
    assert notice["subject"] == "Text Manager could not send the campaign 'Board meeting'"
    assert notice["text"].startswith("Text Manager gave up preparing the texts after 5 attempts")


def test_same_dead_run_twice(world, tenant, handler):
    run = add_run(world, "queued")
    handler.handle(dead_run(run))
    stored, campaign = world.db.runs.find_one({"_id": run["_id"]}), world.db.campaigns.find_one({})

    handler.handle(dead_run(run))

    assert world.db.runs.find_one({"_id": run["_id"]}) == stored
    assert world.db.campaigns.find_one({}) == campaign
    assert len(run_notices(world)) == 1


@pytest.mark.parametrize("status, fields", [
    ("sending", {}), ("completed", {}), ("cancelled", {}), ("paused", {"expanded": True}), ("due", {}),
])
def test_run_past_expansion_unchanged(world, tenant, handler, status, fields):
    run = add_run(world, status, **fields)

    handler.handle(dead_run(run))

    assert world.db.runs.find_one({"_id": run["_id"]})["status"] == status
    assert world.db.campaigns.find_one({})["status"] == "sending"
    assert run_notices(world) == []


def test_run_failed_earlier_keeps_its_error(world, tenant, handler):
    """The recipients service failed the run on its last delivery; the dead run message adds nothing."""
    run = add_run(world, "failed", error="iMIS rejected the query")
    world.notifier.notify(tenant_id="ACME", recipients=["admin@acme.example"], subject="run failed", text="...",
                          dedupe_key=f"run-failed:{run['_id']}")

    handler.handle(dead_run(run))

    assert world.db.runs.find_one({"_id": run["_id"]})["error"] == "iMIS rejected the query"
    assert world.db.campaigns.find_one({})["error"] == "iMIS rejected the query"
    assert len(run_notices(world)) == 1


def test_run_of_other_tenant_not_failed(world, tenant, handler):
    world.tenant("BETA")
    run = add_run(world, "queued")

    handler.handle(dead_run(dict(run, tenant_id="BETA")))

    assert world.db.runs.find_one({"_id": run["_id"]})["status"] == "queued"
    assert kept(world)[0]["tenant_id"] == "BETA"


# ------------------------------------------------------------------ iMIS writes


def textunsub(number: str = "+12015550100", member_id: str = "10001") -> dict:
    return {"kind": "textunsub", "tenant_id": "ACME", "number": number, "member_ids": [member_id],
            "sent_at": "2100-01-01T00:00:00+00:00", "message_id": None}


IMIS_ERROR = "gave up after 1 attempt: iMIS rejected the activity: PartyId does not exist"


def test_imis_write_kept(world, tenant, handler):
    handler.handle(dead(textunsub(), QUEUE_IMIS, reason="iMIS rejected the activity: PartyId does not exist",
                        attempts=1))

    [write] = world.db.failed_imis_writes.find({"tenant_id": "ACME"})
    assert write["kind"] == "textunsub"
    assert write["number"] == "+12015550100"
    assert write["member_ids"] == ["10001"]
    assert write["job"] == textunsub()
    assert write["reason"] == IMIS_ERROR


def test_imis_write_notice(world, tenant, handler):
    handler.handle(dead(textunsub(), QUEUE_IMIS, reason="iMIS rejected the activity: PartyId does not exist",
                        attempts=1))

    [notice] = world.db.notifications.find({"tenant_id": "ACME"})
    assert notice["to"] == ["admin@acme.example"]
    assert notice["subject"] == "Text Manager could not record an opt-out in iMIS"
    assert "+12015550100 (member 10001)" in notice["text"]
    assert IMIS_ERROR in notice["text"]


def test_same_imis_write_twice(world, tenant, handler):
    handler.handle(dead(textunsub(), QUEUE_IMIS))

    handler.handle(dead(textunsub(), QUEUE_IMIS))

    assert world.db.failed_imis_writes.count_documents({}) == 1
    assert world.db.notifications.count_documents({}) == 1


@pytest.mark.parametrize("kind, subject", [
    ("resubscribe", "Text Manager could not remove an opt-out from iMIS"),
    ("sent", "Text Manager could not write to iMIS"),
])
def test_other_imis_kinds_kept(world, tenant, handler, kind, subject):
    handler.handle(dead(dict(textunsub(), kind=kind), QUEUE_IMIS))

    assert world.db.failed_imis_writes.find_one({})["kind"] == kind
    assert world.db.notifications.find_one({})["subject"] == subject


def test_imis_notices_capped(world, tenant, handler):
    writes = MAX_IMIS_NOTICES_PER_HOUR + 3
    for index in range(writes):
        handler.handle(dead(textunsub(member_id=str(10000 + index)), QUEUE_IMIS))

    assert world.db.failed_imis_writes.count_documents({"tenant_id": "ACME"}) == writes
    assert world.db.notifications.count_documents({"tenant_id": "ACME"}) == MAX_IMIS_NOTICES_PER_HOUR


def test_imis_notices_resume_after_hour(world, tenant, handler):
    for index in range(MAX_IMIS_NOTICES_PER_HOUR):
        handler.handle(dead(textunsub(member_id=str(10000 + index)), QUEUE_IMIS))
    world.clock.advance(3601)

    handler.handle(dead(textunsub(member_id="20000"), QUEUE_IMIS))

    assert world.db.notifications.count_documents({"tenant_id": "ACME"}) == MAX_IMIS_NOTICES_PER_HOUR + 1


def test_imis_write_of_unknown_tenant_kept(world, tenant, handler):
    handler.handle(dead(dict(textunsub(), tenant_id="NOBODY"), QUEUE_IMIS))

    assert world.db.failed_imis_writes.count_documents({}) == 0
    [letter] = kept(world)
    assert letter["tenant_id"] == "NOBODY"
    assert letter["kept_because"] == "tenant 'NOBODY' does not exist"


# ------------------------------------------------------------------ anything else


@pytest.mark.parametrize("payload, queue, because", [
    (b"{not json", QUEUE_JOBS, "the job lacks tenant_id"),
    (b"[1, 2]", QUEUE_RUNS, "its body has no tenant_id"),
    (json.dumps({"tenant_id": "ACME", "to": "+12015550100"}).encode(), QUEUE_JOBS, "the job lacks campaign_id"),
    (json.dumps({"tenant_id": "ACME", "run_id": 7}).encode(), QUEUE_RUNS, "its body has no run_id"),
    (json.dumps({"tenant_id": "ACME"}).encode(), QUEUE_IMIS, "its body has no kind"),
    (json.dumps({"tenant_id": "ACME"}).encode(), None, "it died in an unnamed queue"),
    (json.dumps({"tenant_id": "ACME"}).encode(), "tm.other", "it died in tm.other"),
])
def test_malformed_letter_kept(world, tenant, handler, payload, queue, because):
    handler.handle(dead(payload, queue, reason="body is not valid JSON", attempts=1, message_id="m-1"))

    [letter] = kept(world)
    assert letter["payload"] == payload
    assert letter["queue"] == queue
    assert letter["message_id"] == "m-1"
    assert letter["reason"] == "body is not valid JSON"
    assert letter["kept_because"].startswith(because)
    assert json.loads(letter["headers_json"])[DEATH_REASON_HEADER] == "body is not valid JSON"


def test_unknown_job_tenant_kept(world, tenant, handler):
    job = dict(world.run(tenant, 1)[0], tenant_id="NOBODY")

    handler.handle(dead(job, QUEUE_JOBS, message_id=job["message_id"]))

    assert kept(world)[0]["kept_because"] == "tenant 'NOBODY' does not exist"
    assert world.message(job) is None


def test_job_of_missing_run_kept(world, tenant, handler):
    job = world.run(tenant, 1)[0]
    world.db.runs.delete_many({})

    handler.handle(dead_job(job))

    assert kept(world)[0]["kept_because"] == f"run {job['run_id']} does not exist in tenant ACME"
    assert world.message(job) is None


def test_same_malformed_letter_twice(world, tenant, handler):
    handler.handle(dead(b"{not json", QUEUE_JOBS, message_id="m-1"))
    first = kept(world)

    handler.handle(dead(b"{not json", QUEUE_JOBS, message_id="m-1"))

    assert kept(world) == first


class FlakyTenants:
    """Tenants whose look-up raises `error` while `failing` is set."""

    def __init__(self, tenants, error: Exception):
        self._tenants = tenants
        self.error = error
        self.failing = True

    def get(self, cloud_id: str):
        if self.failing:
            raise self.error
        return self._tenants.get(cloud_id)


def test_store_outage_comes_back(world, tenant, pauses):
    job = world.run(tenant, 1)[0]
    handler = build_handler(world, tenants=FlakyTenants(world.tenants, AutoReconnect("connection refused")),
                            pauses=pauses)

    with pytest.raises(Retry, match="connection refused"):
        handler.handle(dead_job(job))

    assert pauses.seconds == [5.0]
    assert world.message(job) is None
    assert kept(world) == []


def test_store_outage_kept_on_last_try(world, tenant):
    job = world.run(tenant, 1)[0]
    handler = build_handler(world, tenants=FlakyTenants(world.tenants, AutoReconnect("connection refused")))

    handler.handle(dead_job(job, tries=MAX_TRIES))

    assert kept(world)[0]["kept_because"] == f"could not settle it in {MAX_TRIES} tries: connection refused"


def test_unexpected_error_kept(world, tenant, pauses):
    job = world.run(tenant, 1)[0]
    handler = build_handler(world, tenants=FlakyTenants(world.tenants, KeyError("twilio_account_sid")),
                            pauses=pauses)

    handler.handle(dead_job(job))

    assert kept(world)[0]["kept_because"] == "settling it failed: KeyError: 'twilio_account_sid'"
    assert pauses.seconds == []


def test_keeping_fails_comes_back(world, tenant, pauses):
    """When even keeping the letter fails, it goes back to the dead queue instead of being lost."""
    handler = build_handler(world, pauses=pauses)
    world.db.dead_letters.update_one = _raise_connection_refused

    with pytest.raises(Retry, match="connection refused"):
        handler.handle(dead(b"{not json", QUEUE_JOBS))

    assert pauses.seconds == [5.0]


def _raise_connection_refused(*args, **kwargs):
    raise AutoReconnect("connection refused")


# ------------------------------------------------------------------ reading


def test_origin_from_rabbitmq_death():
    """RabbitMQ itself dead-lettered the message, so only its x-death header names the queue."""
    delivery = Delivery(queue=QUEUE_DEAD, body={}, headers={
        ATTEMPT_HEADER: 2,
        "x-death": [{"queue": "test-1.tm.jobs.ACME", "reason": "rejected", "count": 1},
                    {"queue": "test-1.tm.jobs.ACME.retry.1", "reason": "expired", "count": 1}],
    }, attempt=1, redelivered=False, message_id="m-1", payload=b"{}")

    letter = read_dead_letter(delivery, queue_prefix="test-1.")

    assert letter.queue == "tm.jobs.ACME"
    assert letter.work_queue == QUEUE_JOBS
    assert letter.reason == "RabbitMQ dead-lettered it (rejected)"
    assert letter.attempts == 2


def test_last_try_from_dead_attempt():
    assert not read_dead_letter(dead({}, QUEUE_JOBS, tries=MAX_TRIES - 1)).last_try
    assert read_dead_letter(dead({}, QUEUE_JOBS, tries=MAX_TRIES)).last_try


def test_fingerprint_same_per_letter():
    first = read_dead_letter(dead({"n": 1}, QUEUE_JOBS, message_id="m-1"))
    again = read_dead_letter(dead({"n": 1}, QUEUE_JOBS, message_id="m-1", tries=3, reason="other"))
    other = read_dead_letter(dead({"n": 2}, QUEUE_JOBS, message_id="m-1"))

    assert first.fingerprint == again.fingerprint
    assert first.fingerprint != other.fingerprint
