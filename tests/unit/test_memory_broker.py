"""In-process broker: delay steps on a fake clock, headers, isolation and construction."""

from __future__ import annotations

import threading

import pytest

from libs.common.broker import (
    QUEUE_DEAD, QUEUE_JOBS, QUEUE_RUNS, RETRY_DELAYS_S, BrokerClosed, MemoryBroker, MemoryServer,
    RabbitMQBroker, Retry, create_broker, declared_queues, delay_queue_name, partition_of, partition_queue,
)
from libs.common.clock import FakeClock
from tests.broker_support import ConsumerThread, Recorder, wait_until


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def server(clock):
    return MemoryServer(clock)


def _forward_with_retry(broker, attempt: int, delay_s) -> str:
    """Publish at attempt, have the handler raise Retry(delay_s); returns the delay queue used."""
    broker.publish(QUEUE_JOBS, {"n": 1}, headers={"x-attempt": attempt})

    def retry(_delivery):
        raise Retry("transient", delay_s=delay_s)

    names = [delay_queue_name(QUEUE_JOBS, seconds) for seconds in RETRY_DELAYS_S]
    with ConsumerThread(broker, QUEUE_JOBS, Recorder(retry)):
        wait_until(lambda: any(broker.queue_depth(name) for name in names), "the message waits")
    return next(name for name in names if broker.queue_depth(name))


@pytest.mark.parametrize("attempt, delay_s, expected_step", [
    (1, None, 1),
    (2, None, 5),
    (5, None, 600),
    (8, None, 600),
    (1, 0, 1),
    (1, 0.5, 1),
    (1, 1, 1),
    (1, 3, 5),
    (4, 31, 120),
    (1, 601, 600),
])
def test_retry_delay_step(server, attempt, delay_s, expected_step):
    broker = MemoryBroker(server=server, max_attempts=10)

    queue = _forward_with_retry(broker, attempt, delay_s)

    assert queue == delay_queue_name(QUEUE_JOBS, expected_step)


def test_retry_waits_for_full_delay(server, clock):
    broker = MemoryBroker(server=server)
    _forward_with_retry(broker, 1, 5)

    clock.advance(4.5)
    depth_before = broker.queue_depth(QUEUE_JOBS)
    clock.advance(0.5)
    depth_after = broker.queue_depth(QUEUE_JOBS)

    assert depth_before == 0
    assert broker.queue_depth(delay_queue_name(QUEUE_JOBS, 5)) == 0
    assert depth_after == 1


def test_retried_message_counts_attempt(server, clock):
    broker = MemoryBroker(server=server)
    _forward_with_retry(broker, 1, None)
    clock.advance(1)

    recorder = Recorder()
    with ConsumerThread(broker, QUEUE_JOBS, recorder):
        delivery = recorder.wait_for(1)[0]

    assert delivery.attempt == 2
    assert delivery.headers == {}


def test_delivery_hides_broker_headers(server):
    broker = MemoryBroker(server=server)
    broker.publish(QUEUE_JOBS, {"n": 1}, headers={
        "x-attempt": 3, "x-death": [{"reason": "expired"}], "x-first-death-queue": "tm.jobs.retry.1",
        "x-last-death-reason": "expired", "tenant": "T1",
    })

    recorder = Recorder()
    with ConsumerThread(broker, QUEUE_JOBS, recorder):
        delivery = recorder.wait_for(1)[0]

    assert delivery.headers == {"tenant": "T1"}
    assert delivery.attempt == 3


@pytest.mark.parametrize("value", ["3", 0, -1, True, None])
def test_invalid_attempt_header_counts_as_first(server, value):
    broker = MemoryBroker(server=server)
    broker.publish(QUEUE_JOBS, {"n": 1}, headers={"x-attempt": value})

    recorder = Recorder()
    with ConsumerThread(broker, QUEUE_JOBS, recorder):
        delivery = recorder.wait_for(1)[0]

    assert delivery.attempt == 1


def test_stop_requeues_in_order(server):
    broker = MemoryBroker(server=server)
    for n in range(5):
        broker.publish(QUEUE_RUNS, {"n": n})

    consumer: ConsumerThread

    def stop_after_first(_delivery):
        consumer.stop.set()

    consumer = ConsumerThread(broker, QUEUE_RUNS, Recorder(stop_after_first), prefetch=5)
    with consumer:
        consumer.join()
    later = Recorder()
    with ConsumerThread(broker, QUEUE_RUNS, later, prefetch=5):
        rest = later.wait_for(4)

    assert [delivery.body["n"] for delivery in rest] == [1, 2, 3, 4]


def test_competing_consumers_share_work(server):
    first, second = MemoryBroker(server=server), MemoryBroker(server=server)
    first.publish_many(QUEUE_JOBS, ({"n": n} for n in range(50)))

    recorder = Recorder()
    with ConsumerThread(first, QUEUE_JOBS, recorder, prefetch=3), \
            ConsumerThread(second, QUEUE_JOBS, recorder, prefetch=3):
        received = recorder.wait_for(50)

    assert sorted(delivery.body["n"] for delivery in received) == list(range(50))
    assert first.queue_depth(QUEUE_JOBS) == 0


def test_prefix_isolates_queues(server):
    tenant_a = MemoryBroker(server=server, queue_prefix="a.")
    tenant_b = MemoryBroker(server=server, queue_prefix="b.")

    tenant_a.publish(QUEUE_JOBS, {"n": 1})

    assert tenant_a.queue_depth(QUEUE_JOBS) == 1
    assert tenant_b.queue_depth(QUEUE_JOBS) == 0
    assert server.depth("a.tm.jobs") == 1


def test_consume_after_close_raises(server):
    broker = MemoryBroker(server=server)
    broker.close()

    with pytest.raises(BrokerClosed):
        broker.consume(QUEUE_JOBS, Recorder(), prefetch=1, stop=threading.Event())


def test_publish_non_dict_raises(server):
    broker = MemoryBroker(server=server)

    with pytest.raises(TypeError, match="must be a dict"):
        broker.publish(QUEUE_JOBS, ["not", "a", "dict"])


def test_server_and_clock_conflict(server, clock):
    with pytest.raises(ValueError, match="MemoryServer"):
        MemoryBroker(server=server, clock=clock)


@pytest.mark.parametrize("options, message", [
    ({"max_attempts": 0}, "max_attempts"),
    ({"retry_delays_s": ()}, "retry_delays_s"),
    ({"retry_delays_s": (5, 1)}, "retry_delays_s"),
    ({"retry_delays_s": (0, 1)}, "retry_delays_s"),
])
def test_invalid_options_raise(options, message):
    with pytest.raises(ValueError, match=message):
        MemoryBroker(**options)


def test_create_memory_broker():
    assert isinstance(create_broker("memory://"), MemoryBroker)


def test_create_rabbitmq_broker_without_connecting():
    broker = create_broker("amqp://user:secret@127.0.0.1:5672/", queue_prefix="x.")

    assert isinstance(broker, RabbitMQBroker)
    assert broker.queue_prefix == "x."


def test_create_broker_unknown_scheme():
    with pytest.raises(ValueError, match="'redis'") as raised:
        create_broker("redis://user:secret@127.0.0.1/")

    assert "secret" not in str(raised.value)


def test_declared_queues_names():
    assert declared_queues((1, 0.5)) == (
        "tm.runs", "tm.jobs", "tm.imis",
        "tm.runs.retry.1", "tm.runs.retry.0.5",
        "tm.jobs.retry.1", "tm.jobs.retry.0.5",
        "tm.imis.retry.1", "tm.imis.retry.0.5",
        QUEUE_DEAD,
    )


def test_purge_delay_queue(server):
    broker = MemoryBroker(server=server)
    broker.publish(delay_queue_name(QUEUE_JOBS, 30), {"n": 1})

    broker.purge(delay_queue_name(QUEUE_JOBS, 30))

    assert broker.queue_depth(delay_queue_name(QUEUE_JOBS, 30)) == 0


def test_declared_queues_with_partition():
    assert declared_queues((1,), ["tm.jobs.ACME"]) == (
        "tm.runs", "tm.jobs", "tm.imis", "tm.runs.retry.1", "tm.jobs.retry.1", "tm.imis.retry.1",
        QUEUE_DEAD, "tm.jobs.ACME", "tm.jobs.ACME.retry.1",
    )


def test_partition_queue_name():
    assert partition_queue(QUEUE_JOBS, "ACME-2_b") == "tm.jobs.ACME-2_b"


@pytest.mark.parametrize("queue, key", [
    (QUEUE_DEAD, "ACME"),
    (QUEUE_JOBS, ""),
    (QUEUE_JOBS, "a.b"),
    (QUEUE_JOBS, "x" * 65),
    (QUEUE_JOBS, "white space"),
])
def test_partition_queue_invalid(queue, key):
    with pytest.raises(ValueError):
        partition_queue(queue, key)


@pytest.mark.parametrize("name, partition", [
    ("tm.jobs.ACME", "tm.jobs.ACME"),
    ("tm.jobs.ACME.retry.5", "tm.jobs.ACME"),
    ("tm.jobs.retry.5", None),
    ("tm.jobs", None),
    ("tm.dead", None),
    ("tm.dead.ACME", None),
])
def test_partition_of(name, partition):
    assert partition_of(name) == partition


def test_consume_rejects_partition_delay_queue(server):
    broker = MemoryBroker(server=server)

    with pytest.raises(ValueError, match="work queues"):
        broker.consume("tm.jobs.ACME.retry.1", Recorder(), prefetch=1, stop=threading.Event())
