"""The recipients consumer on RabbitMQ: a failed publish mid-run, the broker's redelivery, every text once."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter

import pytest

from libs.common.broker import EXCHANGE, QUEUE_RUNS, PublishError, RabbitMQBroker, declared_queues, tenant_jobs_queue
from libs.common.imis_queue import tenant_imis_queue
from libs.common.process import ConsumerGroup
from services.recipients.service import RunExpander
from services.sender.pacing import Pacer
from services.sender.service import Sender
from tests.conftest import connect_rabbitmq, wait_until
from tests.sender_support import FakeTwilio, delivery
from tests.unit.test_recipients_service import FakeImis, e164, member

pytestmark = pytest.mark.rabbitmq

ROWS = 230
DELAYS = (0.2, 0.4)


@pytest.fixture
def broker(rabbitmq_url):
    prefix = f"test-{uuid.uuid4().hex[:12]}."
    rabbit = RabbitMQBroker(rabbitmq_url, queue_prefix=prefix, retry_delays_s=DELAYS,
                            connection_name=f"tm-test-recipients-{prefix}")
    yield rabbit
    rabbit.close()
    with connect_rabbitmq(rabbitmq_url) as connection:
        channel = connection.channel()
        # The sender publishes each sent text's iMIS job to ACME's partition of `tm.imis`.
        for name in declared_queues(DELAYS, partitions=[tenant_jobs_queue("ACME"), tenant_imis_queue("ACME")]):
            channel.queue_delete(prefix + name)
        channel.exchange_delete(prefix + EXCHANGE)


def take_jobs(broker: RabbitMQBroker) -> list[dict]:
    jobs = []
    with connect_rabbitmq() as connection:
        channel = connection.channel()
        while True:
            method, _, payload = channel.basic_get(broker.queue_prefix + tenant_jobs_queue("ACME"), auto_ack=True)
            if method is None:
                return jobs
            jobs.append(json.loads(payload))


def create_run(db) -> None:
    db.campaigns.insert_one({"_id": "c1", "tenant_id": "ACME", "name": "Spring", "body": "Hi {FirstName}",
                             "iqa_path": "$/TextManager/Members", "status": "sending", "current_run_id": "r1"})
    db.runs.insert_one({"_id": "r1", "tenant_id": "ACME", "campaign_id": "c1", "status": "queued",
                        "counts": {"recipients": 0, "done": 0}, "expanded": False})


def fail_second_batch(broker: RabbitMQBroker, monkeypatch, *, after_publishing: bool) -> list[str]:
    """Make the second publish_many raise PublishError, before or after its jobs went out, and return the calls."""
    publish_many = broker.publish_many
    batches = []

    def flaky(queue, bodies, *, message_ids=None):
        batches.append(queue)
        if len(batches) == 2 and not after_publishing:
            raise PublishError("connection lost before the confirms")
        count = publish_many(queue, bodies, message_ids=message_ids)
        if len(batches) == 2:
            raise PublishError("connection lost after the confirms")
        return count

    monkeypatch.setattr(broker, "publish_many", flaky)
    return batches


def expand_on_rabbitmq(runtime, broker: RabbitMQBroker, imis: FakeImis) -> None:
    """Consume `tm.runs` from RabbitMQ until run r1 is expanded; RabbitMQ redelivers it after a failure."""
    db = runtime.db
    expander = RunExpander(db, broker=broker, tenants=runtime.tenants, imis_factory=lambda tenant: imis,
                           notifier=runtime.notifier, clock=runtime.clock, message_ids=runtime.message_ids,
                           page_size=50, publish_batch=100)
    stop = threading.Event()
    consumers = ConsumerGroup(broker, QUEUE_RUNS, expander.handle, prefetch=1, workers=1, stop=stop,
                              name="recipients-test").start()
    try:
        broker.publish(QUEUE_RUNS, {"tenant_id": "ACME", "campaign_id": "c1", "run_id": "r1"}, message_id="r1")
        wait_until(lambda: db.runs.find_one({"_id": "r1", "expanded": True}), "the run is expanded")
    finally:
        stop.set()
        consumers.join(timeout=10)


def test_publish_failure_redelivered_by_rabbitmq(runtime, tenant_factory, broker, monkeypatch):
    tenant_factory()
    create_run(runtime.db)
    batches = fail_second_batch(broker, monkeypatch, after_publishing=False)
    imis = FakeImis([member(i) for i in range(ROWS)])

    expand_on_rabbitmq(runtime, broker, imis)

    ids = Counter(job["message_id"] for job in take_jobs(broker))
    assert len(batches) == 4
    assert sorted(ids) == sorted(runtime.message_ids.build("r1", e164(i)) for i in range(ROWS))
    assert set(ids.values()) == {1}
    assert runtime.db.runs.find_one({"_id": "r1"})["counts"]["recipients"] == ROWS
    # The redelivered run resumed at the publish checkpoint, without reading iMIS again.
    assert len(imis.calls) == 1


def test_batch_published_twice_texts_once(runtime, tenant_factory, broker, monkeypatch):
    """The second batch went out, then its publish failed: RabbitMQ contains it twice, and each number gets one text."""
    tenant_factory()
    create_run(runtime.db)
    fail_second_batch(broker, monkeypatch, after_publishing=True)
    expand_on_rabbitmq(runtime, broker, FakeImis([member(i) for i in range(ROWS)]))
    jobs = take_jobs(broker)
    twilio = FakeTwilio(runtime.clock)
    sender = Sender(runtime.db, broker=runtime.broker, tenants=runtime.tenants,
                    twilio_factory=lambda sid, token: twilio, pacer=Pacer(runtime.db, runtime.clock),
                    notifier=runtime.notifier, clock=runtime.clock, public_callback_url="http://feedback.invalid")

    for job in jobs:
        sender.handle(delivery(job))

    ids = Counter(job["message_id"] for job in jobs)
    second_batch = [runtime.message_ids.build("r1", e164(i)) for i in range(100, 200)]
    assert len(jobs) == ROWS + 100
    assert sorted(message_id for message_id, count in ids.items() if count == 2) == sorted(second_batch)
    assert sorted(twilio.create_counts()) == sorted(e164(i) for i in range(ROWS))
    assert set(twilio.create_counts().values()) == {1}
    assert runtime.db.runs.find_one({"_id": "r1"})["counts"]["sent"] == ROWS
