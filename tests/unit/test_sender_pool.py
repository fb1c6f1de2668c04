"""Sender instance: a consumer group per tenant's queue, sized from rate and latency, and fair."""

from __future__ import annotations

import json
import threading
import time

import pytest

from libs.common.broker import QUEUE_JOBS, Reject, tenant_jobs_queue
from libs.common.clock import FakeClock, SystemClock
from services.sender.main import MAX_WORKERS_PER_QUEUE, SenderPool, tenant_rates, workers_for
from tests.sender_support import FAKE_START, WAIT_S, SenderWorld, delivery


def wait_for(predicate, description: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {description}"
        time.sleep(0.01)


def start_pool(world: SenderWorld, broker, sender, stop: threading.Event, **options) -> SenderPool:
    values = dict(tenant_rates=lambda: tenant_rates(world.db), latency_s=lambda: sender.latency.mean_s, stop=stop,
                  shared_workers=1, route=sender.route)
    values.update(options)
    return SenderPool(broker, sender.handle, **values).start()


@pytest.mark.parametrize("rate, latency_s, workers", [
    (1, 0.3, 2),
    (3, 0.3, 2),
    (3, 1.0, 4),
    (100, 0.1, 11),
    (100, 0.3, 31),
    (100, 2.0, MAX_WORKERS_PER_QUEUE),
    (float("inf"), 0.1, MAX_WORKERS_PER_QUEUE),
])
def test_workers_follow_rate_and_latency(rate, latency_s, workers):
    assert workers_for(rate, latency_s) == workers


@pytest.fixture
def fake_world():
    world = SenderWorld(FakeClock(start=FAKE_START))
    yield world
    world.close()


def test_pool_consumes_each_tenant(fake_world):
    world = fake_world
    world.tenant("ACME", sender_rate_sps=3.0)
    world.tenant("BETA", sender_rate_sps=100.0)
    broker = world.broker()
    stop = threading.Event()

    pool = start_pool(world, broker, world.sender(broker), stop)
    wait_for(lambda: broker.consumers(tenant_jobs_queue("BETA")) == 31, "every worker is connected")
    consuming = pool.consuming
    stop.set()
    pool.join(WAIT_S)

    assert sorted(pool.queues) == sorted([QUEUE_JOBS, tenant_jobs_queue("ACME"), tenant_jobs_queue("BETA")])
    assert pool.workers(tenant_jobs_queue("ACME")) == 2
    assert pool.workers(tenant_jobs_queue("BETA")) == 31
    assert consuming is True
    assert pool.consuming is False


def test_pool_finds_new_tenant(fake_world):
    world = fake_world
    world.tenant("ACME")
    broker = world.broker()
    stop = threading.Event()
    pool = start_pool(world, broker, world.sender(broker), stop, refresh_s=3600)

    world.tenant("GAMMA")
    pool.refresh()
    stop.set()
    pool.join(WAIT_S)

    assert pool.workers(tenant_jobs_queue("GAMMA")) == 2


def test_pool_grows_with_latency(fake_world):
    world = fake_world
    world.tenant("ACME", sender_rate_sps=10.0)
    broker = world.broker()
    stop = threading.Event()
    latency = {"s": 0.1}
    pool = start_pool(world, broker, world.sender(broker), stop, latency_s=lambda: latency["s"], refresh_s=3600)
    before = pool.workers(tenant_jobs_queue("ACME"))

    latency["s"] = 0.5
    pool.refresh()
    stop.set()
    pool.join(WAIT_S)

    assert before == 2
    assert pool.workers(tenant_jobs_queue("ACME")) == 6


@pytest.mark.parametrize("published_to", ["tenant queues", "tm.jobs"])
def test_busy_tenant_does_not_starve_other(published_to):
    """Tenant A has 500 texts queued at 3 per second; tenant B's 5 texts go out meanwhile.

    Real time: every worker really sleeps until its send slot, as in production. Jobs
    published to the shared `tm.jobs`, A's first, are moved to their tenants' queues.
    """
    world = SenderWorld(SystemClock())
    try:
        world.tenant("ALPHA", sender_rate_sps=3.0, sender_number="+18885550101")
        world.tenant("BETA", sender_rate_sps=3.0, sender_number="+18885550102")
        alpha_jobs = world.run(world.tenants.get("ALPHA"), 500)
        beta_jobs = world.run(world.tenants.get("BETA"), 5, first=500)
        broker = world.broker()
        queue = QUEUE_JOBS if published_to == "tm.jobs" else None
        world.publish(broker, alpha_jobs, queue)
        world.publish(broker, beta_jobs, queue)
        stop = threading.Event()
        sender = world.sender(broker, stopping=stop)

        pool = start_pool(world, broker, sender, stop)
        wait_for(lambda: world.run_document(beta_jobs[0]["run_id"])["counts"]["sent"] == 5, "B's texts are sent")
        alpha_sent = world.run_document(alpha_jobs[0]["run_id"])["counts"]["sent"]
        stop.set()
        pool.join(WAIT_S)
    finally:
        world.close()

    # B's 5 texts at 3 per second take about 1.4 s, in which A sends about 5 of its 500.
    assert alpha_sent < 20


def test_route_moves_job_to_tenant_queue(fake_world):
    world = fake_world
    tenant = world.tenant()
    job = world.run(tenant, 1)[0]
    broker = world.broker()

    world.sender(broker).route(delivery(job))

    moved = world.server.take(tenant_jobs_queue("ACME"), 10)
    assert [json.loads(message.payload) for message in moved] == [job]
    assert moved[0].message_id == job["message_id"]


@pytest.mark.parametrize("change", [{"segments": "many"}, {"tenant_id": "NOBODY"}, {"tenant_id": "a.b"}])
def test_route_rejects_invalid_job(fake_world, change):
    world = fake_world
    tenant = world.tenant()
    job = dict(world.run(tenant, 1)[0], **change)

    with pytest.raises(Reject):
        world.sender(world.broker()).route(delivery(job, queue=QUEUE_JOBS))
