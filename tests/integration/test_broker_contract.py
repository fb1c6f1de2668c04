"""Behaviour every broker must show, run against the in-process broker and RabbitMQ."""

from __future__ import annotations

import logging
import threading

import pytest

from libs.common.broker import (
    ATTEMPT_HEADER, DEAD_ATTEMPT_HEADER, DEATH_REASON_HEADER, ORIGINAL_QUEUE_HEADER, QUEUE_DEAD,
    QUEUE_JOBS, QUEUE_RUNS, BrokerClosed, PublishError, Reject, Retry, delay_queue_name,
)
from tests.broker_support import (
    AMQP_URL, DELAYS, WAIT_S, ConsumerThread, MemoryHarness, RabbitHarness, Recorder, wait_until,
)

@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def harness(request):
    harness = MemoryHarness() if request.param == "memory" else RabbitHarness(AMQP_URL)
    yield harness
    harness.close()


def _block_until(gate: threading.Event):
    def behaviour(_delivery) -> None:
        assert gate.wait(WAIT_S), "the test never opened the gate"
    return behaviour


# Round trip and acknowledgement

def test_round_trip_keeps_body_and_headers(harness):
    broker = harness.make()
    body = {"text": "Grüße 👋", "count": 3, "nested": {"values": [1, 2.5, None, True]}}
    broker.publish(QUEUE_JOBS, body, headers={"tenant": "T1", "pages": 2}, message_id="run1:+15550100")

    recorder = Recorder()
    with ConsumerThread(broker, QUEUE_JOBS, recorder):
        delivery = recorder.wait_for(1)[0]

    assert delivery.queue == QUEUE_JOBS
    assert delivery.body == body
    assert delivery.headers == {"tenant": "T1", "pages": 2}
    assert delivery.message_id == "run1:+15550100"
    assert delivery.attempt == 1
    assert delivery.redelivered is False


def test_message_without_id_or_headers(harness):
    broker = harness.make()
    broker.publish(QUEUE_RUNS, {"run_id": "r1"})

    recorder = Recorder()
    with ConsumerThread(broker, QUEUE_RUNS, recorder):
        delivery = recorder.wait_for(1)[0]

    assert delivery.message_id is None
    assert delivery.headers == {}


def test_acked_after_handler_returns(harness):
    broker = harness.make()
    broker.publish(QUEUE_JOBS, {"n": 1})

    recorder = Recorder()
    with ConsumerThread(broker, QUEUE_JOBS, recorder):
        recorder.wait_for(1)

    # Stopping puts unacked messages back, so an empty queue means the ack was sent.
    assert broker.queue_depth(QUEUE_JOBS) == 0


def test_unacked_while_handler_runs(harness):
    broker = harness.make()
    observer = harness.make()
    broker.publish(QUEUE_JOBS, {"n": 1})

    gate = threading.Event()
    consumer = ConsumerThread(broker, QUEUE_JOBS, Recorder(_block_until(gate)))
    with consumer:
        wait_until(lambda: observer.queue_depth(QUEUE_JOBS) == 0, "the consumer holds the message")
        broker.abandon()
        wait_until(lambda: observer.queue_depth(QUEUE_JOBS) == 1, "the message is back in its queue")
        gate.set()

    assert observer.queue_depth(QUEUE_JOBS) == 1


# Reject, Retry and dead-lettering

def test_reject_dead_letters_with_reason(harness):
    broker = harness.make()
    broker.publish(QUEUE_JOBS, {"tenant_id": "nope"}, headers={"tenant": "nope"}, message_id="m1")

    def reject(_delivery):
        raise Reject("unknown tenant 'nope'")

    with ConsumerThread(broker, QUEUE_JOBS, Recorder(reject)):
        dead = harness.take(QUEUE_DEAD)

    assert dead.headers[DEATH_REASON_HEADER] == "unknown tenant 'nope'"
    assert dead.headers[ORIGINAL_QUEUE_HEADER] == QUEUE_JOBS
    assert dead.headers["tenant"] == "nope"
    assert dead.message_id == "m1"
    assert dead.payload == b'{"tenant_id":"nope"}'
    assert broker.queue_depth(QUEUE_JOBS) == 0


def test_retry_returns_with_next_attempt(harness):
    broker = harness.make()
    broker.publish(QUEUE_JOBS, {"n": 1}, headers={"tenant": "T1"}, message_id="m1")

    def retry_first(delivery):
        if delivery.attempt == 1:
            raise Retry("Twilio did not answer", delay_s=0.1)

    recorder = Recorder(retry_first)
    with ConsumerThread(broker, QUEUE_JOBS, recorder):
        harness.let_delay_pass(QUEUE_JOBS, DELAYS[0])
        first, second = recorder.wait_for(2)

    assert first.attempt == 1
    assert second.attempt == 2
    assert second.body == {"n": 1}
    assert second.headers == {"tenant": "T1"}
    assert second.message_id == "m1"
    assert second.redelivered is False
    assert broker.queue_depth(QUEUE_JOBS) == 0


def test_max_attempts_dead_letters(harness):
    broker = harness.make(max_attempts=2)
    broker.publish(QUEUE_JOBS, {"n": 1}, message_id="m1")

    def always_retry(_delivery):
        raise Retry("iMIS unavailable")

    recorder = Recorder(always_retry)
    with ConsumerThread(broker, QUEUE_JOBS, recorder):
        harness.let_delay_pass(QUEUE_JOBS, DELAYS[0])
        dead = harness.take(QUEUE_DEAD)

    assert [delivery.attempt for delivery in recorder.deliveries] == [1, 2]
    assert dead.headers[DEATH_REASON_HEADER] == "gave up after 2 attempts: iMIS unavailable"
    assert dead.headers[ORIGINAL_QUEUE_HEADER] == QUEUE_JOBS
    assert dead.headers[ATTEMPT_HEADER] == 2
    assert dead.message_id == "m1"


@pytest.mark.parametrize("payload, reason_start", [
    (b"{not json", "body is not valid JSON"),
    (b"\xff\xfe\x00", "body is not valid JSON"),
    (b"[1, 2]", "body is a JSON list, not an object"),
])
def test_undecodable_body_dead_letters(harness, payload, reason_start):
    broker = harness.make()
    harness.publish_raw(QUEUE_JOBS, payload, "m1")

    recorder = Recorder()
    with ConsumerThread(broker, QUEUE_JOBS, recorder):
        dead = harness.take(QUEUE_DEAD)

    assert recorder.deliveries == []
    assert dead.payload == payload
    assert dead.headers[DEATH_REASON_HEADER].startswith(reason_start)
    assert dead.headers[ORIGINAL_QUEUE_HEADER] == QUEUE_JOBS
    assert dead.message_id == "m1"


def test_unexpected_exception_retried(harness, caplog):
    broker = harness.make()
    broker.publish(QUEUE_JOBS, {"n": 1}, message_id="m1")

    def fail_first(delivery):
        if delivery.attempt == 1:
            raise KeyError("segments")

    recorder = Recorder(fail_first)
    with caplog.at_level(logging.ERROR, logger="libs.common.broker"):
        with ConsumerThread(broker, QUEUE_JOBS, recorder):
            harness.let_delay_pass(QUEUE_JOBS, DELAYS[0])
            first, second = recorder.wait_for(2)

    assert second.attempt == 2
    failures = [record for record in caplog.records
                if record.name.startswith("libs.common.broker") and record.levelno == logging.ERROR]
    assert len(failures) == 1
    assert "m1" in failures[0].getMessage()
    assert failures[0].exc_info[0] is KeyError


# The dead queue: consumed like a work queue, but a failed message goes back to its end

def _reject(_delivery):
    raise Reject("invalid job")


def test_dead_queue_delivers_how_it_died(harness):
    broker = harness.make()
    broker.publish(QUEUE_JOBS, {"n": 1}, headers={"tenant": "T1"}, message_id="m1")
    with ConsumerThread(broker, QUEUE_JOBS, Recorder(_reject)):
        wait_until(lambda: broker.queue_depth(QUEUE_DEAD) == 1, "the job reached the dead queue")

    recorder = Recorder()
    with ConsumerThread(broker, QUEUE_DEAD, recorder):
        delivery = recorder.wait_for(1)[0]

    assert delivery.queue == QUEUE_DEAD
    assert delivery.body == {"n": 1}
    assert delivery.payload == b'{"n":1}'
    assert delivery.message_id == "m1"
    assert delivery.attempt == 1
    assert delivery.headers[ORIGINAL_QUEUE_HEADER] == QUEUE_JOBS
    assert delivery.headers[DEATH_REASON_HEADER] == "invalid job"
    assert delivery.headers[ATTEMPT_HEADER] == 1
    assert delivery.headers["tenant"] == "T1"
    assert broker.queue_depth(QUEUE_DEAD) == 0


def test_dead_queue_failure_goes_to_end(harness):
    broker = harness.make()
    broker.publish(QUEUE_JOBS, {"n": 1}, message_id="m1")
    with ConsumerThread(broker, QUEUE_JOBS, Recorder(_reject)):
        wait_until(lambda: broker.queue_depth(QUEUE_DEAD) == 1, "the job reached the dead queue")
    harness.publish_raw(QUEUE_DEAD, b'{"n": 2}', "m2")

    def fail_first(delivery):
        if delivery.message_id == "m1" and delivery.attempt == 1:
            raise RuntimeError("the store did not respond")

    recorder = Recorder(fail_first)
    with ConsumerThread(broker, QUEUE_DEAD, recorder):
        deliveries = recorder.wait_for(3)

    assert [(delivery.message_id, delivery.attempt) for delivery in deliveries] == [("m1", 1), ("m2", 1), ("m1", 2)]
    again = deliveries[2]
    assert again.headers[DEAD_ATTEMPT_HEADER] == 2
    assert again.headers[ORIGINAL_QUEUE_HEADER] == QUEUE_JOBS
    assert again.headers[DEATH_REASON_HEADER] == "invalid job"
    assert again.payload == b'{"n":1}'
    assert broker.queue_depth(QUEUE_DEAD) == 0


@pytest.mark.parametrize("outcome", [Reject("unknown"), Retry("later", delay_s=0.1)])
def test_dead_queue_reject_or_retry_goes_to_end(harness, outcome):
    broker = harness.make()
    harness.publish_raw(QUEUE_DEAD, b'{"n": 1}', "m1")

    def fail_first(delivery):
        if delivery.attempt == 1:
            raise outcome

    recorder = Recorder(fail_first)
    with ConsumerThread(broker, QUEUE_DEAD, recorder):
        deliveries = recorder.wait_for(2)

    assert [delivery.attempt for delivery in deliveries] == [1, 2]
    assert broker.queue_depth(QUEUE_DEAD) == 0


def test_dead_queue_hands_over_invalid_json(harness):
    broker = harness.make()
    harness.publish_raw(QUEUE_DEAD, b"{not json", "m1")

    recorder = Recorder()
    with ConsumerThread(broker, QUEUE_DEAD, recorder):
        delivery = recorder.wait_for(1)[0]

    assert delivery.body == {}
    assert delivery.payload == b"{not json"
    assert broker.queue_depth(QUEUE_DEAD) == 0


# Prefetch, stop and abandon

def test_prefetch_bounds_unacked(harness):
    broker = harness.make()
    observer = harness.make()
    for n in range(10):
        broker.publish(QUEUE_JOBS, {"n": n})

    gate = threading.Event()
    recorder = Recorder(_block_until(gate))
    with ConsumerThread(broker, QUEUE_JOBS, recorder, prefetch=3):
        wait_until(lambda: observer.queue_depth(QUEUE_JOBS) == 7, "the consumer holds 3 messages")
        observer.publish(QUEUE_JOBS, {"n": 10})
        wait_until(lambda: observer.queue_depth(QUEUE_JOBS) == 8, "the new message waits")
        depth_while_blocked = observer.queue_depth(QUEUE_JOBS)
        gate.set()
        recorder.wait_for(11)

    assert depth_while_blocked == 8
    assert len(recorder.deliveries) == 11
    assert observer.queue_depth(QUEUE_JOBS) == 0


def test_stop_leaves_unacked_queued(harness):
    broker = harness.make()
    for n in range(5):
        broker.publish(QUEUE_JOBS, {"n": n})

    observer = harness.make()
    consumer: ConsumerThread

    def stop_after_first(_delivery):
        wait_until(lambda: observer.queue_depth(QUEUE_JOBS) == 0, "the consumer holds all 5")
        consumer.stop.set()

    recorder = Recorder(stop_after_first)
    consumer = ConsumerThread(broker, QUEUE_JOBS, recorder, prefetch=5)
    with consumer:
        consumer.join()
    wait_until(lambda: broker.queue_depth(QUEUE_JOBS) == 4, "4 messages are back in the queue")

    later = Recorder()
    with ConsumerThread(broker, QUEUE_JOBS, later, prefetch=5):
        rest = later.wait_for(4)

    assert len(recorder.deliveries) == 1
    assert sorted(delivery.body["n"] for delivery in rest) == [1, 2, 3, 4]
    assert all(delivery.redelivered for delivery in rest)


def test_abandon_redelivers_to_other_consumer(harness):
    crashing = harness.make()
    survivor = harness.make()
    crashing.publish(QUEUE_JOBS, {"n": 1}, message_id="m1")

    gate = threading.Event()

    def block_then_reject(delivery):
        _block_until(gate)(delivery)
        raise Reject("too late: this consumer was abandoned")

    first = Recorder(block_then_reject)
    second = Recorder()
    crashed = ConsumerThread(crashing, QUEUE_JOBS, first)
    with crashed:
        first.wait_for(1)
        crashing.abandon()
        with ConsumerThread(survivor, QUEUE_JOBS, second):
            redelivered = second.wait_for(1)[0]
            gate.set()
            crashed.join()

    assert first.deliveries[0].redelivered is False
    assert redelivered.redelivered is True
    assert redelivered.message_id == "m1"
    assert survivor.queue_depth(QUEUE_JOBS) == 0
    assert survivor.queue_depth(QUEUE_DEAD) == 0


def test_close_stops_consumer(harness):
    broker = harness.make()
    broker.publish(QUEUE_JOBS, {"n": 1})

    recorder = Recorder()
    consumer = ConsumerThread(broker, QUEUE_JOBS, recorder)
    with consumer:
        recorder.wait_for(1)
        broker.close()
        consumer.join()
        stop_was_set = consumer.stop.is_set()

    assert stop_was_set is False


def test_publish_after_abandon_raises(harness):
    broker = harness.make()
    broker.abandon()

    with pytest.raises(BrokerClosed):
        broker.publish(QUEUE_JOBS, {"n": 1})


def test_publish_after_close_raises(harness):
    broker = harness.make()
    broker.close()

    with pytest.raises(BrokerClosed):
        broker.publish(QUEUE_JOBS, {"n": 1})


# Publishing and queue inspection

def test_publish_unknown_queue_raises(harness):
    broker = harness.make()

    with pytest.raises(PublishError, match="unroutable"):
        broker.publish("tm.nowhere", {"n": 1})


def test_publish_many_confirms_all(harness):
    broker = harness.make()
    ids = [f"run1:+1555010{n:04d}" for n in range(250)]

    count = broker.publish_many(QUEUE_JOBS, ({"n": n} for n in range(250)), message_ids=ids)

    assert count == 250
    assert broker.queue_depth(QUEUE_JOBS) == 250
    recorder = Recorder()
    with ConsumerThread(broker, QUEUE_JOBS, recorder, prefetch=50):
        received = recorder.wait_for(250)
    assert sorted(delivery.message_id for delivery in received) == sorted(ids)


def test_publish_many_encoded_batch(harness):
    broker = harness.make()
    batch = broker.encode_batch([{"n": 1}, {"n": 2}], ["run1:a", "run1:b"])

    count = broker.publish_many(QUEUE_JOBS, batch)

    assert count == 2
    recorder = Recorder()
    with ConsumerThread(broker, QUEUE_JOBS, recorder, prefetch=2):
        received = recorder.wait_for(2)
    assert sorted((delivery.message_id, delivery.body["n"]) for delivery in received) == [("run1:a", 1), ("run1:b", 2)]


def test_encoded_batch_takes_no_extra_ids(harness):
    broker = harness.make()
    batch = broker.encode_batch([{"n": 1}], ["run1:a"])

    with pytest.raises(ValueError, match="carries its own message ids"):
        broker.publish_many(QUEUE_JOBS, batch, message_ids=["run1:b"])


def test_publish_many_empty_batch(harness):
    broker = harness.make()

    assert broker.publish_many(QUEUE_JOBS, []) == 0


def test_publish_many_unknown_queue_raises(harness):
    broker = harness.make()

    with pytest.raises(PublishError, match="2 of 2 messages"):
        broker.publish_many("tm.nowhere", [{"n": 1}, {"n": 2}])


def test_publish_many_id_count_mismatch(harness):
    broker = harness.make()

    with pytest.raises(ValueError, match="2 bodies but 1 message ids"):
        broker.publish_many(QUEUE_JOBS, [{"n": 1}, {"n": 2}], message_ids=["m1"])


def test_purge_empties_queue(harness):
    broker = harness.make()
    broker.publish_many(QUEUE_RUNS, [{"n": 1}, {"n": 2}, {"n": 3}])

    broker.purge(QUEUE_RUNS)

    assert broker.queue_depth(QUEUE_RUNS) == 0


def test_queue_depth_unknown_queue_raises(harness):
    broker = harness.make()

    with pytest.raises(ValueError, match="does not exist"):
        broker.queue_depth("tm.nowhere")


@pytest.mark.parametrize("queue, prefetch, message", [
    (delay_queue_name(QUEUE_JOBS, DELAYS[0]), 1, "work queues"),
    (QUEUE_DEAD, 0, "prefetch"),
    (QUEUE_JOBS, 0, "prefetch"),
])
def test_consume_rejects_bad_arguments(harness, queue, prefetch, message):
    broker = harness.make()

    with pytest.raises(ValueError, match=message):
        broker.consume(queue, Recorder(), prefetch=prefetch, stop=threading.Event())


# Partitions: a work queue per key, declared on first use

def test_partition_round_trip(harness):
    broker = harness.make()
    acme = harness.partition("ACME")
    broker.publish(acme, {"n": 1}, message_id="m1")

    recorder = Recorder()
    with ConsumerThread(broker, acme, recorder):
        delivery = recorder.wait_for(1)[0]

    assert delivery.queue == acme
    assert delivery.body == {"n": 1}
    assert delivery.message_id == "m1"
    assert broker.queue_depth(acme) == 0


def test_partitions_are_separate_queues(harness):
    broker = harness.make()
    acme, beta = harness.partition("ACME"), harness.partition("BETA")
    broker.publish_many(acme, [{"n": 1}, {"n": 2}])
    broker.publish(beta, {"n": 3})

    assert broker.queue_depth(acme) == 2
    assert broker.queue_depth(beta) == 1
    assert broker.queue_depth(QUEUE_JOBS) == 0


def test_partition_retry_comes_back(harness):
    broker = harness.make()
    acme = harness.partition("ACME")
    broker.publish(acme, {"n": 1}, message_id="m1")

    def retry_first(delivery):
        if delivery.attempt == 1:
            raise Retry("Twilio is busy", delay_s=0.1)

    recorder = Recorder(retry_first)
    with ConsumerThread(broker, acme, recorder):
        harness.let_delay_pass(acme, DELAYS[0])
        first, second = recorder.wait_for(2)

    assert second.queue == acme
    assert second.attempt == 2
    assert broker.queue_depth(acme) == 0


def test_partition_dead_letters_with_origin(harness):
    broker = harness.make()
    acme = harness.partition("ACME")
    broker.publish(acme, {"n": 1}, message_id="m1")

    def reject(_delivery):
        raise Reject("invalid job")

    with ConsumerThread(broker, acme, Recorder(reject)):
        dead = harness.take(QUEUE_DEAD)

    assert dead.headers[ORIGINAL_QUEUE_HEADER] == acme
    assert dead.message_id == "m1"


def test_publish_delayed_arrives_later(harness):
    broker = harness.make()
    acme = harness.partition("ACME")

    broker.publish_delayed(acme, {"n": 1}, delay_s=0.3, message_id="m1")
    waiting = broker.queue_depth(delay_queue_name(acme, DELAYS[1]))

    recorder = Recorder()
    with ConsumerThread(broker, acme, recorder):
        harness.let_delay_pass(acme, DELAYS[1])
        delivery = recorder.wait_for(1)[0]

    assert waiting == 1
    assert delivery.attempt == 1
    assert delivery.message_id == "m1"


def test_consumers_counts_connected(harness):
    broker = harness.make()
    acme = harness.partition("ACME")

    before = broker.consumers(acme)
    consumer = ConsumerThread(broker, acme, Recorder())
    with consumer:
        wait_until(lambda: broker.consumers(acme) == 1, "the consumer is connected")
        on_other_queue = broker.consumers(QUEUE_JOBS)
    after = broker.consumers(acme)

    assert before == 0
    assert on_other_queue == 0
    assert after == 0


def test_abandoned_partition_redelivers(harness):
    crashing = harness.make()
    survivor = harness.make()
    acme = harness.partition("ACME")
    crashing.publish(acme, {"n": 1}, message_id="m1")

    gate = threading.Event()
    first = Recorder(_block_until(gate))
    second = Recorder()
    crashed = ConsumerThread(crashing, acme, first)
    with crashed:
        first.wait_for(1)
        crashing.abandon()
        with ConsumerThread(survivor, acme, second):
            redelivered = second.wait_for(1)[0]
            gate.set()
            crashed.join()

    assert redelivered.message_id == "m1"
    assert redelivered.redelivered is True
