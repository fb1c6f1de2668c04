"""RabbitMQ-only behaviour: message properties, topology, lost connections, heartbeats."""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
import time

import pytest

from libs.common.broker import (
    QUEUE_DEAD, QUEUE_IMIS, QUEUE_JOBS, PublishError, RabbitMQBroker, declared_queues,
    delay_queue_name, partition_queue,
)
from tests.broker_support import (
    AMQP_URL, DELAYS, WAIT_S, ConsumerThread, RabbitHarness, Recorder, connect_or_fail, wait_until,
)

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def harness():
    harness = RabbitHarness(AMQP_URL)
    yield harness
    harness.close()


def _consumer_activity(queue_name: str) -> list[str]:
    """Return the `active` column of each consumer of one queue, as rabbitmqctl prints it."""
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_consumers", "--no-table-headers", "queue_name", "active"],
        capture_output=True, text=True, check=True, timeout=WAIT_S).stdout
    return [line.split("\t")[1] for line in listing.splitlines() if line.split("\t")[0] == queue_name]


def _list_queues(prefix: str) -> dict[str, tuple[str, str]]:
    """Return durable flag and arguments of every queue under prefix, as rabbitmqctl prints them."""
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "--no-table-headers", "name", "durable", "arguments"],
        capture_output=True, text=True, check=True, timeout=WAIT_S).stdout
    queues = {}
    for line in listing.splitlines():
        name, durable, arguments = line.split("\t")
        if name.startswith(prefix):
            queues[name[len(prefix):]] = (durable, arguments)
    return queues


def test_message_is_persistent_json(harness):
    broker = harness.make()
    broker.publish(QUEUE_JOBS, {"to": "+15555550100"}, headers={"tenant": "T1"}, message_id="m1")

    with connect_or_fail(AMQP_URL) as connection:
        method, properties, payload = connection.channel().basic_get(harness.prefix + QUEUE_JOBS,
                                                                     auto_ack=True)

    assert properties.delivery_mode == 2
    assert properties.content_type == "application/json"
    assert properties.message_id == "m1"
    assert properties.headers == {"tenant": "T1"}
    assert payload == b'{"to":"+15555550100"}'


def test_topology_is_durable(harness):
    harness.make().queue_depth(QUEUE_JOBS)

    queues = _list_queues(harness.prefix)

    assert sorted(queues) == sorted(declared_queues(DELAYS))
    assert all(durable == "true" for durable, _ in queues.values())


def test_every_queue_keeps_its_messages_on_disk(harness):
    """Long job queues must not hold persistent messages in memory as well (QUEUE_STORAGE)."""
    harness.make().queue_depth(QUEUE_JOBS)

    queues = _list_queues(harness.prefix)

    for name, (_, arguments) in queues.items():
        assert '{"x-queue-mode","lazy"}' in arguments, name
        assert '{"x-queue-version",2}' in arguments, name


def test_batch_declares_deleted_queue_again(harness):
    """Batches skip the topology once declared, so a queue deleted since fails one batch, not every one."""
    broker = harness.make()
    broker.publish_many(QUEUE_JOBS, [{"n": 1}])
    with connect_or_fail(AMQP_URL) as connection:
        connection.channel().queue_delete(harness.prefix + QUEUE_JOBS)

    with pytest.raises(PublishError, match="1 unroutable"):
        broker.publish_many(QUEUE_JOBS, [{"n": 2}])

    assert broker.publish_many(QUEUE_JOBS, [{"n": 3}]) == 1
    assert broker.queue_depth(QUEUE_JOBS) == 1


def test_imis_partition_has_one_active_consumer(harness):
    """Two feedback processes wait on a tenant's iMIS queue; RabbitMQ hands its writes to one only."""
    queue = partition_queue(QUEUE_IMIS, "ACME")
    publisher, first_broker, second_broker = harness.make(), harness.make(), harness.make()
    first, second = Recorder(), Recorder()

    with ConsumerThread(first_broker, queue, first, prefetch=1), \
            ConsumerThread(second_broker, queue, second, prefetch=1):
        wait_until(lambda: sorted(_consumer_activity(harness.prefix + queue)) == ["false", "true"],
                   "one consumer is active and the other waits")
        publisher.publish_many(queue, [{"n": n} for n in range(10)])
        wait_until(lambda: len(first.deliveries) + len(second.deliveries) == 10, "10 writes are handled")

    counts = sorted([len(first.deliveries), len(second.deliveries)])
    _, arguments = _list_queues(harness.prefix)[queue]
    assert counts == [0, 10]
    assert '{"x-single-active-consumer",true}' in arguments


def test_delay_queue_arguments(harness):
    harness.make().queue_depth(QUEUE_JOBS)

    _, arguments = _list_queues(harness.prefix)[delay_queue_name(QUEUE_IMIS, 0.4)]

    assert '{"x-message-ttl",400}' in arguments
    assert f'{{"x-dead-letter-routing-key","{harness.prefix}{QUEUE_IMIS}"}}' in arguments
    assert f'{{"x-dead-letter-exchange","{harness.prefix}tm"}}' in arguments


def test_rejected_message_goes_to_dead_queue(harness):
    """A work queue dead-letters what a consumer rejects, so nothing rejected is lost."""
    harness.make().publish(QUEUE_JOBS, {"n": 1}, message_id="m1")

    with connect_or_fail(AMQP_URL) as connection:
        channel = connection.channel()
        method, _, _ = channel.basic_get(harness.prefix + QUEUE_JOBS)
        channel.basic_reject(method.delivery_tag, requeue=False)
    dead = harness.take(QUEUE_DEAD)

    assert dead.message_id == "m1"
    assert dead.headers["x-death"][0]["reason"] == "rejected"


def test_consumer_survives_killed_connection(harness, caplog):
    broker = harness.make()
    ids = [f"m{n}" for n in range(40)]
    broker.publish_many(QUEUE_JOBS, ({"n": n} for n in range(40)), message_ids=ids)

    paused = threading.Event()
    resume = threading.Event()

    def pause_at_m10(delivery):
        if delivery.message_id == "m10" and not paused.is_set():
            paused.set()
            assert resume.wait(WAIT_S)

    recorder = Recorder(pause_at_m10)
    with caplog.at_level(logging.WARNING, logger="libs.common.broker"):
        with ConsumerThread(broker, QUEUE_JOBS, recorder, prefetch=5):
            assert paused.wait(WAIT_S)
            closed = harness.close_connection(f"{harness.connection_names[0]} consumer {QUEUE_JOBS}")
            resume.set()
            wait_until(lambda: {d.message_id for d in recorder.deliveries} == set(ids),
                       "every message was handled")
            wait_until(lambda: broker.queue_depth(QUEUE_JOBS) == 0, "the queue is empty")

    m10 = [delivery for delivery in recorder.deliveries if delivery.message_id == "m10"]
    assert closed == 1
    assert len(m10) == 2
    assert m10[1].redelivered is True
    assert broker.queue_depth(QUEUE_JOBS) == 0
    assert any("reconnecting in" in record.getMessage() for record in caplog.records)


def test_publish_survives_killed_connection(harness):
    broker = harness.make()
    broker.publish(QUEUE_JOBS, {"n": 1})

    closed = harness.close_connection(f"{harness.connection_names[0]} publisher")
    broker.publish(QUEUE_JOBS, {"n": 2})

    assert closed == 1
    assert broker.queue_depth(QUEUE_JOBS) == 2


def test_abandon_returns_before_handler_finishes(harness):
    broker = harness.make()
    broker.publish(QUEUE_JOBS, {"n": 1})

    gate = threading.Event()
    recorder = Recorder(lambda _delivery: gate.wait(WAIT_S))
    consumer = ConsumerThread(broker, QUEUE_JOBS, recorder)
    with consumer:
        recorder.wait_for(1)
        broker.abandon()
        consumer.join()
        returned_while_blocked = not gate.is_set()
        gate.set()

    assert returned_while_blocked is True


def test_consumer_retries_unreachable_server(harness, caplog):
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        free_port = placeholder.getsockname()[1]
    broker = RabbitMQBroker(f"amqp://guest:guest@127.0.0.1:{free_port}/", queue_prefix=harness.prefix,
                            connection_name=f"tm-test-{harness.token}-unreachable",
                            reconnect_max_s=0.5)

    def reconnects() -> int:
        return sum("reconnecting in" in record.getMessage() for record in caplog.records)

    with caplog.at_level(logging.WARNING, logger="libs.common.broker"):
        with ConsumerThread(broker, QUEUE_JOBS, Recorder()):
            wait_until(lambda: reconnects() >= 3, "the consumer tried to connect 3 times")

    assert reconnects() >= 3


@pytest.mark.slow
def test_long_handler_keeps_connection(harness, caplog):
    """The connection keeps sending heartbeats while a handler runs past the timeout."""
    broker = harness.make(heartbeat_s=1)
    broker.publish(QUEUE_JOBS, {"n": 1}, message_id="m1")

    finished = threading.Event()

    def slow_handler(_delivery):
        # With a 1 s heartbeat, RabbitMQ 3.10 drops a connection that stays silent for 5 s.
        time.sleep(5)
        finished.set()

    recorder = Recorder(slow_handler)
    with caplog.at_level(logging.WARNING, logger="libs.common.broker"):
        with ConsumerThread(broker, QUEUE_JOBS, recorder):
            assert finished.wait(WAIT_S)
            wait_until(lambda: broker.queue_depth(QUEUE_JOBS) == 0, "the queue is empty")

    assert len(recorder.deliveries) == 1
    assert broker.queue_depth(QUEUE_JOBS) == 0
    assert not any("reconnecting" in record.getMessage() for record in caplog.records)
