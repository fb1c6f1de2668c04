"""Delivery errors from status callbacks: bounded new attempts, skips, pauses and spam filtering."""

from __future__ import annotations

import json
import random

import pytest

from libs.common.broker import PublishError, delay_queue_name, tenant_jobs_queue
from libs.common.progress import (
    CALLBACK_RETRIES, REPUBLISH_GRACE_S, SPAM_FILTERED, CallbackOutcomes, backoff_s,
)
from services.feedback.service import FeedbackService
from services.gateway.service import CampaignService
from services.scheduler.service import Scheduler
from tests.sender_fixtures import broker, clock, tenant, world  # noqa: F401 (fixtures)
from tests.sender_support import DELAYS, SENDER_NUMBER, delivery

QUEUE = tenant_jobs_queue("ACME")


@pytest.fixture
def sender(world, broker):
    return world.sender(broker)


@pytest.fixture
def callbacks(world, broker):
    return CallbackOutcomes(world.db, world.progress, broker=broker, notifier=world.notifier, clock=world.clock,
                            rng=random.Random(3))


def send(world, sender, job: dict) -> str:
    """Send the job's text now; return its SID."""
    sender.handle(delivery(job))
    return world.message(job)["sid"]


def report(callbacks, job: dict, sid: str, status: str, code: int | None = None):
    return callbacks.apply(tenant_id=job["tenant_id"], message_id=job["message_id"], sid=sid, status=status,
                           error_code=code, at=callbacks._clock.now())


def waiting_jobs(world) -> list[dict]:
    """Let every delay pass, then take the jobs that came back to ACME's job queue."""
    world.server.declare_partition("", QUEUE, DELAYS)
    world.clock.advance(max(DELAYS))
    return [json.loads(message.payload) for message in world.server.take(QUEUE, 100)]


# ------------------------------------------------------------------ new attempts


def test_retryable_code_queues_new_attempt(world, tenant, sender, callbacks):
    job = world.run(tenant, 1)[0]
    sid = send(world, sender, job)

    outcome = report(callbacks, job, sid, "undelivered", 30003)

    message = world.message(job)
    assert outcome == "retrying"
    assert message["status"] == "retrying"
    assert message["previous_sids"] == [sid]
    assert "sid" not in message
    assert message["callback_retries"] == 1
    assert "retry_at" not in message
    assert waiting_jobs(world) == [job]
    assert world.run_document(job["run_id"])["counts"]["done"] == 0


def test_new_attempt_sent_and_counted_once(world, tenant, sender, callbacks):
    job = world.run(tenant, 1)[0]
    first_sid = send(world, sender, job)
    report(callbacks, job, first_sid, "undelivered", 30008)

    second_sid = send(world, sender, job)
    report(callbacks, job, second_sid, "delivered")

    assert world.twilio.creates_to(job["to"]) == 2
    assert second_sid != first_sid
    assert world.message(job)["status"] == "delivered"
    counts = world.run_document(job["run_id"])["counts"]
    assert counts["sent"] == 1
    assert counts["delivered"] == 1
    assert counts["done"] == 1


def test_earlier_attempt_callback_ignored(world, tenant, sender, callbacks):
    job = world.run(tenant, 1)[0]
    first_sid = send(world, sender, job)
    report(callbacks, job, first_sid, "undelivered", 30003)
    send(world, sender, job)

    late = report(callbacks, job, first_sid, "undelivered", 30003)

    assert late is None
    assert world.message(job)["status"] == "sent"
    assert world.message(job)["callback_retries"] == 1


@pytest.mark.parametrize("code", sorted(CALLBACK_RETRIES))
def test_new_attempts_bounded(world, tenant, sender, callbacks, code):
    job = world.run(tenant, 1)[0]
    allowed = CALLBACK_RETRIES[code].new_attempts

    for _ in range(allowed + 1):
        sid = send(world, sender, job)
        last = report(callbacks, job, sid, "undelivered", code)

    message = world.message(job)
    assert world.twilio.creates_to(job["to"]) == allowed + 1
    assert last == "undelivered"
    assert message["status"] == "undelivered"
    assert message["reason"] == f"{CALLBACK_RETRIES[code].reason}; gave up after {allowed + 1} attempts"
    counts = world.run_document(job["run_id"])["counts"]
    assert counts["failed"] == 1
    assert counts["done"] == 1


def test_new_attempt_waits_with_jitter(world, tenant, sender, broker):
    job = world.run(tenant, 1)[0]
    sid = send(world, sender, job)
    callbacks = CallbackOutcomes(world.db, world.progress, broker=broker, notifier=world.notifier,
                                 clock=world.clock, rng=random.Random(5))

    report(callbacks, job, sid, "undelivered", 30410)

    delay = backoff_s(1, 60, rng=random.Random(5))
    step = min(seconds for seconds in DELAYS if seconds >= delay)
    assert 30 <= delay <= 60
    assert world.server.depth(delay_queue_name(QUEUE, step)) == 1


def test_lost_publish_left_to_scheduler(world, tenant, sender, broker):
    class FailingBroker:
        def publish_delayed(self, *args, **kwargs):
            raise PublishError("RabbitMQ is unreachable")

    job = world.run(tenant, 1)[0]
    sid = send(world, sender, job)
    callbacks = CallbackOutcomes(world.db, world.progress, broker=FailingBroker(), notifier=world.notifier,
                                 clock=world.clock)
    report(callbacks, job, sid, "undelivered", 30008)
    scheduler = Scheduler(world.db, broker=broker, clock=world.clock)
    world.server.declare_partition("", QUEUE, DELAYS)

    scheduler.tick()
    early = broker.queue_depth(QUEUE)
    world.clock.advance(30 + REPUBLISH_GRACE_S)
    scheduler.tick()

    assert early == 0
    assert broker.queue_depth(QUEUE) == 1
    assert world.message(job)["status"] == "retrying"
    assert "retry_at" not in world.message(job)


def test_incomplete_message_not_retried(world, tenant, callbacks):
    job = world.run(tenant, 1)[0]
    world.db.messages.insert_one({"_id": job["message_id"], "tenant_id": "ACME", "run_id": job["run_id"],
                                  "campaign_id": job["campaign_id"], "to": job["to"], "status": "sent",
                                  "sid": "SM1"})

    outcome = report(callbacks, job, "SM1", "undelivered", 30003)

    assert outcome == "undelivered"
    assert world.message(job)["status"] == "undelivered"


@pytest.mark.parametrize("code", [30001, 30036])
def test_overflow_retry_slows_sender(world, tenant, sender, callbacks, code):
    job = world.run(tenant, 1)[0]
    report(callbacks, job, send(world, sender, job), "undelivered", code)

    send(world, sender, job)

    window = world.db.rate_windows.find_one({"_id": f"ACME:{SENDER_NUMBER}"})
    assert window["slow_factor"] == 0.5


# ------------------------------------------------------------------ skips and pauses


@pytest.mark.parametrize("code, reason", [(30005, "unknown handset"), (30006, "landline or unreachable carrier")])
def test_skip_code(world, tenant, sender, callbacks, code, reason):
    job = world.run(tenant, 1)[0]

    outcome = report(callbacks, job, send(world, sender, job), "undelivered", code)

    message = world.message(job)
    assert outcome == "skipped"
    assert message["status"] == "skipped"
    assert message["reason"] == reason
    counts = world.run_document(job["run_id"])["counts"]
    assert counts["undeliverable"] == 1
    assert counts["skipped"] == 0
    assert counts["failed"] == 0
    assert counts["done"] == 1
    assert world.twilio.creates_to(job["to"]) == 1


def test_unverified_toll_free_pauses(world, tenant, sender, callbacks):
    jobs = world.run(tenant, 2)
    sids = [send(world, sender, job) for job in jobs]

    for job, sid in zip(jobs, sids):
        report(callbacks, job, sid, "failed", 30032)

    run = world.run_document(jobs[0]["run_id"])
    assert run["status"] == "paused"
    assert "not verified" in run["paused_reason"]
    assert world.statuses(run["_id"]) == {"paused": 2}
    assert world.db.notifications.count_documents({}) == 1


def test_unverified_resent_after_resume(world, tenant, sender, callbacks, broker):
    job = world.run(tenant, 1)[0]
    report(callbacks, job, send(world, sender, job), "failed", 30032)
    campaigns = CampaignService(world.db, broker=broker, clock=world.clock)

    campaigns.resume("ACME", job["campaign_id"])
    sender.handle(delivery(job))

    assert world.twilio.creates_to(job["to"]) == 2
    assert world.message(job)["status"] == "sent"
    assert world.run_document(job["run_id"])["counts"]["sent"] == 1


def spam_run(world, sender, callbacks, tenant, *, filtered: int, delivered: int) -> dict:
    jobs = world.run(tenant, filtered + delivered + 10)
    for index, job in enumerate(jobs[:filtered + delivered]):
        sid = send(world, sender, job)
        if index < delivered:
            report(callbacks, job, sid, "delivered")
        else:
            report(callbacks, job, sid, "undelivered", SPAM_FILTERED)
    return world.run_document(jobs[0]["run_id"])


def test_spam_rising_pauses(world, tenant, sender, callbacks):
    run = spam_run(world, sender, callbacks, tenant, filtered=5, delivered=20)

    assert run["status"] == "paused"
    assert run["spam_filtered"] == 5
    assert run["paused_reason"].startswith("carriers filtered 5 of its 25 finished texts as spam")
    assert world.db.notifications.count_documents({}) == 1


def test_few_spam_filtered_no_pause(world, tenant, sender, callbacks):
    run = spam_run(world, sender, callbacks, tenant, filtered=4, delivered=20)

    assert run["status"] == "sending"
    assert world.db.notifications.count_documents({}) == 0


def test_low_spam_share_no_pause(world, tenant, sender, callbacks):
    """Five filtered among 300 finished texts is under 2%."""
    run = spam_run(world, sender, callbacks, tenant, filtered=5, delivered=295)

    assert run["status"] == "sending"


def test_spam_not_retried(world, tenant, sender, callbacks):
    job = world.run(tenant, 1)[0]

    report(callbacks, job, send(world, sender, job), "undelivered", SPAM_FILTERED)

    assert world.message(job)["status"] == "undelivered"
    assert world.message(job)["reason"] == "filtered by the carrier as spam"
    assert waiting_jobs(world) == []


# ------------------------------------------------------------------ through the feedback service


def test_feedback_callback_retries(world, tenant, sender, broker):
    feedback = FeedbackService(world.db, broker=broker, tenants=world.tenants, clock=world.clock,
                               notifier=world.notifier)
    job = world.run(tenant, 1)[0]
    sid = send(world, sender, job)

    feedback.on_status_callback("ACME", job["message_id"], {
        "MessageSid": sid, "MessageStatus": "undelivered", "ErrorCode": "30003", "To": job["to"]})
    feedback.on_status_callback("ACME", job["message_id"], {
        "MessageSid": sid, "MessageStatus": "undelivered", "ErrorCode": "30003", "To": job["to"]})

    message = world.message(job)
    assert message["status"] == "retrying"
    assert message["callback_retries"] == 1
    assert waiting_jobs(world) == [job]
    assert world.db.callbacks.count_documents({"message_id": job["message_id"]}) == 2
