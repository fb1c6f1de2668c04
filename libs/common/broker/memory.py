"""In-process broker with RabbitMQ's semantics, for tests and the embedded default."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import deque
from typing import Callable, Iterable

from libs.common.clock import SystemClock

from .base import (
    QUEUE_DEAD, RETRY_DELAYS_S, WORK_QUEUES, Broker, BrokerClosed, Delivery, EncodedBatch, Forward,
    Incoming, PublishError, delay_queue_name, encode_body, partition_of,
)

logger = logging.getLogger(__name__)

# How often a waiting consumer checks its stop event and the clock, in seconds.
POLL_INTERVAL_S = 0.05


@dataclasses.dataclass(frozen=True)
class StoredMessage:
    """A message as stored in a queue: encoded body, headers and properties."""

    payload: bytes
    headers: dict
    message_id: str | None
    redelivered: bool = False


class MemoryServer:
    """Queues shared by every MemoryBroker built on it, as one RabbitMQ server is.

    Delay queues have no timer thread: a message in a delay queue moves to its work
    queue on the first look at the queues (consume, queue_depth, purge) once the clock
    passes its due time. A consumer looks every POLL_INTERVAL_S, so with a FakeClock a
    test advances the clock and the message comes back without sleeping through the
    delay.
    """

    def __init__(self, clock=None):
        self.clock = clock or SystemClock()
        self.condition = threading.Condition()
        self._ready: dict[str, deque[StoredMessage]] = {}
        self._delayed: dict[str, deque[tuple[float, StoredMessage]]] = {}
        self._delay_targets: dict[str, tuple[float, str]] = {}

    def declare(self, prefix: str, retry_delays_s: tuple[float, ...]) -> None:
        """Create the work, delay and dead queues for prefix unless they exist."""
        with self.condition:
            self._ready.setdefault(prefix + QUEUE_DEAD, deque())
            for queue in WORK_QUEUES:
                self._declare_work_queue(prefix, queue, retry_delays_s)

    def declare_partition(self, prefix: str, partition: str, retry_delays_s: tuple[float, ...]) -> None:
        """Create a partition queue and its delay queues unless they exist."""
        with self.condition:
            self._declare_work_queue(prefix, partition, retry_delays_s)

    def _declare_work_queue(self, prefix: str, queue: str, retry_delays_s: tuple[float, ...]) -> None:
        self._ready.setdefault(prefix + queue, deque())
        for seconds in retry_delays_s:
            name = prefix + delay_queue_name(queue, seconds)
            self._delayed.setdefault(name, deque())
            self._delay_targets[name] = (seconds, prefix + queue)

    def put(self, name: str, messages: Iterable[StoredMessage]) -> None:
        """Append messages to a queue; raises PublishError when no queue has that name."""
        with self.condition:
            if name in self._ready:
                self._ready[name].extend(messages)
            elif name in self._delayed:
                due = self.clock.time() + self._delay_targets[name][0]
                self._delayed[name].extend((due, message) for message in messages)
            else:
                raise PublishError(f"message to {name} is unroutable: no queue has that name")
            self.condition.notify_all()

    def take(self, name: str, count: int) -> list[StoredMessage]:
        """Remove and return up to count ready messages from the head of a queue."""
        with self.condition:
            self._promote_due()
            ready = self._ready[name]
            return [ready.popleft() for _ in range(min(count, len(ready)))]

    def requeue(self, name: str, messages: list[StoredMessage]) -> None:
        """Put unacked messages back at the head of their queue, marked redelivered."""
        with self.condition:
            returned = [dataclasses.replace(message, redelivered=True) for message in messages]
            self._ready[name].extendleft(reversed(returned))
            self.condition.notify_all()

    def depth(self, name: str) -> int:
        """Return the number of messages waiting in a work, dead or delay queue."""
        with self.condition:
            self._promote_due()
            if name in self._ready:
                return len(self._ready[name])
            if name in self._delayed:
                return len(self._delayed[name])
            raise ValueError(f"queue {name} does not exist")

    def purge(self, name: str) -> None:
        """Drop every waiting message of a queue."""
        with self.condition:
            self._promote_due()
            if name in self._ready:
                self._ready[name].clear()
            elif name in self._delayed:
                self._delayed[name].clear()
            else:
                raise ValueError(f"queue {name} does not exist")

    def _promote_due(self) -> None:
        now = self.clock.time()
        moved = False
        for name, waiting in self._delayed.items():
            target = self._delay_targets[name][1]
            while waiting and waiting[0][0] <= now:
                self._ready[target].append(waiting.popleft()[1])
                moved = True
        if moved:
            self.condition.notify_all()


class _Consumer:
    """One consume() call: its queue and the messages it has not acked yet."""

    def __init__(self, name: str, prefetch: int):
        self.name = name
        self.prefetch = prefetch
        self.prefetched: deque[StoredMessage] = deque()
        self.in_flight: StoredMessage | None = None
        self.killed = False

    def unacked(self) -> list[StoredMessage]:
        head = [self.in_flight] if self.in_flight is not None else []
        return head + list(self.prefetched)


class MemoryBroker(Broker):
    """Thread-safe in-process broker; brokers on the same MemoryServer share queues."""

    def __init__(self, *, max_attempts: int = 5, queue_prefix: str = "",
                 retry_delays_s: Iterable[float] = RETRY_DELAYS_S,
                 server: MemoryServer | None = None, clock=None):
        super().__init__(max_attempts=max_attempts, queue_prefix=queue_prefix,
                         retry_delays_s=retry_delays_s)
        if server is not None and clock is not None:
            raise ValueError("pass the clock to the MemoryServer, not to a broker that shares it")

        self.server = server or MemoryServer(clock)
        self.server.declare(queue_prefix, self.retry_delays_s)
        self._consumers: set[_Consumer] = set()
        self._closed = False

    def publish(self, queue: str, body: dict, *, headers: dict | None = None,
                message_id: str | None = None) -> None:
        message = StoredMessage(encode_body(body), dict(headers or {}), message_id)
        self._check_open()
        self._declare_partition_of(queue)
        try:
            self.server.put(self._name(queue), [message])
        except PublishError:
            raise PublishError(f"message {message_id} to {queue} is unroutable: "
                               f"no queue has that name") from None

    def publish_many(self, queue: str, bodies: Iterable[dict] | EncodedBatch, *,
                     message_ids: Iterable[str] | None = None) -> int:
        batch = self._encoded(bodies, message_ids)
        payloads, ids = batch.payloads, batch.message_ids
        self._check_open()
        self._declare_partition_of(queue)
        try:
            self.server.put(self._name(queue),
                            [StoredMessage(payload, {}, id_) for payload, id_ in zip(payloads, ids)])
        except PublishError:
            count = len(payloads)
            raise PublishError(f"{count} of {count} messages to {queue} were not confirmed: "
                               f"{count} unroutable, 0 nacked") from None
        return len(payloads)

    def consume(self, queue: str, handler: Callable[[Delivery], None], *, prefetch: int,
                stop: threading.Event) -> None:
        self._check_consumable(queue, prefetch)
        consumer = _Consumer(self._name(queue), prefetch)
        with self.server.condition:
            self._check_open()
            self._declare_partition_of(queue)
            self._consumers.add(consumer)

        logger.info("consuming %s in process with prefetch %d", queue, prefetch)
        try:
            while (message := self._next_message(consumer, stop)) is not None:
                incoming = Incoming(queue=queue, payload=message.payload, headers=message.headers,
                                    message_id=message.message_id, redelivered=message.redelivered)
                self._settle(consumer, incoming, self._decide(handler, incoming))
        finally:
            self._release(consumer)

    def consumers(self, queue: str) -> int:
        with self.server.condition:
            return sum(1 for consumer in self._consumers
                       if consumer.name == self._name(queue) and not consumer.killed)

    def queue_depth(self, queue: str) -> int:
        self._check_open()
        return self.server.depth(self._name(queue))

    def purge(self, queue: str) -> None:
        self._check_open()
        self.server.purge(self._name(queue))

    def close(self) -> None:
        with self.server.condition:
            self._closed = True
            self.server.condition.notify_all()

    def abandon(self) -> None:
        with self.server.condition:
            self._closed = True
            for consumer in self._consumers:
                self.server.requeue(consumer.name, consumer.unacked())
                consumer.prefetched.clear()
                consumer.in_flight = None
                consumer.killed = True
        logger.warning("abandoned the in-process broker; unacked messages went back to their queues")

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosed("the broker is closed; create a new one")

    def _declare_partition_of(self, queue: str) -> None:
        partition = partition_of(queue)
        if partition is not None:
            self.server.declare_partition(self.queue_prefix, partition, self.retry_delays_s)

    def _next_message(self, consumer: _Consumer, stop: threading.Event) -> StoredMessage | None:
        """Return the next message for the handler, or None once the consumer must stop."""
        with self.server.condition:
            while not (stop.is_set() or consumer.killed or self._closed):
                room = consumer.prefetch - len(consumer.prefetched)
                consumer.prefetched.extend(self.server.take(consumer.name, room))
                if consumer.prefetched:
                    consumer.in_flight = consumer.prefetched.popleft()
                    return consumer.in_flight
                self.server.condition.wait(POLL_INTERVAL_S)
        return None

    def _settle(self, consumer: _Consumer, incoming: Incoming, forward: Forward | None) -> None:
        """Forward the message if the handler asked for it, then ack it."""
        with self.server.condition:
            if consumer.killed:
                return
            if forward is not None:
                copy = StoredMessage(incoming.payload, forward.headers, incoming.message_id)
                self.server.put(self._name(forward.queue), [copy])
            consumer.in_flight = None
        if forward is not None:
            self._log_forward(incoming, forward)

    def _release(self, consumer: _Consumer) -> None:
        with self.server.condition:
            self._consumers.discard(consumer)
            if not consumer.killed:
                self.server.requeue(consumer.name, consumer.unacked())
        logger.info("stopped consuming %s in process", consumer.name)
