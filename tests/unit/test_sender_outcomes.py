"""Sender: the action for every error the Twilio create call can return."""

from __future__ import annotations

import random

import pytest

from libs.common.broker import QUEUE_IMIS, PublishError, Retry
from libs.common.imis_queue import tenant_imis_queue
from services.sender import outcomes
from tests.sender_fixtures import broker, clock, tenant, world  # noqa: F401 (fixtures)
from tests.sender_support import SENDER_NUMBER, delivery, twilio_error, unavailable


@pytest.fixture
def sender(world, broker):
    return world.sender(broker, rng=random.Random(7))


def usage_count(world, tenant) -> int:
    return sum(document["count"] for document in world.db.usage.find({"tenant_id": tenant.cloud_id}))


# ------------------------------------------------------------------ success


def test_sent_recorded(world, tenant, sender):
    job = world.run(tenant, 1)[0]

    sender.handle(delivery(job))

    message = world.message(job)
    assert message["status"] == "sent"
    assert message["sid"] == world.twilio.creates[0].sid
    assert "claim_token" not in message
    assert world.run_document(job["run_id"])["counts"]["sent"] == 1
    assert usage_count(world, tenant) == 1


def test_callback_url_carries_message_id(world, tenant, sender):
    job = world.run(tenant, 1)[0]

    sender.handle(delivery(job))

    assert world.twilio.creates[0].status_callback == (
        f"https://feedback.example.org/twilio/status/ACME/{job['message_id']}")
    assert world.twilio.creates[0].from_ == SENDER_NUMBER


def test_redelivered_job_sends_nothing(world, tenant, sender):
    job = world.run(tenant, 1)[0]
    sender.handle(delivery(job))

    sender.handle(delivery(job))

    assert len(world.twilio.creates) == 1
    assert world.run_document(job["run_id"])["counts"]["sent"] == 1


# ------------------------------------------------------------------ skip


@pytest.mark.parametrize("code, reason", [
    (21211, "invalid number"),
    (21408, "texts to this country are not enabled"),
    (21612, "the number cannot receive texts"),
    (21614, "not a mobile number"),
    (21617, "text longer than 1,600 characters"),
])
def test_skipped_with_reason(world, tenant, sender, code, reason):
    job = world.run(tenant, 1)[0]
    world.twilio.fail(job["to"], twilio_error(code))

    sender.handle(delivery(job))

    message = world.message(job)
    assert message["status"] == "skipped"
    assert message["reason"].startswith(reason)
    assert message["error_code"] == code
    counts = world.run_document(job["run_id"])["counts"]
    assert counts["skipped"] == 1
    assert counts["sent"] == 0
    assert counts["done"] == 1
    assert usage_count(world, tenant) == 0


# ------------------------------------------------------------------ opt-out


def test_opted_out_not_counted_sent(world, tenant, sender, broker):
    job = world.run(tenant, 1)[0]
    world.twilio.fail(job["to"], twilio_error(21610))

    sender.handle(delivery(job))

    message = world.message(job)
    assert message["status"] == "opted_out"
    counts = world.run_document(job["run_id"])["counts"]
    assert counts["opted_out"] == 1
    assert counts["sent"] == 0
    assert usage_count(world, tenant) == 0
    optout = world.db.optouts.find_one({"_id": f"ACME:{job['to']}"})
    assert optout["member_ids"] == [job["member_id"]]


def test_opt_out_queues_textunsub(world, tenant, sender, broker):
    job = world.run(tenant, 1)[0]
    world.twilio.fail(job["to"], twilio_error(21610))

    sender.handle(delivery(job))

    queued = world.take_imis_jobs()
    assert len(queued) == 1
    assert queued[0]["kind"] == "textunsub"
    assert queued[0]["member_ids"] == [job["member_id"]]


def test_toll_free_blocked_is_opt_out():
    assert outcomes.classify(30004, 400, toll_free=True).action == outcomes.OPT_OUT


def test_long_code_blocked_fails():
    assert outcomes.classify(30004, 400, toll_free=False).action == outcomes.FAIL


# ------------------------------------------------------------------ pause


@pytest.mark.parametrize("code, http_status", [(20003, 401), (21606, 400)])
def test_pause_code_pauses_run(world, tenant, sender, code, http_status):
    job = world.run(tenant, 1)[0]
    world.twilio.fail(job["to"], twilio_error(code, http_status))

    sender.handle(delivery(job))

    message = world.message(job)
    assert message["status"] == "paused"
    assert message["job"] == job
    run = world.run_document(job["run_id"])
    assert run["status"] == "paused"
    assert run["paused_reason"] == outcomes.OUTCOMES[code].reason
    assert world.db.campaigns.find_one({"_id": job["campaign_id"]})["status"] == "paused"
    assert usage_count(world, tenant) == 0


def test_pause_sends_one_notice(world, tenant, sender):
    jobs = world.run(tenant, 3)
    world.twilio.fail_next(twilio_error(20003, 401))

    for job in jobs:
        sender.handle(delivery(job))

    notices = list(world.db.notifications.find({"tenant_id": "ACME"}))
    assert len(notices) == 1
    assert notices[0]["to"] == ["admin@acme.example", "staff@example.org"]
    assert "account credentials" in notices[0]["text"]
    assert world.twilio.calls == 1
    assert world.statuses(jobs[0]["run_id"]) == {"paused": 3}


def test_pause_repeated_no_notice(world, tenant):
    run_id = world.run(tenant, 1)[0]["run_id"]

    first = world.progress.pause(run_id, "the sender number is blocked", notifier=world.notifier)
    second = world.progress.pause(run_id, "the sender number is blocked", notifier=world.notifier)

    assert first is True
    assert second is False
    assert world.db.notifications.count_documents({}) == 1


def test_pause_after_resume_new_notice(world, tenant, sender):
    jobs = world.run(tenant, 2)
    world.twilio.fail_next(twilio_error(21606), twilio_error(21606))
    sender.handle(delivery(jobs[0]))
    world.db.runs.update_one({"_id": jobs[0]["run_id"]}, {"$set": {"status": "sending"}})

    sender.handle(delivery(jobs[1]))

    assert world.db.notifications.count_documents({}) == 2
    assert world.run_document(jobs[0]["run_id"])["pauses"] == 2


# ------------------------------------------------------------------ retry


@pytest.mark.parametrize("code, http_status", [
    (20429, 429), (None, 429), (20500, 500), (None, 503), (21611, 400),
])
def test_retry_keeps_job(world, tenant, sender, code, http_status):
    job = world.run(tenant, 1)[0]
    world.twilio.fail(job["to"], twilio_error(code, http_status))

    with pytest.raises(Retry) as raised:
        sender.handle(delivery(job))

    message = world.message(job)
    assert message["status"] == "retrying"
    assert message["job"] == job
    assert raised.value.delay_s > 0
    assert usage_count(world, tenant) == 0


def test_retry_then_sent(world, tenant, sender):
    job = world.run(tenant, 1)[0]
    world.twilio.fail(job["to"], twilio_error(20429, 429))
    with pytest.raises(Retry):
        sender.handle(delivery(job))

    sender.handle(delivery(job, attempt=2))

    assert world.message(job)["status"] == "sent"
    assert world.twilio.creates_to(job["to"]) == 1
    assert world.run_document(job["run_id"])["counts"]["sent"] == 1


def test_retry_backoff_grows(world, tenant, sender):
    job = world.run(tenant, 1)[0]
    world.twilio.fail(job["to"], *[twilio_error(None, 503)] * 4)

    delays = []
    for attempt in range(1, 5):
        with pytest.raises(Retry) as raised:
            sender.handle(delivery(job, attempt=attempt))
        delays.append(raised.value.delay_s)

    nominal = [5, 10, 20, 40]
    assert all(low / 2 <= delay <= low for delay, low in zip(delays, nominal))


def test_retry_jitter_spreads(world, tenant):
    """Texts that failed together wait different times."""
    sender = world.sender(world.broker(), rng=random.Random(11))
    jobs = world.run(tenant, 20)
    world.twilio.fail_next(*[twilio_error(20429, 429)] * 20)

    delays = set()
    for job in jobs:
        with pytest.raises(Retry) as raised:
            sender.handle(delivery(job, attempt=2))
        delays.add(round(raised.value.delay_s, 3))

    assert len(delays) == 20


def test_retries_bounded(world, tenant, sender):
    job = world.run(tenant, 1)[0]
    world.twilio.fail(job["to"], *[twilio_error(20429, 429)] * 5)

    for attempt in range(1, 5):
        with pytest.raises(Retry):
            sender.handle(delivery(job, attempt=attempt))
    sender.handle(delivery(job, attempt=5))

    message = world.message(job)
    assert message["status"] == "failed"
    assert message["reason"] == "Twilio is busy (too many concurrent requests); gave up after 5 attempts"
    counts = world.run_document(job["run_id"])["counts"]
    assert counts["failed"] == 1
    assert counts["done"] == 1


def test_queue_full_bounded_sooner(world, tenant, sender):
    job = world.run(tenant, 1)[0]
    world.twilio.fail(job["to"], *[twilio_error(21611)] * 3)

    for attempt in (1, 2):
        with pytest.raises(Retry):
            sender.handle(delivery(job, attempt=attempt))
    sender.handle(delivery(job, attempt=3))

    assert world.message(job)["status"] == "failed"
    assert world.message(job)["reason"].endswith("gave up after 3 attempts")


def test_queue_full_slows_sender(world, tenant, sender):
    job = world.run(tenant, 1)[0]
    world.twilio.fail(job["to"], twilio_error(21611))

    with pytest.raises(Retry):
        sender.handle(delivery(job))

    window = world.db.rate_windows.find_one({"_id": f"ACME:{SENDER_NUMBER}"})
    assert window["slow_factor"] == 0.5
    assert window["slow_until"] > world.clock.time()


def test_unknown_error_fails(world, tenant, sender):
    job = world.run(tenant, 1)[0]
    world.twilio.fail(job["to"], twilio_error(21999))

    sender.handle(delivery(job))

    assert world.message(job)["status"] == "failed"
    assert world.message(job)["reason"] == "Twilio error 21999 (HTTP 400)"


# ------------------------------------------------------------------ unknown outcome


def test_timeout_keeps_claim(world, tenant, sender):
    job = world.run(tenant, 1)[0]
    world.twilio.fail(job["to"], unavailable())

    with pytest.raises(Retry) as raised:
        sender.handle(delivery(job))

    message = world.message(job)
    assert message["status"] == "sending"
    assert message["call_started_at"] is not None
    assert raised.value.delay_s == 60.0
    assert usage_count(world, tenant) == 1


def test_timeout_that_reached_twilio_not_resent(world, tenant, sender):
    """The create went through but its response was lost: the next attempt finds it in the list."""
    job = world.run(tenant, 1)[0]

    def lose_answer(create):
        world.twilio.after_create = None
        raise unavailable()

    world.twilio.after_create = lose_answer
    with pytest.raises(Retry):
        sender.handle(delivery(job))
    world.clock.advance(61)

    sender.handle(delivery(job, attempt=2))

    message = world.message(job)
    assert world.twilio.creates_to(job["to"]) == 1
    assert message["status"] == "sent"
    assert message["sid"] == world.twilio.creates[0].sid
    assert world.run_document(job["run_id"])["counts"]["sent"] == 1


def test_timeout_that_missed_twilio_resent(world, tenant, sender):
    job = world.run(tenant, 1)[0]
    world.twilio.fail(job["to"], unavailable())
    with pytest.raises(Retry):
        sender.handle(delivery(job))
    world.clock.advance(61)

    sender.handle(delivery(job, attempt=2))

    assert world.twilio.creates_to(job["to"]) == 1
    assert world.message(job)["status"] == "sent"


def test_lease_held_means_wait(world, tenant, sender):
    job = world.run(tenant, 1)[0]
    world.twilio.fail(job["to"], unavailable())
    with pytest.raises(Retry):
        sender.handle(delivery(job))
    world.clock.advance(20)

    with pytest.raises(Retry) as raised:
        sender.handle(delivery(job, attempt=2))

    assert raised.value.delay_s == pytest.approx(40.0)
    assert world.twilio.calls == 1


def test_list_failure_sends_nothing(world, tenant, sender):
    job = world.run(tenant, 1)[0]
    world.twilio.fail(job["to"], unavailable())
    with pytest.raises(Retry):
        sender.handle(delivery(job))
    world.clock.advance(61)
    world.twilio.list_error = unavailable()

    with pytest.raises(Retry):
        sender.handle(delivery(job, attempt=2))

    assert world.twilio.calls == 1
    assert world.message(job)["status"] == "sending"


def test_unknown_outcome_given_up(world, tenant, sender):
    job = world.run(tenant, 1)[0]
    world.twilio.fail(job["to"], unavailable())

    sender.handle(delivery(job, attempt=5))

    message = world.message(job)
    assert message["status"] == "failed"
    assert "may have reached Twilio" in message["reason"]
    assert world.run_document(job["run_id"])["counts"]["done"] == 1


def test_lost_textunsub_publish_retried(world, tenant, broker):
    """The opt-out's TEXTUNSUB job is published before the text is final, so a failed publish is not lost."""
    job = world.run(tenant, 1)[0]
    world.twilio.fail(job["to"], twilio_error(21610), twilio_error(21610))
    failing = world.sender(broker)
    publish = broker.publish

    def fail_imis(queue, body, **options):
        if queue in (QUEUE_IMIS, tenant_imis_queue("ACME")):
            raise PublishError("RabbitMQ is unreachable")
        publish(queue, body, **options)

    broker.publish = fail_imis
    with pytest.raises(PublishError):
        failing.handle(delivery(job))
    broker.publish = publish
    world.clock.advance(61)

    world.sender(broker).handle(delivery(job, attempt=2))

    queued = world.take_imis_jobs()
    assert [body["kind"] for body in queued] == ["textunsub"]
    assert world.message(job)["status"] == "opted_out"
