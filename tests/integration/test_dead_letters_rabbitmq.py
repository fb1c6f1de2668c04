"""Dead-letter handler on RabbitMQ: a job that keeps failing dies, and its text and run still end."""

from __future__ import annotations

import pytest
from pymongo.errors import AutoReconnect

from libs.common.broker import QUEUE_DEAD
from libs.common.clock import SystemClock
from services.scheduler.dead_letters import DeadLetterHandler
from tests.broker_support import AMQP_URL, ConsumerThread, RabbitHarness, wait_until
from tests.sender_support import SenderWorld

pytestmark = pytest.mark.rabbitmq

MAX_ATTEMPTS = 3
# A claim lapses well before the next attempt, which comes after the 0.2 s or 0.4 s delay step.
LEASE_S = 0.05


@pytest.fixture
def harness():
    harness = RabbitHarness(AMQP_URL)
    yield harness
    harness.close()


@pytest.fixture
def world():
    world = SenderWorld(SystemClock(), max_attempts=MAX_ATTEMPTS)
    yield world
    world.close()


def test_dead_job_ends_failed(harness, world):
    tenant = world.tenant()
    job = world.run(tenant, 1)[0]
    broker = harness.make(max_attempts=MAX_ATTEMPTS)
    queue = harness.partition(tenant.cloud_id)

    def store_fails(step: str) -> None:
        if step == "claimed":
            raise AutoReconnect("the store did not respond")

    sender = world.sender(broker, checkpoint=store_fails, lease_s=LEASE_S)
    handler = DeadLetterHandler(world.db, broker=broker, tenants=world.tenants, twilio_factory=lambda sid, token: world.twilio,
                                notifier=world.notifier, clock=world.clock, queue_prefix=harness.prefix,
                                retry_pause_s=0.2)
    broker.publish(queue, job, message_id=job["message_id"])

    with ConsumerThread(broker, queue, sender.handle), ConsumerThread(broker, QUEUE_DEAD, handler.handle):
        wait_until(lambda: world.run_document(job["run_id"])["status"] == "completed", "the run completed")

    message = world.message(job)
    assert message["status"] == "failed"
    assert message["reason"] == f"gave up after {MAX_ATTEMPTS} attempts: AutoReconnect: the store did not respond"
    assert message["attempts"] == MAX_ATTEMPTS
    counts = world.run_document(job["run_id"])["counts"]
    assert counts["failed"] == 1
    assert counts["done"] == 1
    assert world.twilio.calls == 0
    assert broker.queue_depth(QUEUE_DEAD) == 0
    assert world.db.dead_letters.count_documents({}) == 0
