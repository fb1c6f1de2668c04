"""Helpers for broker tests: harnesses per broker, a consumer on a thread, polling."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from typing import Callable, NamedTuple

import pika
import pika.exceptions
import pytest

from libs.common.broker import (
    QUEUE_JOBS, Broker, Delivery, MemoryBroker, MemoryServer, RabbitMQBroker, declared_queues,
    delay_queue_name, partition_queue,
)
from libs.common.broker.memory import StoredMessage
from libs.common.broker.rabbitmq import build_topology
from libs.common.clock import FakeClock

AMQP_URL = os.environ.get("TM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
# Short delay steps keep the RabbitMQ runs quick; the in-process runs use a fake clock.
DELAYS = (0.2, 0.4)
# Upper bound on every wait, so that a broken broker fails a test instead of hanging it.
WAIT_S = 10.0


def wait_until(predicate: Callable[[], bool], description: str, timeout_s: float = WAIT_S) -> None:
    """Poll predicate until it holds; raises AssertionError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting until {description}")
        time.sleep(0.02)


class Recorder:
    """Handler that records every delivery, then runs an optional behaviour on it."""

    def __init__(self, behaviour: Callable[[Delivery], None] | None = None):
        self.deliveries: list[Delivery] = []
        self._behaviour = behaviour
        self._lock = threading.Lock()

    def __call__(self, delivery: Delivery) -> None:
        with self._lock:
            self.deliveries.append(delivery)
        if self._behaviour is not None:
            self._behaviour(delivery)

    def wait_for(self, count: int) -> list[Delivery]:
        """Wait until count deliveries arrived; returns them all."""
        wait_until(lambda: len(self.deliveries) >= count, f"{count} deliveries arrived")
        with self._lock:
            return list(self.deliveries)


class ConsumerThread:
    """Runs broker.consume on a daemon thread; leaving the with-block stops and joins it."""

    def __init__(self, broker: Broker, queue: str, handler: Callable[[Delivery], None],
                 prefetch: int = 1):
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._broker = broker
        self._queue = queue
        self._handler = handler
        self._prefetch = prefetch
        self._thread = threading.Thread(target=self._run, name=f"test consumer {queue}", daemon=True)

    def __enter__(self) -> ConsumerThread:
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.stop.set()
        if exc_type is None:
            self.join()
        else:
            self._thread.join(WAIT_S)

    def join(self) -> None:
        """Wait for consume() to return; raises what it raised, or AssertionError if it hangs."""
        self._thread.join(WAIT_S)
        assert not self._thread.is_alive(), f"consume({self._queue}) did not return"
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            self._broker.consume(self._queue, self._handler, prefetch=self._prefetch, stop=self.stop)
        except BaseException as error:
            self.error = error


class RawMessage(NamedTuple):
    """A message read straight off a queue, bypassing the broker under test."""

    payload: bytes
    headers: dict
    message_id: str | None


class MemoryHarness:
    """Brokers sharing one MemoryServer whose clock only the test moves."""

    def __init__(self):
        self.clock = FakeClock()
        self.server = MemoryServer(self.clock)
        self._brokers: list[MemoryBroker] = []

    def partition(self, key: str) -> str:
        """Return the name of the `tm.jobs` partition for key."""
        return partition_queue(QUEUE_JOBS, key)

    def make(self, **overrides) -> MemoryBroker:
        broker = MemoryBroker(server=self.server, **{"retry_delays_s": DELAYS, **overrides})
        self._brokers.append(broker)
        return broker

    def let_delay_pass(self, queue: str, seconds: float) -> None:
        name = delay_queue_name(queue, seconds)
        wait_until(lambda: self.server.depth(name) >= 1, f"a message waits in {name}")
        self.clock.advance(seconds)

    def publish_raw(self, queue: str, payload: bytes, message_id: str) -> None:
        self.server.put(queue, [StoredMessage(payload, {}, message_id)])

    def take(self, queue: str) -> RawMessage:
        wait_until(lambda: self.server.depth(queue) >= 1, f"a message is ready in {queue}")
        message = self.server.take(queue, 1)[0]
        return RawMessage(message.payload, message.headers, message.message_id)

    def close(self) -> None:
        for broker in self._brokers:
            broker.close()


class RabbitHarness:
    """Brokers on the RabbitMQ server under a queue prefix of their own, removed afterwards."""

    def __init__(self, url: str):
        self.url = url
        self.token = uuid.uuid4().hex[:12]
        self.prefix = f"test-{self.token}."
        self.connection_names: list[str] = []
        self._brokers: list[RabbitMQBroker] = []
        self._partitions: list[str] = []
        connect_or_fail(url).close()

    def partition(self, key: str, queue: str = QUEUE_JOBS) -> str:
        """Return the name of the partition of queue (`tm.jobs` by default) for key; close() deletes its queues."""
        name = partition_queue(queue, key)
        self._partitions.append(name)
        return name

    def make(self, **overrides) -> RabbitMQBroker:
        """Return a broker whose connections are named after self.connection_names[-1]."""
        self.connection_names.append(f"tm-test-{self.token}-{len(self._brokers)}")
        broker = RabbitMQBroker(self.url, queue_prefix=self.prefix,
                                connection_name=self.connection_names[-1],
                                **{"retry_delays_s": DELAYS, **overrides})
        self._brokers.append(broker)
        return broker

    def let_delay_pass(self, queue: str, seconds: float) -> None:
        """Nothing to do: RabbitMQ expires the delay queue's TTL in real time."""

    def publish_raw(self, queue: str, payload: bytes, message_id: str) -> None:
        with connect_or_fail(self.url) as connection:
            channel = connection.channel()
            self.declare(channel)
            channel.confirm_delivery()
            channel.basic_publish(self.prefix + "tm", self.prefix + queue, payload,
                                  pika.BasicProperties(delivery_mode=2, message_id=message_id),
                                  mandatory=True)

    def take(self, queue: str) -> RawMessage:
        with connect_or_fail(self.url) as connection:
            channel = connection.channel()
            found: list[RawMessage] = []

            def get_one() -> bool:
                method, properties, payload = channel.basic_get(self.prefix + queue, auto_ack=True)
                if method is not None:
                    found.append(RawMessage(payload, properties.headers or {}, properties.message_id))
                return bool(found)

            wait_until(get_one, f"a message is ready in {queue}")
            return found[0]

    def declare(self, channel) -> None:
        """Declare this test's topology on a raw pika channel."""
        for method, arguments in build_topology(self.prefix, DELAYS):
            getattr(channel, method)(**arguments)

    def close_connection(self, connection_name: str) -> int:
        """Close this test's connections named connection_name from the server side.

        Returns how many were closed. Connections with any other name are left alone.
        """
        listing = subprocess.run(
            ["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "client_properties"],
            capture_output=True, text=True, check=True, timeout=WAIT_S).stdout
        assert connection_name.startswith(f"tm-test-{self.token}-")
        marker = f'{{"connection_name","{connection_name}"}}'
        pids = [line.split("\t", 1)[0] for line in listing.splitlines() if marker in line]
        for pid in pids:
            subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "closed by a broker test"],
                           capture_output=True, text=True, check=True, timeout=WAIT_S)
        return len(pids)

    def close(self) -> None:
        """Close the brokers and delete this prefix's exchange and queues, with any partitions the code declared."""
        for broker in self._brokers:
            broker.close()
        names = {self.prefix + name for name in declared_queues(DELAYS, self._partitions)} | set(self._listed_queues())
        with connect_or_fail(self.url) as connection:
            channel = connection.channel()
            for name in sorted(names):
                channel.queue_delete(name)
            channel.exchange_delete(self.prefix + "tm")

    def _listed_queues(self) -> list[str]:
        """Return the names of the server's queues under this prefix, as rabbitmqctl lists them."""
        listing = subprocess.run(["rabbitmqctl", "-q", "list_queues", "--no-table-headers", "name"],
                                 capture_output=True, text=True, check=True, timeout=WAIT_S).stdout
        return [line.strip() for line in listing.splitlines() if line.strip().startswith(self.prefix)]


def connect_or_fail(url: str) -> pika.BlockingConnection:
    try:
        return pika.BlockingConnection(pika.URLParameters(url))
    except pika.exceptions.AMQPConnectionError as error:
        pytest.fail(f"RabbitMQ is not reachable at TM_TEST_AMQP_URL ({error!r}); start it with "
                    f"`rabbitmq-server -detached`, or deselect these tests with -m 'not rabbitmq'")
