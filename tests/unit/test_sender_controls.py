"""Pause, resume and cancel between texts, and the daily allowance with its midnight release."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest
from pymongo.errors import DuplicateKeyError

from libs.common.broker import tenant_jobs_queue
from libs.common.clock import FakeClock
from services.gateway.service import CampaignService
from services.scheduler.service import Scheduler
from services.sender.pacing import Pacer
from tests.sender_fixtures import clock, world  # noqa: F401 (fixtures)
from tests.sender_support import FAKE_START, WAIT_S, Instance, SenderWorld, delivery, twilio_error

QUEUE = tenant_jobs_queue("ACME")


@pytest.fixture
def campaigns(world):
    return CampaignService(world.db, broker=world.broker(), clock=world.clock)


def wait_for(predicate, description: str, world: SenderWorld | None = None, advance_s: float = 0.0) -> None:
    """Poll predicate for up to WAIT_S of real time, moving the fake clock by advance_s between polls."""
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {description}"
        if world is not None and advance_s:
            world.clock.advance(advance_s)
        time.sleep(0.01)


# ------------------------------------------------------------------ pause and resume


def test_pause_and_resume(world, campaigns):
    """100 members, paused after 40 texts, resumed: 100 texts in all and none while paused."""
    tenant = world.tenant(sender_rate_sps=100.0)
    jobs = world.run(tenant, 100)
    run_id, campaign_id = jobs[0]["run_id"], jobs[0]["campaign_id"]
    world.publish(world.broker(), jobs)

    def pause_at_40(_create) -> None:
        if len(world.twilio.creates) == 40:
            campaigns.pause("ACME", campaign_id)

    world.twilio.after_create = pause_at_40
    instance = Instance(world, QUEUE, workers=2).start()
    wait_for(lambda: world.statuses(run_id).get("paused", 0) + world.statuses(run_id).get("sent", 0) == 100,
             "every text is sent or set aside")
    at_pause = len(world.twilio.creates)
    world.clock.advance(3600)
    time.sleep(0.2)
    while_paused = len(world.twilio.creates)

    campaigns.resume("ACME", campaign_id)
    wait_for(lambda: world.run_document(run_id)["counts"]["sent"] == 100, "every text is sent")
    instance.join()

    counts = world.twilio.create_counts()
    assert at_pause in (40, 41)
    assert while_paused == at_pause
    assert len(counts) == 100
    assert set(counts.values()) == {1}
    assert world.run_document(run_id)["status"] == "sending"


def test_pause_during_slot_wait(world):
    """A text waiting for its send slot when staff pause is not sent."""
    tenant = world.tenant(sender_rate_sps=1.0)
    jobs = world.run(tenant, 2)
    run_id = jobs[0]["run_id"]

    class PausingClock(FakeClock):
        def sleep(self, seconds: float) -> None:
            world.db.runs.update_one({"_id": run_id}, {"$set": {"status": "paused"}})
            super().sleep(seconds)

    pausing = PausingClock(start=FAKE_START)
    sender = world.sender(world.broker(), clock=pausing, pacer=Pacer(world.db, pausing))
    sender.handle(delivery(jobs[0]))

    sender.handle(delivery(jobs[1]))

    assert world.twilio.calls == 1
    assert world.message(jobs[1])["status"] == "paused"
    assert world.db.usage.find_one({})["count"] == 1


@pytest.mark.parametrize("resume_first", [True, False], ids=["resume-before-park", "resume-after-park"])
def test_resume_while_parking_publishes_once(world, campaigns, resume_first):
    tenant = world.tenant()
    job = world.run(tenant, 1)[0]
    world.db.runs.update_one({"_id": job["run_id"]}, {"$set": {"status": "paused"}})
    broker = world.broker()
    sender = world.sender(broker)
    park = sender._park

    def park_around_resume(*args, **kwargs) -> None:
        if resume_first:
            campaigns.resume("ACME", job["campaign_id"])
        park(*args, **kwargs)
        if not resume_first:
            campaigns.resume("ACME", job["campaign_id"])

    sender._park = park_around_resume
    sender.handle(delivery(job))

    assert broker.queue_depth(QUEUE) == 1
    assert world.message(job)["status"] == "retrying"


def test_cancel_stops_remaining(world, campaigns):
    tenant = world.tenant(sender_rate_sps=100.0)
    jobs = world.run(tenant, 50)
    run_id, campaign_id = jobs[0]["run_id"], jobs[0]["campaign_id"]
    world.publish(world.broker(), jobs)

    def cancel_at_10(_create) -> None:
        if len(world.twilio.creates) == 10:
            campaigns.cancel("ACME", campaign_id)

    world.twilio.after_create = cancel_at_10
    instance = Instance(world, QUEUE).start()
    wait_for(lambda: sum(world.statuses(run_id).values()) == 50 and "sending" not in world.statuses(run_id),
             "every text is sent or cancelled")
    instance.join()

    statuses = world.statuses(run_id)
    run = world.run_document(run_id)
    assert len(world.twilio.creates) == 10
    assert statuses == {"sent": 10, "cancelled": 40}
    assert run["status"] == "cancelled"
    assert run["counts"]["cancelled"] == 40
    assert run["counts"]["skipped"] == 0
    assert world.db.campaigns.find_one({"_id": campaign_id})["status"] == "cancelled"


def test_cancel_paused_texts(world, campaigns):
    tenant = world.tenant()
    jobs = world.run(tenant, 3)
    world.db.runs.update_one({"_id": jobs[0]["run_id"]}, {"$set": {"status": "paused"}})
    sender = world.sender(world.broker())
    for job in jobs:
        sender.handle(delivery(job))

    campaigns.cancel("ACME", jobs[0]["campaign_id"])

    assert world.statuses(jobs[0]["run_id"]) == {"cancelled": 3}
    assert world.run_document(jobs[0]["run_id"])["counts"]["done"] == 3
    assert world.twilio.calls == 0


# ------------------------------------------------------------------ daily allowance


def test_allowance_defers_to_midnight(world):
    tenant = world.tenant(daily_limit=5, timezone="Pacific/Auckland")
    jobs = world.run(tenant, 8)
    sender = world.sender(world.broker())

    for job in jobs:
        sender.handle(delivery(job))

    deferred = [world.message(job) for job in jobs[5:]]
    assert len(world.twilio.creates) == 5
    assert [message["status"] for message in deferred] == ["deferred"] * 3
    # 2100-01-01 00:00 UTC is 13:00 in Auckland (UTC+13): the next local midnight is 11:00 UTC.
    midnight = datetime(2100, 1, 1, 11, 0, tzinfo=timezone.utc)
    assert all(message["deferred_until"].replace(tzinfo=timezone.utc) == midnight for message in deferred)
    assert deferred[0]["reason"] == "daily allowance used up"
    assert world.db.usage.find_one({"_id": "ACME:2100-01-01"})["count"] == 5


def test_deferred_released_after_midnight(world):
    tenant = world.tenant(daily_limit=5, timezone="Pacific/Auckland")
    jobs = world.run(tenant, 8)
    broker = world.broker()
    sender = world.sender(broker)
    for job in jobs:
        sender.handle(delivery(job))
    scheduler = Scheduler(world.db, broker=broker, clock=world.clock)
    world.server.declare_partition("", QUEUE, broker.retry_delays_s)

    scheduler.tick()
    before_midnight = broker.queue_depth(QUEUE)
    world.clock.advance(11 * 3600)
    scheduler.tick()
    released = broker.queue_depth(QUEUE)
    for message in world.server.take(QUEUE, 10):
        sender.handle(delivery(json.loads(message.payload)))

    assert before_midnight == 0
    assert released == 3
    assert len(world.twilio.creates) == 8
    assert world.db.usage.find_one({"_id": "ACME:2100-01-02"})["count"] == 3
    assert world.run_document(jobs[0]["run_id"])["counts"]["sent"] == 8


def test_allowance_held_across_instances(world):
    """Three instances of two workers each never send past the allowance together."""
    tenant = world.tenant(daily_limit=50, sender_rate_sps=1000.0)
    jobs = world.run(tenant, 80)
    world.publish(world.broker(), jobs)
    run_id = jobs[0]["run_id"]

    instances = [Instance(world, QUEUE, workers=2).start() for _ in range(3)]
    wait_for(lambda: world.statuses(run_id) == {"sent": 50, "deferred": 30}, "50 sent and 30 deferred")
    for instance in instances:
        instance.join()

    assert len(world.twilio.creates) == 50
    assert world.db.usage.find_one({"_id": "ACME:2099-12-31"})["count"] == 50


def test_allowance_first_insert_race(world):
    """Another instance creates the day's usage document between our read and our insert."""

    class RacingUsage:
        def __init__(self, collection):
            self._collection = collection
            self.raced = False

        def find_one_and_update(self, query, update, **options):
            if options.get("upsert") and not self.raced:
                self.raced = True
                self._collection.insert_one({"_id": query["_id"], "count": 1, "tenant_id": "ACME"})
                raise DuplicateKeyError("E11000 duplicate key error")
            return self._collection.find_one_and_update(query, update, **options)

        def __getattr__(self, name):
            return getattr(self._collection, name)

    class Database:
        def __init__(self, db, usage):
            self._db, self.usage = db, usage

        def __getattr__(self, name):
            return getattr(self._db, name)

    tenant = world.tenant()
    job = world.run(tenant, 1)[0]
    usage = RacingUsage(world.db.usage)
    sender = world.sender(world.broker())
    sender._db = Database(world.db, usage)

    sender.handle(delivery(job))

    assert usage.raced is True
    assert world.message(job)["status"] == "sent"
    assert world.db.usage.find_one({})["count"] == 2


def test_opt_out_frees_allowance(world):
    tenant = world.tenant(daily_limit=1)
    jobs = world.run(tenant, 2)
    world.twilio.fail(jobs[0]["to"], twilio_error(21610))
    sender = world.sender(world.broker())

    for job in jobs:
        sender.handle(delivery(job))

    assert world.message(jobs[0])["status"] == "opted_out"
    assert world.message(jobs[1])["status"] == "sent"


# ------------------------------------------------------------------ late starts


class OversleepingClock(FakeClock):
    """A fake clock whose first `late_sleeps` sleeps end 10 ms late, as on a busy CPU."""

    def __init__(self, late_sleeps: int):
        super().__init__(start=FAKE_START)
        self.late_sleeps = late_sleeps

    def sleep(self, seconds: float) -> None:
        if seconds > 0 and self.late_sleeps > 0:
            self.late_sleeps -= 1
            seconds += 0.010
        super().sleep(seconds)


def test_late_start_takes_later_slot(world):
    # At 6 per second each wait is one sleep, shorter than the stop check interval.
    tenant = world.tenant(sender_rate_sps=6.0)
    jobs = world.run(tenant, 2)
    late = OversleepingClock(late_sleeps=1)
    world.twilio._clock = late
    sender = world.sender(world.broker(), clock=late, pacer=Pacer(world.db, late))

    for job in jobs:
        sender.handle(delivery(job))

    first, second = world.twilio.creates
    assert second.at - first.at == pytest.approx(2 / 6)


def test_late_starts_bounded(world):
    tenant = world.tenant(sender_rate_sps=6.0)
    jobs = world.run(tenant, 2)
    late = OversleepingClock(late_sleeps=100)
    world.twilio._clock = late
    sender = world.sender(world.broker(), clock=late, pacer=Pacer(world.db, late))

    for job in jobs:
        sender.handle(delivery(job))

    first, second = world.twilio.creates
    assert second.at - first.at == pytest.approx(3 / 6 + 0.010)
    assert world.message(jobs[1])["status"] == "sent"
