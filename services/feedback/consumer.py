"""Consumers of iMIS jobs: one worker per tenant's partition of `tm.imis`, and one for `tm.imis` itself.

The iMIS vendor requests serial calls from integrators, so an instance runs exactly one
worker, with a prefetch of 1, per tenant's partition. A site then gets one call at a
time from each instance, and a site that is slow or failing (timeouts, backoff on 429
and 5xx) holds up only its own tenant's partition. Each gunicorn worker process of the
feedback service is an instance, so N of them give a site up to N calls at a time.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Iterable

from pymongo.database import Database

from libs.common.broker import QUEUE_IMIS, Delivery, PublishError, Reject, Retry
from libs.common.imis_queue import EARLIER_ATTEMPT_HEADER, imis_queue, tenant_imis_queue
from libs.common.logs import log_context
from libs.common.process import ConsumerGroup
from libs.common.tenants import TenantNotFound, TenantRepository
from services.feedback.service import ImisWriter

logger = logging.getLogger(__name__)

# One worker with one job at a time per queue, for the serial calls the iMIS vendor requests.
WORKERS_PER_QUEUE = 1
PREFETCH = 1
# How often an instance looks for new tenants, in seconds.
DISCOVERY_S = 5.0


def tenant_ids(db: Database) -> list[str]:
    """Return the Cloud ID of every tenant."""
    return [document["_id"] for document in db.tenants.find({}, {"_id": 1})]


class ImisJobRouter:
    """Handler for `tm.imis` and its partitions that writes each job from its tenant's partition.

    A job found elsewhere (published to `tm.imis` by an older version, or to another
    tenant's partition) is moved to its tenant's partition, so each site's jobs wait in
    one queue. The jobs of a tenant whose Cloud ID cannot name a queue are written from
    `tm.imis` itself. A job without a known kind or tenant goes to the writer where it
    is, and the writer rejects it.
    """

    def __init__(self, broker, tenants: TenantRepository, writer: ImisWriter):
        self._broker = broker
        self._tenants = tenants
        self._writer = writer

    def handle(self, delivery: Delivery) -> None:
        """Write the job, or move it to its tenant's queue; raise Reject for an invalid job and Retry to try again."""
        home = self._home_queue(delivery.body)
        if home is None or home == delivery.queue:
            self._writer.handle(delivery)
        else:
            self._move(delivery, home)

    @staticmethod
    def _home_queue(body: dict) -> str | None:
        """Return the queue the job is written from, or None for a job the writer rejects."""
        tenant_id = body.get("tenant_id")
        if body.get("kind") not in ImisWriter.KINDS or not isinstance(tenant_id, str):
            return None
        return imis_queue(tenant_id)

    def _move(self, delivery: Delivery, home: str) -> None:
        """Publish the job to its home queue, marked when an earlier delivery may have reached iMIS."""
        tenant_id = delivery.body["tenant_id"]
        with log_context(tenant_id=tenant_id, message_id=delivery.body.get("message_id")):
            try:
                self._tenants.get(tenant_id)
            except TenantNotFound:
                raise Reject(f"unknown tenant {tenant_id!r}") from None

            headers = dict(delivery.headers)
            if delivery.redelivered or delivery.attempt > 1:
                headers[EARLIER_ATTEMPT_HEADER] = True
            try:
                self._broker.publish(home, delivery.body, headers=headers, message_id=delivery.message_id)
            except PublishError as error:
                raise Retry(f"moving the iMIS job to {home} failed: {error}") from None
            logger.info("moved iMIS job %s from %s to %s", delivery.message_id, delivery.queue, home)


class ImisWriterPool:
    """The iMIS writer's consumer threads in one feedback instance.

    `tm.imis` and each tenant's partition get WORKERS_PER_QUEUE workers with a prefetch
    of PREFETCH, all running `handle`. refresh() starts the worker of each tenant added
    since the last look. start() runs it at once and then every `refresh_s` seconds.
    """

    def __init__(self, broker, handle: Callable[[Delivery], None], *, tenant_ids: Callable[[], Iterable[str]],
                 stop: threading.Event, refresh_s: float = DISCOVERY_S):
        self._broker = broker
        self._handle = handle
        self._tenant_ids = tenant_ids
        self._stop = stop
        self._refresh_s = refresh_s
        self._groups: dict[str, ConsumerGroup] = {}
        self._unpartitioned: set[str] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._refresh_until_stopped, name="imis-writer-discovery",
                                        daemon=True)

    @property
    def queues(self) -> list[str]:
        """Return the queues this instance consumes."""
        with self._lock:
            return list(self._groups)

    @property
    def consuming(self) -> bool:
        """Return True while at least one worker is connected to its queue."""
        return any(self._broker.consumers(queue) > 0 for queue in self.queues)

    def start(self) -> ImisWriterPool:
        self._consume(QUEUE_IMIS)
        self.refresh()
        self._thread.start()
        return self

    def refresh(self) -> None:
        """Start the worker of every tenant's partition that has none yet."""
        for tenant_id in self._tenant_ids():
            try:
                queue = tenant_imis_queue(tenant_id)
            except ValueError:
                self._warn_unpartitioned(tenant_id)
                continue
            self._consume(queue)

    def join(self, timeout: float | None = None) -> None:
        """Wait for every worker to finish its job in flight after `stop` was set."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            groups = list(self._groups.values())
        for group in groups:
            group.join(timeout)

    def _consume(self, queue: str) -> None:
        with self._lock:
            if queue in self._groups or self._stop.is_set():
                return
            group = ConsumerGroup(self._broker, queue, self._handle, prefetch=PREFETCH, workers=WORKERS_PER_QUEUE,
                                  stop=self._stop, name=f"imis-writer {queue}")
            self._groups[queue] = group
        logger.info("writing the iMIS jobs of %s with %s worker(s)", queue, WORKERS_PER_QUEUE)
        group.start()

    def _warn_unpartitioned(self, tenant_id: str) -> None:
        """Log once per tenant that its jobs are written from `tm.imis`, where other tenants' jobs are moved."""
        if tenant_id in self._unpartitioned:
            return
        self._unpartitioned.add(tenant_id)
        logger.warning("tenant %r has no iMIS queue of its own because its Cloud ID is not a valid queue key; "
                       "its iMIS jobs are written from %s", tenant_id, QUEUE_IMIS)

    def _refresh_until_stopped(self) -> None:
        while not self._stop.wait(self._refresh_s):
            try:
                self.refresh()
            except Exception:
                logger.exception("looking for new tenants failed; trying again in %s s", self._refresh_s)
