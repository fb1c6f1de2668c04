"""Sender: each member texted once when instances die at any step, and clean stops."""

from __future__ import annotations

import threading
import time

import pytest

from libs.common.broker import Retry, tenant_jobs_queue
from libs.common.crypto import SecretBox
from libs.common.message_ids import MessageIds
from libs.common.progress import apply_callback_status
from tests.sender_fixtures import clock, world  # noqa: F401 (fixtures)
from tests.sender_support import WAIT_S, Instance, SenderWorld, delivery

QUEUE = tenant_jobs_queue("ACME")


def finish_with(world: SenderWorld, done, *, advance_s: float = 30.0) -> None:
    """Move the fake clock on, so leases lapse and delay queues empty, until done() holds."""
    deadline = time.monotonic() + WAIT_S
    while not done():
        assert time.monotonic() < deadline, "the sender instances did not finish"
        world.clock.advance(advance_s)
        time.sleep(0.02)


def all_sent(world: SenderWorld, jobs: list[dict]):
    """Return a check that every job's text was recorded as sent, read from the run's counter."""
    run_id = jobs[0]["run_id"]
    return lambda: world.run_document(run_id)["counts"]["sent"] == len(jobs)


# ------------------------------------------------------------------ one crash per step


def crash_at_checkpoint(step: str):
    def arm(world: SenderWorld, instance: Instance) -> None:
        original = instance.sender._checkpoint

        def checkpoint(reached: str) -> None:
            if reached == step and not instance.crashed.is_set():
                instance.crash_here()
            original(reached)

        instance.sender._checkpoint = checkpoint
    return arm


def crash_during_call(world: SenderWorld, instance: Instance) -> None:
    """Twilio creates the text, and the instance dies before the response comes back."""
    def after_create(_create) -> None:
        world.twilio.after_create = None
        instance.crash_here()

    world.twilio.after_create = after_create


CRASH_POINTS = {
    "after the claim": crash_at_checkpoint("claimed"),
    "before the call": crash_at_checkpoint("calling"),
    "during the call": crash_during_call,
    "after the answer": crash_at_checkpoint("answered"),
    "after the record": crash_at_checkpoint("recorded"),
}


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_texts_once(world, point):
    tenant = world.tenant(sender_rate_sps=100.0)
    jobs = world.run(tenant, 5)
    world.publish(world.broker(), jobs)
    crashing = Instance(world, QUEUE)
    CRASH_POINTS[point](world, crashing)

    crashing.start()
    finish_with(world, crashing.crashed.is_set, advance_s=0)
    crashing.join()
    survivor = Instance(world, QUEUE).start()
    finish_with(world, all_sent(world, jobs))
    survivor.join()

    counts = world.twilio.create_counts()
    assert sorted(counts) == sorted(job["to"] for job in jobs)
    assert set(counts.values()) == {1}
    assert world.run_document(jobs[0]["run_id"])["counts"]["sent"] == 5
    assert survivor.errors == []


def test_crash_before_record_and_ack(world):
    """Twilio returned 201, then the instance died before recording the SID and acking."""
    tenant = world.tenant()
    job = world.run(tenant, 1)[0]
    world.publish(world.broker(), [job])
    crashing = Instance(world, QUEUE)
    crash_at_checkpoint("answered")(world, crashing)

    crashing.start()
    finish_with(world, crashing.crashed.is_set, advance_s=0)
    crashing.join()
    held = world.message(job)["status"]
    survivor = Instance(world, QUEUE).start()
    finish_with(world, all_sent(world, [job]))
    survivor.join()

    assert held == "sending"
    assert world.twilio.creates_to(job["to"]) == 1
    assert world.message(job)["sid"] == world.twilio.creates[0].sid


def test_crash_mid_campaign(world):
    """2,500 members: an instance dies after about 300 texts, and another finishes the run."""
    tenant = world.tenant(sender_rate_sps=1000.0)
    jobs = world.run(tenant, 2500)
    world.publish(world.broker(), jobs)
    crashing = Instance(world, QUEUE, workers=4)

    def crash_after_300(_create) -> None:
        if len(world.twilio.creates) >= 300:
            world.twilio.after_create = None
            crashing.crash_here()

    world.twilio.after_create = crash_after_300
    crashing.start()
    finish_with(world, crashing.crashed.is_set, advance_s=0)
    crashing.join()
    sent_before = len(world.twilio.creates)
    status_after_crash = world.run_document(jobs[0]["run_id"])["status"]

    survivor = Instance(world, QUEUE, workers=4).start()
    finish_with(world, all_sent(world, jobs))
    survivor.join()
    run_id = jobs[0]["run_id"]
    status_all_sent = world.run_document(run_id)["status"]
    for job in jobs[:-1]:
        apply_callback_status(world.db, world.progress, tenant_id="ACME", message_id=job["message_id"],
                              status="delivered", error_code=None, at=world.clock.now())
    status_one_left = world.run_document(run_id)["status"]
    apply_callback_status(world.db, world.progress, tenant_id="ACME", message_id=jobs[-1]["message_id"],
                          status="delivered", error_code=None, at=world.clock.now())

    counts = world.twilio.create_counts()
    assert 300 <= sent_before < 310
    assert len(counts) == 2500
    assert set(counts.values()) == {1}
    assert status_after_crash == "sending"
    assert status_all_sent == "sending"
    assert status_one_left == "sending"
    run = world.run_document(run_id)
    assert run["status"] == "completed"
    assert run["counts"]["sent"] == 2500
    assert run["counts"]["delivered"] == 2500


def test_duplicate_jobs_one_text(world):
    """A job published twice and taken by two instances at once is still one text."""
    tenant = world.tenant(sender_rate_sps=100.0)
    jobs = world.run(tenant, 40)
    broker = world.broker()
    world.publish(broker, jobs)
    world.publish(broker, jobs)

    instances = [Instance(world, QUEUE, workers=2).start() for _ in range(2)]
    # Steps of 5 s: a 60 s lease lapses only if a Twilio call spans 12 of them (about 0.25 s).
    finish_with(world, all_sent(world, jobs), advance_s=5.0)
    finish_with(world, lambda: world.server.depth(QUEUE) == 0 and broker.queue_depth(QUEUE) == 0, advance_s=5.0)
    for instance in instances:
        instance.join()

    assert set(world.twilio.create_counts().values()) == {1}
    assert len(world.twilio.creates) == 40
    assert world.run_document(jobs[0]["run_id"])["counts"]["sent"] == 40


def test_jobs_built_again_one_text(world):
    """A restarted recipients process builds the jobs again from the secret key: same ids, one text per number."""
    tenant = world.tenant(sender_rate_sps=100.0)
    jobs = world.run(tenant, 40)
    restarted = MessageIds.from_secrets(SecretBox(world.secret_key))
    rebuilt = [dict(job, message_id=restarted.build(job["run_id"], job["to"])) for job in jobs]
    broker = world.broker()
    world.publish(broker, jobs)
    world.publish(broker, rebuilt)

    instances = [Instance(world, QUEUE, workers=2).start() for _ in range(2)]
    # Steps of 5 s: a 60 s lease lapses only if a Twilio call spans 12 of them (about 0.25 s).
    finish_with(world, all_sent(world, jobs), advance_s=5.0)
    finish_with(world, lambda: world.server.depth(QUEUE) == 0 and broker.queue_depth(QUEUE) == 0, advance_s=5.0)
    for instance in instances:
        instance.join()

    assert [job["message_id"] for job in rebuilt] == [job["message_id"] for job in jobs]
    assert set(world.twilio.create_counts().values()) == {1}
    assert len(world.twilio.creates) == 40
    assert world.db.messages.count_documents({"run_id": jobs[0]["run_id"]}) == 40


# ------------------------------------------------------------------ stopping


def test_stop_mid_call_records_and_acks(world):
    """The stop path of SIGTERM: the text in flight is recorded and acked, no new one is taken."""
    tenant = world.tenant(sender_rate_sps=100.0)
    jobs = world.run(tenant, 3)
    world.publish(world.broker(), jobs)
    in_call = threading.Event()
    release = threading.Event()

    def block(_fields) -> None:
        in_call.set()
        assert release.wait(WAIT_S)

    world.twilio.before_create = block
    instance = Instance(world, QUEUE).start()
    assert in_call.wait(WAIT_S)
    instance.stop.set()
    release.set()
    instance.join()

    assert world.twilio.calls == 1
    assert world.message(jobs[0])["status"] == "sent"
    assert world.message(jobs[1]) is None
    assert world.server.depth(QUEUE) == 2
    assert instance.broker.consumers(QUEUE) == 0


def test_stop_while_waiting_gives_text_back(world):
    tenant = world.tenant(sender_rate_sps=1.0)
    jobs = world.run(tenant, 2)
    stopping = threading.Event()
    sender = world.sender(world.broker(), stopping=stopping)
    sender.handle(delivery(jobs[0]))
    stopping.set()

    with pytest.raises(Retry):
        sender.handle(delivery(jobs[1]))

    message = world.message(jobs[1])
    assert message["status"] == "retrying"
    assert message["job"] == jobs[1]
    assert world.twilio.calls == 1
    assert world.db.usage.find_one({})["count"] == 1
