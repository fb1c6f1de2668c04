"""RabbitMQ broker on pika: confirmed publishes, delayed retries and dead-lettering."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

import pika
import pika.exceptions

from .base import (
    EXCHANGE, QUEUE_DEAD, QUEUE_IMIS, RETRY_DELAYS_S, WORK_QUEUES, Broker, BrokerClosed, Delivery,
    EncodedBatch, Forward, Incoming, PublishError, delay_queue_name, encode_body, partition_of, work_queue_of,
)
from .batch import BatchPublish
from .worker import HandlerJob, HandlerThread

logger = logging.getLogger(__name__)

HEARTBEAT_S = 30
BLOCKED_CONNECTION_TIMEOUT_S = 60
BATCH_CONFIRM_TIMEOUT_S = 30.0
RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 30.0
# A consumer checks its stop event at least this often, in seconds.
STOP_CHECK_S = 0.25
CONTENT_TYPE = "application/json"
# Storage arguments of every queue. A job queue can hold a whole run of 10,000 texts or
# more, drained at a few per second, and every message is persistent. Lazy mode writes
# them straight to disk instead of holding them in memory too, and the version 2 index
# writes them faster. Publishing 92,000 confirmed jobs on RabbitMQ 3.10 (2 cores) took
# 6.0 s with the defaults and 3.5 s with these. RabbitMQ 3.12 and later ignore the mode
# (every classic queue works that way there); version 2 is the default from 4.0. A
# queue declared earlier with other arguments must be deleted once (deploy/README.md).
QUEUE_STORAGE = {"x-queue-mode": "lazy", "x-queue-version": 2}
# Work queues, with their partitions, that deliver to one consumer at a time however many
# consumers wait on them. The iMIS vendor requests serial calls to a site, and each
# feedback process (every gunicorn worker is one) consumes each tenant's partition of
# tm.imis. RabbitMQ delivers to one of them, and another takes over if it goes.
SINGLE_ACTIVE_CONSUMER_QUEUES = (QUEUE_IMIS,)


def build_topology(prefix: str, retry_delays_s: Iterable[float]) -> list[tuple[str, dict]]:
    """Return the declarations, as (channel method, keyword arguments), for one prefix.

    Work queues dead-letter to the dead queue. Each delay queue keeps messages for its
    TTL and then dead-letters them back to its work queue.

    NOTE: RabbitMQ dead-letters from classic queues at most once, so a message that
    expires from a delay queue while its work queue cannot take it is lost. Quorum
    queues with at-least-once dead-lettering would close that gap.
    """
    exchange = prefix + EXCHANGE
    steps = [("exchange_declare", {"exchange": exchange, "exchange_type": "direct", "durable": True})]
    for queue in WORK_QUEUES:
        steps += _work_queue_steps(prefix, queue, retry_delays_s)
    steps += _queue_steps(exchange, prefix + QUEUE_DEAD, {})
    return steps


def build_partition_topology(prefix: str, partition: str,
                             retry_delays_s: Iterable[float]) -> list[tuple[str, dict]]:
    """Return the declarations of one partition queue and its delay queues.

    They assume the exchange and the dead queue of build_topology exist.
    """
    return _work_queue_steps(prefix, partition, retry_delays_s)


def _work_queue_steps(prefix: str, queue: str, retry_delays_s: Iterable[float]) -> list[tuple[str, dict]]:
    exchange = prefix + EXCHANGE
    work = prefix + queue
    arguments = {"x-dead-letter-exchange": exchange, "x-dead-letter-routing-key": prefix + QUEUE_DEAD}
    if work_queue_of(queue) in SINGLE_ACTIVE_CONSUMER_QUEUES:
        arguments["x-single-active-consumer"] = True
    steps = _queue_steps(exchange, work, arguments)
    for seconds in retry_delays_s:
        steps += _queue_steps(exchange, prefix + delay_queue_name(queue, seconds), {
            "x-message-ttl": round(seconds * 1000),
            "x-dead-letter-exchange": exchange,
            "x-dead-letter-routing-key": work,
        })
    return steps


def _queue_steps(exchange: str, name: str, arguments: dict) -> list[tuple[str, dict]]:
    return [
        ("queue_declare", {"queue": name, "durable": True, "arguments": {**QUEUE_STORAGE, **arguments}}),
        ("queue_bind", {"queue": name, "exchange": exchange, "routing_key": name}),
    ]


class RabbitMQBroker(Broker):
    """Broker on a RabbitMQ server, with one pika BlockingConnection per thread.

    publish() keeps a connection per calling thread. consume() opens its own
    connection and runs the handler on a helper thread, so that the consumer's thread
    keeps the connection and its heartbeats going. Every connect declares the topology,
    and a partition queue is declared on each connection before its first use there.
    """

    def __init__(self, url: str, *, max_attempts: int = 5, queue_prefix: str = "",
                 retry_delays_s: Iterable[float] = RETRY_DELAYS_S,
                 connection_name: str = "text-manager", heartbeat_s: int = HEARTBEAT_S,
                 blocked_connection_timeout_s: float = BLOCKED_CONNECTION_TIMEOUT_S,
                 batch_confirm_timeout_s: float = BATCH_CONFIRM_TIMEOUT_S,
                 reconnect_max_s: float = RECONNECT_MAX_S):
        super().__init__(max_attempts=max_attempts, queue_prefix=queue_prefix,
                         retry_delays_s=retry_delays_s)
        self._url = url
        self._connection_name = connection_name
        self._heartbeat_s = heartbeat_s
        self._blocked_connection_timeout_s = blocked_connection_timeout_s
        self._batch_confirm_timeout_s = batch_confirm_timeout_s
        self._reconnect_max_s = reconnect_max_s

        self._exchange = queue_prefix + EXCHANGE
        self._topology = build_topology(queue_prefix, self.retry_delays_s)
        self._local = threading.local()
        self._lock = threading.Lock()
        # Queues whose topology a publish_many call has declared.
        self._batch_queues: set[str] = set()
        self._publishers: dict[threading.Thread, _Publisher] = {}
        self._consumer_connections: dict[pika.BlockingConnection, str] = {}
        self._closed = threading.Event()
        self._abandoned = threading.Event()

    # Publishing

    def publish(self, queue: str, body: dict, *, headers: dict | None = None,
                message_id: str | None = None) -> None:
        """Publish one message and wait for its confirm.

        On a lost connection the message is published once more on a new connection,
        so it may arrive twice. Raises PublishError when it is unroutable, nacked, or
        not confirmed on the second connection either. The wait for a confirm is
        bounded only by the heartbeat and blocked_connection_timeout.
        """
        payload = encode_body(body)
        properties = _properties(headers, message_id)
        routing_key = self._name(queue)

        def send(publisher: _Publisher) -> None:
            self._declare_partition(publisher, queue)
            try:
                publisher.channel.basic_publish(self._exchange, routing_key, payload, properties,
                                                mandatory=True)
            except pika.exceptions.UnroutableError:
                raise PublishError(f"message {message_id} to {queue} is unroutable: "
                                   f"no queue has that name") from None
            except pika.exceptions.NackError:
                raise PublishError(f"RabbitMQ nacked message {message_id} to {queue}") from None

        try:
            self._with_publisher(send, f"publishing message {message_id} to {queue}")
        except pika.exceptions.AMQPError as error:
            raise PublishError(f"message {message_id} to {queue} was not confirmed: {error!r}") from error

    def publish_many(self, queue: str, bodies: Iterable[dict] | EncodedBatch, *,
                     message_ids: Iterable[str] | None = None) -> int:
        """Publish a batch with asynchronous confirms and wait for all of them.

        Each call opens its own connection. The first call for a queue also declares the
        topology, about 23 ms on loopback (RabbitMQ 3.10, 2 cores), and later calls for
        that queue skip it. If the queue was deleted since, RabbitMQ returns the
        messages as unroutable: this call raises PublishError and the next one declares
        the topology again. Messages left unconfirmed by a lost connection or a timeout
        are published once more on a new connection. Raises PublishError naming how many
        messages were not confirmed after that.
        """
        batch = self._encoded(bodies, message_ids)
        self._check_open()
        messages = [(payload, _properties(None, id_)) for payload, id_ in zip(batch.payloads, batch.message_ids)]
        pending = list(range(len(messages)))

        for attempt in (1, 2):
            if not pending:
                break
            declared = self._batch_declared(queue)
            topology = [] if declared else self._topology_for(queue)
            outcome = BatchPublish(self._parameters("batch"), topology, self._exchange,
                                   self._name(queue), [messages[i] for i in pending],
                                   self._batch_confirm_timeout_s).run()
            if outcome.returned or outcome.nacked:
                self._forget_batch_declared(queue)
                raise PublishError(
                    f"{outcome.returned + outcome.nacked} of {len(messages)} messages to {queue} "
                    f"were not confirmed: {outcome.returned} unroutable, {outcome.nacked} nacked")
            if len(outcome.unconfirmed) < len(pending):
                self._remember_batch_declared(queue)
            elif outcome.error is not None:
                self._forget_batch_declared(queue)
            pending = [pending[i] for i in outcome.unconfirmed]
            if pending and attempt == 1:
                logger.warning("%d of %d messages to %s were not confirmed (%s); "
                               "publishing them again on a new connection",
                               len(pending), len(messages), queue, outcome.error)

        if pending:
            raise PublishError(f"{len(pending)} of {len(messages)} messages to {queue} were not "
                               f"confirmed: {outcome.error}")
        return len(messages)

    def _batch_declared(self, queue: str) -> bool:
        with self._lock:
            return queue in self._batch_queues

    def _remember_batch_declared(self, queue: str) -> None:
        with self._lock:
            self._batch_queues.add(queue)

    def _forget_batch_declared(self, queue: str) -> None:
        with self._lock:
            self._batch_queues.discard(queue)

    # Queue inspection

    def queue_depth(self, queue: str) -> int:
        """Return the ready messages of queue; raises ValueError for an unknown queue."""
        def count(publisher: _Publisher) -> int:
            return publisher.channel.queue_declare(self._name(queue), passive=True).method.message_count
        return self._with_publisher(count, f"counting {queue}", queue=queue)

    def purge(self, queue: str) -> None:
        """Drop every ready message of queue; raises ValueError for an unknown queue."""
        self._with_publisher(lambda publisher: publisher.channel.queue_purge(self._name(queue)),
                             f"purging {queue}", queue=queue)

    def consumers(self, queue: str) -> int:
        """Return how many consume() calls of this broker hold an open connection to queue."""
        with self._lock:
            return sum(1 for name in self._consumer_connections.values() if name == queue)

    # Consuming

    def consume(self, queue: str, handler: Callable[[Delivery], None], *, prefetch: int,
                stop: threading.Event) -> None:
        """Run handler on every message of queue until stop is set or the broker closes.

        A lost connection is rebuilt with capped exponential backoff. A message whose
        ack was lost with the connection is delivered again.
        """
        self._check_consumable(queue, prefetch)
        self._check_open()
        worker = HandlerThread(f"handler of {queue}", on_exit=self._drop_publisher)
        backoff = _Backoff(RECONNECT_FIRST_S, self._reconnect_max_s)
        try:
            while not self._stopping(stop):
                try:
                    self._consume_connected(queue, handler, prefetch, stop, worker, backoff)
                except pika.exceptions.AMQPError as error:
                    delay = backoff.next_delay()
                    logger.warning("consumer of %s has no connection to RabbitMQ (%r); "
                                   "reconnecting in %.1f s", queue, error, delay)
                    self._pause(delay, stop)
        finally:
            worker.shutdown()
        logger.info("stopped consuming %s", queue)

    def _consume_connected(self, queue: str, handler: Callable[[Delivery], None], prefetch: int,
                           stop: threading.Event, worker: HandlerThread,
                           backoff: _Backoff) -> None:
        """Consume on one connection; returns when stopping, raises when the connection fails."""
        connection, channel = self._connect(f"consumer {queue}", self._topology_for(queue))
        with self._lock:
            self._consumer_connections[connection] = queue
        try:
            channel.basic_qos(prefetch_count=prefetch)
            forwarder = connection.channel()
            forwarder.confirm_delivery()
            backoff.reset()
            logger.info("consuming %s with prefetch %d", queue, prefetch)

            messages = channel.consume(self._name(queue), inactivity_timeout=STOP_CHECK_S)
            for method, properties, payload in messages:
                if self._stopping(stop):
                    return
                if method is None:
                    continue
                incoming = Incoming(queue=queue, payload=payload, headers=properties.headers or {},
                                    message_id=properties.message_id,
                                    redelivered=method.redelivered)
                job = self._run_handler(connection, worker, handler, incoming)
                if self._abandoned.is_set():
                    return
                self._settle(channel, forwarder, method.delivery_tag, incoming, job.result())
            raise pika.exceptions.ConsumerCancelled(f"RabbitMQ cancelled the consumer of {queue}")
        finally:
            with self._lock:
                self._consumer_connections.pop(connection, None)
            _close_quietly(connection)

    def _run_handler(self, connection: pika.BlockingConnection, worker: HandlerThread,
                     handler: Callable[[Delivery], None], incoming: Incoming) -> HandlerJob:
        """Run the handler on the worker while this thread keeps the connection alive."""
        job = worker.submit(lambda: self._decide(handler, incoming), wake=lambda: _wake(connection))
        try:
            while not job.done.is_set() and not self._abandoned.is_set():
                connection.process_data_events(time_limit=STOP_CHECK_S)
        except pika.exceptions.AMQPError:
            logger.warning("connection lost while handling message %s from %s; it will be "
                           "delivered again after the handler finishes",
                           incoming.message_id, incoming.queue)
            while not job.done.wait(STOP_CHECK_S) and not self._abandoned.is_set():
                pass
            raise
        return job

    def _settle(self, channel, forwarder, delivery_tag: int, incoming: Incoming,
                forward: Forward | None) -> None:
        """Forward the message if the handler asked for it, then ack it."""
        if forward is not None:
            properties = _properties(forward.headers, incoming.message_id)
            try:
                forwarder.basic_publish(self._exchange, self._name(forward.queue), incoming.payload,
                                        properties, mandatory=True)
            except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as error:
                # The dead queue dead-letters nowhere, so its message goes back to it instead.
                requeue = incoming.queue == QUEUE_DEAD
                logger.error("could not forward message %s from %s to %s (%r); %s", incoming.message_id,
                             incoming.queue, forward.queue, error,
                             "requeuing it" if requeue else "rejecting it so that the queue dead-letters it")
                channel.basic_reject(delivery_tag, requeue=requeue)
                return
            self._log_forward(incoming, forward)
        channel.basic_ack(delivery_tag)

    # Shutting down

    def close(self) -> None:
        """Close this thread's connection; consumers return after their handler in flight.

        Publisher connections of other live threads close when those threads next
        publish, because pika connections must not be touched from another thread.
        """
        self._closed.set()
        self._wake_consumers()
        self._close_reachable_publishers()
        logger.info("closed the RabbitMQ broker %r", self._connection_name)

    def abandon(self) -> None:
        """Drop the connections without acking work in flight, as a killed process would."""
        self._abandoned.set()
        self._closed.set()
        self._wake_consumers()
        self._close_reachable_publishers()
        logger.warning("abandoned the RabbitMQ broker %r; unacked messages return to their queues",
                       self._connection_name)

    # Connections

    def _parameters(self, role: str) -> pika.URLParameters:
        parameters = pika.URLParameters(self._url)
        parameters.heartbeat = self._heartbeat_s
        parameters.blocked_connection_timeout = self._blocked_connection_timeout_s
        parameters.client_properties = {"connection_name": f"{self._connection_name} {role}"}
        return parameters

    def _topology_for(self, queue: str) -> list[tuple[str, dict]]:
        """Return the whole topology, with the partition that queue belongs to if any."""
        partition = partition_of(queue)
        if partition is None:
            return self._topology
        return self._topology + build_partition_topology(self.queue_prefix, partition, self.retry_delays_s)

    def _declare_partition(self, publisher: _Publisher, queue: str) -> None:
        """Declare the partition that queue belongs to on the publisher's channel, once."""
        partition = partition_of(queue)
        if partition is None or partition in publisher.declared:
            return
        for method, arguments in build_partition_topology(self.queue_prefix, partition, self.retry_delays_s):
            getattr(publisher.channel, method)(**arguments)
        publisher.declared.add(partition)

    def _connect(self, role: str, topology: list[tuple[str, dict]] | None = None
                 ) -> tuple[pika.BlockingConnection, object]:
        """Open a connection and a channel, and declare the topology on it."""
        parameters = self._parameters(role)
        connection = pika.BlockingConnection(parameters)
        try:
            channel = connection.channel()
            for method, arguments in topology or self._topology:
                getattr(channel, method)(**arguments)
        except BaseException:
            _close_quietly(connection)
            raise
        logger.info("connected to RabbitMQ at %s:%s as %r", parameters.host, parameters.port,
                    parameters.client_properties["connection_name"])
        return connection, channel

    def _publisher(self) -> _Publisher:
        """Return this thread's publisher, connecting it when needed."""
        if self._closed.is_set():
            self._drop_publisher()
            raise BrokerClosed("the broker is closed; create a new one")

        publisher = getattr(self._local, "publisher", None)
        if publisher is not None and publisher.channel.is_open:
            return publisher

        self._drop_publisher()
        connection, channel = self._connect("publisher")
        channel.confirm_delivery()
        publisher = _Publisher(connection, channel)
        self._local.publisher = publisher
        with self._lock:
            self._publishers[threading.current_thread()] = publisher
        self._close_reachable_publishers(keep_current=True)
        return publisher

    def _with_publisher(self, operation, description: str, queue: str | None = None):
        """Run operation on this thread's publisher channel, once more on a new connection.

        Raises ValueError when queue is given and RabbitMQ reports that it does not exist.
        """
        for attempt in (1, 2):
            try:
                return operation(self._publisher())
            except pika.exceptions.ChannelClosedByBroker as error:
                self._drop_publisher()
                if queue is not None and error.reply_code == 404:
                    raise ValueError(f"queue {queue} does not exist") from None
                if attempt == 2:
                    raise
                logger.warning("%s failed (%r); retrying on a new connection", description, error)
            except (pika.exceptions.UnroutableError, pika.exceptions.NackError):
                raise
            except pika.exceptions.AMQPError as error:
                self._drop_publisher()
                if attempt == 2:
                    raise
                logger.warning("%s failed (%r); retrying on a new connection", description, error)

    def _drop_publisher(self) -> None:
        """Close this thread's publisher connection, if it has one."""
        publisher = getattr(self._local, "publisher", None)
        if publisher is None:
            return
        self._local.publisher = None
        with self._lock:
            if self._publishers.get(threading.current_thread()) is publisher:
                del self._publishers[threading.current_thread()]
        _close_quietly(publisher.connection)

    def _close_reachable_publishers(self, keep_current: bool = False) -> None:
        """Close publisher connections of this thread and of threads that have ended."""
        current = threading.current_thread()
        with self._lock:
            reachable = [thread for thread in self._publishers
                         if not thread.is_alive() or (thread is current and not keep_current)]
            closing = [self._publishers.pop(thread) for thread in reachable]
        if current in reachable:
            self._local.publisher = None
        for publisher in closing:
            _close_quietly(publisher.connection)

    def _wake_consumers(self) -> None:
        with self._lock:
            connections = list(self._consumer_connections)
        for connection in connections:
            _wake(connection)

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise BrokerClosed("the broker is closed; create a new one")

    def _stopping(self, stop: threading.Event) -> bool:
        return stop.is_set() or self._closed.is_set()

    def _pause(self, seconds: float, stop: threading.Event) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping(stop) and (left := deadline - time.monotonic()) > 0:
            stop.wait(min(left, STOP_CHECK_S))


class _Publisher:
    """One thread's publisher connection, its confirm-mode channel, and the partitions declared on it."""

    def __init__(self, connection: pika.BlockingConnection, channel):
        self.connection = connection
        self.channel = channel
        self.declared: set[str] = set()


class _Backoff:
    """Capped exponential delays between reconnects."""

    def __init__(self, first_s: float, max_s: float):
        self._first_s = first_s
        self._max_s = max_s
        self._next_s = first_s

    def next_delay(self) -> float:
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self._max_s)
        return delay

    def reset(self) -> None:
        self._next_s = self._first_s


def _properties(headers: dict | None, message_id: str | None) -> pika.BasicProperties:
    return pika.BasicProperties(content_type=CONTENT_TYPE,
                                delivery_mode=pika.DeliveryMode.Persistent.value,
                                headers=headers or None, message_id=message_id)


def _wake(connection: pika.BlockingConnection) -> None:
    """Make the connection's thread return from process_data_events; safe from any thread."""
    try:
        connection.add_callback_threadsafe(_do_nothing)
    except pika.exceptions.ConnectionWrongStateError:
        pass


def _do_nothing() -> None:
    pass


def _close_quietly(connection: pika.BlockingConnection) -> None:
    if connection.is_open:
        try:
            connection.close()
        except pika.exceptions.AMQPError as error:
            logger.debug("closing a RabbitMQ connection failed: %r", error)
