"""Broker contract: queue names, handler outcomes and the abstract Broker."""

from __future__ import annotations

import abc
import json
import logging
import re
import threading
from dataclasses import dataclass
from typing import Callable, Iterable

logger = logging.getLogger(__name__)

EXCHANGE = "tm"
QUEUE_RUNS = "tm.runs"
QUEUE_JOBS = "tm.jobs"
QUEUE_IMIS = "tm.imis"
QUEUE_DEAD = "tm.dead"
WORK_QUEUES = (QUEUE_RUNS, QUEUE_JOBS, QUEUE_IMIS)
RETRY_DELAYS_S = (1, 5, 30, 120, 600)

ATTEMPT_HEADER = "x-attempt"
DEATH_REASON_HEADER = "x-death-reason"
ORIGINAL_QUEUE_HEADER = "x-original-queue"
# How many times a consumer of the dead queue has handled a dead-lettered message.
DEAD_ATTEMPT_HEADER = "x-dead-attempt"

# Headers that only the broker uses: the attempt counter, which Delivery carries as a
# field, and the x-death family that RabbitMQ adds when a delay queue's TTL expires.
_BROKER_HEADERS = (ATTEMPT_HEADER, "x-death")
_BROKER_HEADER_PREFIXES = ("x-first-death-", "x-last-death-")


class Reject(Exception):
    """Invalid message: dead-letter it, do not retry."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Retry(Exception):
    """Transient failure: come back after delay_s, rounded up to the next delay step.

    With delay_s None the step follows the attempt number: the first retry waits the
    first step, the second retry the second step, and so on, capped at the last step.
    """

    def __init__(self, reason: str, delay_s: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.delay_s = delay_s


class PublishError(Exception):
    """A publish was nacked, unroutable or not confirmed in time."""


class BrokerClosed(PublishError):
    """The broker was closed or abandoned, so it publishes and consumes nothing more."""


@dataclass(frozen=True)
class EncodedBatch:
    """Message bodies already encoded for publish_many, with their message ids.

    Encoding takes a few microseconds a message, so a producer can build the next batch
    on another thread while the broker confirms the current one (Broker.encode_batch).
    """

    payloads: list[bytes]
    message_ids: list[str | None]


@dataclass(frozen=True)
class Delivery:
    """One message handed to a handler, with `payload`, its bytes as they arrived.

    From the dead queue, `body` is empty when the payload is not a JSON object,
    `headers` keeps every header the message died with, and `attempt` counts the
    dead queue's own handling attempts.
    """

    queue: str
    body: dict
    headers: dict
    attempt: int
    redelivered: bool
    message_id: str | None
    payload: bytes = b""


@dataclass(frozen=True)
class Incoming:
    """A message as it left the queue, before its body is decoded."""

    queue: str
    payload: bytes
    headers: dict
    message_id: str | None
    redelivered: bool


@dataclass(frozen=True)
class Forward:
    """Destination of a settled message before its ack: a delay queue or the dead queue."""

    queue: str
    headers: dict
    reason: str
    dead: bool


# A partition key: letters, digits, "-" and "_", so that a partition name has no extra dot.
_PARTITION_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DELAY_SUFFIX = re.compile(r"^(?P<queue>.+)\.retry\.(?P<seconds>[0-9.e+-]+)$")


def delay_queue_name(queue: str, seconds: float) -> str:
    """Return the name of the delay queue that keeps messages of `queue` for `seconds`."""
    return f"{queue}.retry.{seconds:g}"


def partition_queue(queue: str, key: str) -> str:
    """Return the name of the partition of a work queue for `key`, such as `tm.jobs.ACME`.

    A partition is a work queue of its own, with its own delay queues, dead-lettering to
    the dead queue. Brokers declare it on the first publish or consume, so producers can
    give each tenant a queue of its own and consumers can give each queue its own workers.
    Raises ValueError for a queue that is not a work queue, or a key that is not 1 to 64
    letters, digits, "-" or "_".
    """
    if queue not in WORK_QUEUES:
        raise ValueError(f"only the work queues {WORK_QUEUES} have partitions, got {queue!r}")
    if not isinstance(key, str) or not _PARTITION_KEY.match(key):
        raise ValueError(f"invalid partition key {key!r}: use 1 to 64 letters, digits, '-' or '_'")
    return f"{queue}.{key}"


def tenant_jobs_queue(tenant_id: str) -> str:
    """Return the tenant's partition of `tm.jobs`, such as `tm.jobs.ACME`.

    The sender runs workers per tenant queue, so one tenant's long campaign does not hold
    up another's texts. Raises ValueError like partition_queue.
    """
    return partition_queue(QUEUE_JOBS, tenant_id)


def partition_of(name: str) -> str | None:
    """Return the partition a queue name belongs to (the partition itself or one of its
    delay queues), or None for any other name."""
    delay = _DELAY_SUFFIX.match(name)
    work = delay.group("queue") if delay else name
    base, _, key = work.rpartition(".")
    if base in WORK_QUEUES and _PARTITION_KEY.match(key):
        return work
    return None


def is_work_queue(name: str) -> bool:
    """Return whether name is a work queue or a partition of one, the queues consumers take from."""
    return name in WORK_QUEUES or partition_of(name) == name


def work_queue_of(name: str) -> str | None:
    """Return the work queue that name is, or is a partition of (`tm.jobs` for `tm.jobs.ACME`), or None."""
    if name in WORK_QUEUES:
        return name
    if partition_of(name) == name:
        return name.rpartition(".")[0]
    return None


def declared_queues(retry_delays_s: Iterable[float] = RETRY_DELAYS_S,
                    partitions: Iterable[str] = ()) -> tuple[str, ...]:
    """Return every queue name the broker declares: work queues, delay queues, dead queue.

    `partitions` adds partition queues (names from partition_queue) with their delay
    queues, for callers that clean up after using them.
    """
    delays = tuple(retry_delays_s)
    names = list(WORK_QUEUES)
    names += [delay_queue_name(queue, seconds) for queue in WORK_QUEUES for seconds in delays]
    names.append(QUEUE_DEAD)
    for partition in partitions:
        names.append(partition)
        names += [delay_queue_name(partition, seconds) for seconds in delays]
    return tuple(names)


def encode_body(body: dict) -> bytes:
    """Return the JSON bytes of a message body; raises TypeError for a non-dict body."""
    if not isinstance(body, dict):
        raise TypeError(f"message body must be a dict, got {type(body).__name__}")
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def user_headers(headers: dict) -> dict:
    """Return the headers without those the broker keeps for itself."""
    return {
        key: value for key, value in headers.items()
        if key not in _BROKER_HEADERS and not key.startswith(_BROKER_HEADER_PREFIXES)
    }


def attempt_of(headers: dict) -> int:
    """Return the attempt number stored in the headers; 1 when missing or invalid."""
    return _positive_int(headers.get(ATTEMPT_HEADER))


def _positive_int(value: object) -> int:
    """Return value when it is an int of at least 1, else 1."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return 1


class Broker(abc.ABC):
    """Publishes JSON messages with confirms and runs handlers on queues.

    A handler returns to acknowledge, raises Reject to dead-letter, raises Retry (or
    any other exception) to come back through a delay queue, up to max_attempts.

    The dead queue can be consumed too, but it has no delay queues and dead-letters
    nowhere. A handler on it returns to acknowledge, and any exception puts the message
    back at the end of the dead queue with its headers and a raised DEAD_ATTEMPT_HEADER,
    so the handler must bound and pace its own attempts.
    """

    def __init__(self, *, max_attempts: int = 5, queue_prefix: str = "",
                 retry_delays_s: Iterable[float] = RETRY_DELAYS_S):
        delays = tuple(retry_delays_s)
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if not delays or any(step <= 0 for step in delays) or list(delays) != sorted(delays):
            raise ValueError(f"retry_delays_s must be positive and ascending, got {delays!r}")

        self.max_attempts = max_attempts
        self.queue_prefix = queue_prefix
        self.retry_delays_s = delays

    @abc.abstractmethod
    def publish(self, queue: str, body: dict, *, headers: dict | None = None,
                message_id: str | None = None) -> None:
        """Publish one message and wait for the confirm; raises PublishError."""

    @abc.abstractmethod
    def publish_many(self, queue: str, bodies: Iterable[dict] | EncodedBatch, *,
                     message_ids: Iterable[str] | None = None) -> int:
        """Publish a batch and wait for every confirm; returns the count, raises PublishError.

        `bodies` may be an EncodedBatch from encode_batch, which carries its own ids.
        """

    def encode_batch(self, bodies: Iterable[dict], message_ids: Iterable[str] | None = None) -> EncodedBatch:
        """Encode bodies for publish_many; raises TypeError for a non-dict body."""
        payloads = [encode_body(body) for body in bodies]
        return EncodedBatch(payloads, self._message_ids(len(payloads), message_ids))

    def _encoded(self, bodies: Iterable[dict] | EncodedBatch, message_ids: Iterable[str] | None) -> EncodedBatch:
        if isinstance(bodies, EncodedBatch):
            if message_ids is not None:
                raise ValueError("an EncodedBatch carries its own message ids; pass none with it")
            return bodies
        return self.encode_batch(bodies, message_ids)

    @abc.abstractmethod
    def consume(self, queue: str, handler: Callable[[Delivery], None], *, prefetch: int,
                stop: threading.Event) -> None:
        """Run handler on every message of queue until stop is set."""

    def publish_delayed(self, queue: str, body: dict, *, delay_s: float,
                        message_id: str | None = None) -> None:
        """Publish one message that reaches `queue` after delay_s, rounded up to a delay step.

        The message goes through the queue's delay queue, as a retried one does, and
        starts at attempt 1. A delay past the longest step waits the longest step.
        Raises PublishError.
        """
        step = self._delay_step(1, delay_s)
        self.publish(delay_queue_name(queue, step), body, message_id=message_id)

    @abc.abstractmethod
    def consumers(self, queue: str) -> int:
        """Return how many consume() calls of this broker are connected to queue now."""

    @abc.abstractmethod
    def queue_depth(self, queue: str) -> int:
        """Return the number of messages ready in queue; raises ValueError for an unknown queue."""

    @abc.abstractmethod
    def purge(self, queue: str) -> None:
        """Drop every ready message of queue; raises ValueError for an unknown queue."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connections; running consumers return after their handler in flight."""

    @abc.abstractmethod
    def abandon(self) -> None:
        """Drop the connections without acking, as a killed process would."""

    def _name(self, queue: str) -> str:
        return self.queue_prefix + queue

    def _check_consumable(self, queue: str, prefetch: int) -> None:
        if not is_work_queue(queue) and queue != QUEUE_DEAD:
            raise ValueError(f"consume accepts only the work queues {WORK_QUEUES}, their partitions and "
                             f"{QUEUE_DEAD}, got {queue!r}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")

    def _message_ids(self, count: int, message_ids: Iterable[str] | None) -> list[str | None]:
        if message_ids is None:
            return [None] * count
        ids = list(message_ids)
        if len(ids) != count:
            raise ValueError(f"publish_many got {count} bodies but {len(ids)} message ids")
        return ids

    def _decide(self, handler: Callable[[Delivery], None], incoming: Incoming) -> Forward | None:
        """Run handler on the message; returns where to forward it before the ack, or None."""
        if incoming.queue == QUEUE_DEAD:
            return self._decide_dead(handler, incoming)

        body = _decode(incoming.payload)
        if isinstance(body, str):
            return self._dead_letter(incoming, body)

        headers = user_headers(incoming.headers)
        attempt = attempt_of(incoming.headers)
        delivery = Delivery(queue=incoming.queue, body=body, headers=headers, attempt=attempt,
                            redelivered=incoming.redelivered, message_id=incoming.message_id,
                            payload=incoming.payload)
        try:
            handler(delivery)
        except Reject as error:
            return self._dead_letter(incoming, error.reason)
        except Retry as error:
            return self._retry(incoming, attempt, error.reason, error.delay_s)
        except Exception as error:
            logger.exception("handler failed on message %s from %s (attempt %d); retrying",
                             incoming.message_id, incoming.queue, attempt)
            return self._retry(incoming, attempt, f"{type(error).__name__}: {error}", None)
        return None

    def _decide_dead(self, handler: Callable[[Delivery], None], incoming: Incoming) -> Forward | None:
        """Run handler on a dead-lettered message; returns None, or the dead queue again if it failed."""
        body = _decode(incoming.payload)
        attempt = _positive_int(incoming.headers.get(DEAD_ATTEMPT_HEADER))
        delivery = Delivery(queue=QUEUE_DEAD, body=body if isinstance(body, dict) else {},
                            headers=dict(incoming.headers), attempt=attempt, redelivered=incoming.redelivered,
                            message_id=incoming.message_id, payload=incoming.payload)
        try:
            handler(delivery)
        except (Reject, Retry) as error:
            reason = error.reason
        except Exception as error:
            logger.exception("handler failed on dead-lettered message %s (attempt %d)", incoming.message_id, attempt)
            reason = f"{type(error).__name__}: {error}"
        else:
            return None
        headers = {**incoming.headers, DEAD_ATTEMPT_HEADER: attempt + 1}
        return Forward(queue=QUEUE_DEAD, headers=headers, reason=reason, dead=False)

    def _retry(self, incoming: Incoming, attempt: int, reason: str,
               delay_s: float | None) -> Forward:
        if attempt >= self.max_attempts:
            return self._dead_letter(incoming, f"gave up after {attempt} attempts: {reason}")

        step = self._delay_step(attempt, delay_s)
        headers = {**user_headers(incoming.headers), ATTEMPT_HEADER: attempt + 1}
        return Forward(queue=delay_queue_name(incoming.queue, step), headers=headers,
                       reason=reason, dead=False)

    def _delay_step(self, attempt: int, delay_s: float | None) -> float:
        steps = self.retry_delays_s
        if delay_s is None:
            return steps[min(attempt, len(steps)) - 1]
        for step in steps:
            if step >= delay_s:
                return step
        return steps[-1]

    def _dead_letter(self, incoming: Incoming, reason: str) -> Forward:
        headers = {
            **user_headers(incoming.headers),
            ATTEMPT_HEADER: attempt_of(incoming.headers),
            DEATH_REASON_HEADER: reason,
            ORIGINAL_QUEUE_HEADER: incoming.queue,
        }
        return Forward(queue=QUEUE_DEAD, headers=headers, reason=reason, dead=True)

    def _log_forward(self, incoming: Incoming, forward: Forward) -> None:
        if forward.dead:
            logger.warning("dead-lettered message %s from %s: %s",
                           incoming.message_id, incoming.queue, forward.reason)
        elif incoming.queue == QUEUE_DEAD:
            logger.warning("dead-lettered message %s went back to the end of %s (attempt %s): %s",
                           incoming.message_id, QUEUE_DEAD, forward.headers[DEAD_ATTEMPT_HEADER], forward.reason)
        else:
            logger.info("message %s from %s will be retried through %s (attempt %s): %s",
                        incoming.message_id, incoming.queue, forward.queue,
                        forward.headers[ATTEMPT_HEADER], forward.reason)


def _decode(payload: bytes) -> dict | str:
    """Return the decoded body, or the reason it cannot be handled."""
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"body is not valid JSON: {error}"
    if not isinstance(body, dict):
        return f"body is a JSON {type(body).__name__}, not an object"
    return body
