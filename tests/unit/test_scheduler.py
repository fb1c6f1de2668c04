"""Scheduler: each due run is published to `tm.runs` once, and only once it is due."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest

from libs.common.broker import QUEUE_JOBS, QUEUE_RUNS, PublishError
from libs.common.progress import wake_deferred
from services.scheduler.service import Scheduler

LEASE_S = 30.0


class FailingBroker:
    """A broker whose every publish is nacked."""

    def __init__(self):
        self.attempts = 0

    def publish(self, queue, body, *, headers=None, message_id=None):
        self.attempts += 1
        raise PublishError(f"RabbitMQ nacked message {message_id} to {queue}")


@pytest.fixture
def scheduler(runtime) -> Scheduler:
    return Scheduler(runtime.db, broker=runtime.broker, clock=runtime.clock, lease_s=LEASE_S)


@pytest.fixture
def add_run(runtime):
    """Return `add_run(run_id, due_in_s=0, **fields)`: a campaign and its run, due in `due_in_s`."""

    def add(run_id: str, due_in_s: float = 0.0, campaign_status: str = "sending", **fields) -> dict:
        now = runtime.clock.now()
        campaign_id = f"campaign-{run_id}"
        runtime.db.campaigns.insert_one({"_id": campaign_id, "tenant_id": "ACME", "status": campaign_status,
                                         "current_run_id": run_id})
        run = {"_id": run_id, "tenant_id": "ACME", "campaign_id": campaign_id, "status": "due",
               "due_at": now + timedelta(seconds=due_in_s), "created_at": now, "expanded": False,
               "counts": {"recipients": 0, "done": 0}, **fields}
        runtime.db.runs.insert_one(run)
        return run

    return add


def published_runs(broker) -> list[dict]:
    """Take and return the bodies waiting in `tm.runs`."""
    return [json.loads(message.payload) for message in broker.server.take(QUEUE_RUNS, 1000)]


def test_due_run_published(runtime, scheduler, add_run):
    add_run("r1")

    count = scheduler.tick()

    assert count == 1
    assert published_runs(runtime.broker) == [{"tenant_id": "ACME", "campaign_id": "campaign-r1", "run_id": "r1"}]
    assert runtime.db.runs.find_one({"_id": "r1"})["status"] == "queued"


def test_message_id_is_run_id(runtime, scheduler, add_run):
    add_run("r1")

    scheduler.tick()

    assert [message.message_id for message in runtime.broker.server.take(QUEUE_RUNS, 10)] == ["r1"]


def test_tick_twice_publishes_once(runtime, scheduler, add_run):
    add_run("r1")

    first = scheduler.tick()
    second = scheduler.tick()

    assert first == 1
    assert second == 0
    assert len(published_runs(runtime.broker)) == 1


def test_published_run_not_repeated_after_lease(runtime, scheduler, add_run):
    add_run("r1")
    scheduler.tick()

    runtime.clock.advance(LEASE_S * 3)
    again = scheduler.tick()

    assert again == 0
    assert len(published_runs(runtime.broker)) == 1


def test_lapsed_claim_published_once(runtime, scheduler, add_run):
    """A scheduler that died between claim and publish left the run `publishing`."""
    add_run("r1", status="publishing", lease_until=runtime.clock.now() - timedelta(seconds=1))

    first = scheduler.tick()
    second = scheduler.tick()

    assert first == 1
    assert second == 0
    assert len(published_runs(runtime.broker)) == 1
    assert runtime.db.runs.find_one({"_id": "r1"})["status"] == "queued"


def test_claim_within_lease_left_alone(runtime, scheduler, add_run):
    add_run("r1", status="publishing", lease_until=runtime.clock.now() + timedelta(seconds=10))

    count = scheduler.tick()

    assert count == 0
    assert published_runs(runtime.broker) == []
    assert runtime.db.runs.find_one({"_id": "r1"})["status"] == "publishing"


def test_future_run_not_published(runtime, scheduler, add_run):
    add_run("r1", due_in_s=3600, campaign_status="scheduled")

    count = scheduler.tick()

    assert count == 0
    assert published_runs(runtime.broker) == []
    assert runtime.db.runs.find_one({"_id": "r1"})["status"] == "due"


def test_future_run_published_when_due(runtime, scheduler, add_run):
    add_run("r1", due_in_s=3600, campaign_status="scheduled")
    scheduler.tick()

    runtime.clock.advance(3600)
    count = scheduler.tick()

    assert count == 1
    assert len(published_runs(runtime.broker)) == 1
    assert runtime.db.campaigns.find_one({"_id": "campaign-r1"})["status"] == "sending"


def test_publish_failure_keeps_run(runtime, add_run):
    add_run("r1")
    failing = FailingBroker()

    count = Scheduler(runtime.db, broker=failing, clock=runtime.clock, lease_s=LEASE_S).tick()

    assert count == 0
    assert failing.attempts == 1
    assert runtime.db.runs.find_one({"_id": "r1"})["status"] == "publishing"
    assert runtime.db.campaigns.find_one({"_id": "campaign-r1"})["status"] == "sending"


def test_publish_failure_retried_later(runtime, scheduler, add_run):
    add_run("r1")
    Scheduler(runtime.db, broker=FailingBroker(), clock=runtime.clock, lease_s=LEASE_S).tick()

    within_lease = scheduler.tick()
    runtime.clock.advance(LEASE_S + 1)
    after_lease = scheduler.tick()

    assert within_lease == 0
    assert after_lease == 1
    assert len(published_runs(runtime.broker)) == 1
    assert runtime.db.runs.find_one({"_id": "r1"})["status"] == "queued"


def test_failure_does_not_block_others(runtime, add_run):
    add_run("r1")
    add_run("r2")
    failing = FailingBroker()

    Scheduler(runtime.db, broker=failing, clock=runtime.clock, lease_s=LEASE_S).tick()

    assert failing.attempts == 2
    assert sorted(run["status"] for run in runtime.db.runs.find()) == ["publishing", "publishing"]


def test_concurrent_schedulers_publish_once(runtime, add_run):
    for index in range(5):
        add_run(f"r{index}")
    schedulers = [Scheduler(runtime.db, broker=runtime.broker, clock=runtime.clock, lease_s=LEASE_S)
                  for _ in range(8)]
    barrier = threading.Barrier(len(schedulers))

    def tick(scheduler: Scheduler) -> None:
        barrier.wait()
        scheduler.tick()

    threads = [threading.Thread(target=tick, args=(scheduler,)) for scheduler in schedulers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    run_ids = sorted(body["run_id"] for body in published_runs(runtime.broker))
    assert run_ids == [f"r{index}" for index in range(5)]


def test_woken_deferred_text_released_at_once(runtime, scheduler):
    job = {"message_id": "r1:a", "to": "+12025550142"}
    runtime.db.messages.insert_one({"_id": "r1:a", "tenant_id": "ACME", "status": "deferred", "job": job,
                                    "deferred_until": runtime.clock.now() + timedelta(hours=1)})

    woken = wake_deferred(runtime.db, "ACME")
    scheduler.tick()

    assert woken == 1
    assert runtime.broker.queue_depth(QUEUE_JOBS) == 1
    assert runtime.db.messages.find_one({"_id": "r1:a"})["status"] == "retrying"


def test_deferred_text_released_when_due(runtime, scheduler):
    job = {"message_id": "r1:+12025550142", "to": "+12025550142"}
    runtime.db.messages.insert_one({"_id": "r1:+12025550142", "status": "deferred", "job": job,
                                    "deferred_until": runtime.clock.now() + timedelta(hours=1)})

    scheduler.tick()
    before = runtime.broker.queue_depth(QUEUE_JOBS)
    runtime.clock.advance(3600)
    scheduler.tick()

    assert before == 0
    assert runtime.broker.queue_depth(QUEUE_JOBS) == 1
    assert runtime.db.messages.find_one({"_id": "r1:+12025550142"})["status"] == "retrying"
