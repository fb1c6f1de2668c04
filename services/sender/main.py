"""Composition of a sender instance: one consumer group per tenant's job queue.

Each tenant's jobs wait in the tenant's own partition of `tm.jobs` (jobs published to
`tm.jobs` itself are moved there first), and each tenant's queue has worker threads of
its own in every instance. A worker waits for its text's send slot, so a tenant with a
long campaign keeps only its own workers busy, and another tenant's texts go out at
their own rate meanwhile.

How many workers a queue gets: a worker has one text in flight, from its send slot
to Twilio's answer, so keeping a rate of R texts per second with a Twilio create
latency of L seconds needs about R x L texts in flight. Each instance gives a tenant's
queue ceil(R x L) + 1 workers (the extra one covers the store and broker work around
each call), at most MAX_WORKERS_PER_QUEUE, with R the tenant's segments-per-second rate
(a bound on its texts per second). L starts at INITIAL_LATENCY_S and follows the mean
of the calls measured since; when it grows, the queue gets more workers. Every
worker has a prefetch of 1: a second prefetched text would only wait behind the first
while another instance could send it, and would be delivered again after a crash.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from typing import Callable

from libs.common.broker import QUEUE_JOBS, tenant_jobs_queue
from libs.common.process import ConsumerGroup
from libs.common.runtime import Runtime
from services.sender.pacing import Pacer
from services.sender.service import Sender, no_checkpoint

logger = logging.getLogger(__name__)

PREFETCH_PER_WORKER = 1
MAX_WORKERS_PER_QUEUE = 32
# How often an instance looks for new tenants and re-sizes its consumer groups, in seconds.
DISCOVERY_S = 5.0


def workers_for(rate_sps: float, latency_s: float, max_workers: int = MAX_WORKERS_PER_QUEUE) -> int:
    """Return how many workers one instance runs for a queue with this rate and Twilio latency."""
    if math.isinf(rate_sps):
        return max_workers
    return max(1, min(max_workers, math.ceil(rate_sps * latency_s) + 1))


def build_pacer(runtime: Runtime) -> Pacer:
    """Return the pacer of an instance, with the margin of TM_SENDER_PACING_MARGIN_MS."""
    return Pacer(runtime.db, runtime.clock, margin_s=runtime.settings.sender_pacing_margin_ms / 1000)


def build_sender(runtime: Runtime, pacer: Pacer | None = None, *, stopping: threading.Event | None = None,
                 checkpoint: Callable[[str], None] = no_checkpoint) -> Sender:
    return Sender(runtime.db, broker=runtime.broker, tenants=runtime.tenants, twilio_factory=runtime.twilio,
                  pacer=pacer or build_pacer(runtime), notifier=runtime.notifier, clock=runtime.clock,
                  public_callback_url=runtime.settings.public_callback_url,
                  lease_s=runtime.settings.sender_claim_lease_s, stopping=stopping, checkpoint=checkpoint)


def tenant_rates(db) -> dict[str, float]:
    """Return each tenant's sender rate in segments per second, keyed by Cloud ID."""
    return {document["_id"]: float(document.get("sender_rate_sps", 3.0))
            for document in db.tenants.find({}, {"sender_rate_sps": 1})}


class SenderPool:
    """The consumer threads of one sender instance.

    Each tenant's queue gets a consumer group sized by workers_for. `tm.jobs` itself,
    where producers may publish jobs of any tenant, gets `shared_workers` that pass each
    job to `route` (which moves it to its tenant's queue), or to `handle` without one.
    `refresh()` starts groups for new tenants and adds workers when a rate or the
    measured latency grows. start() runs it at once and then every `refresh_s` seconds.
    """

    def __init__(self, broker, handle: Callable, *, tenant_rates: Callable[[], dict[str, float]],
                 latency_s: Callable[[], float], stop: threading.Event, shared_workers: int,
                 route: Callable | None = None, refresh_s: float = DISCOVERY_S,
                 max_workers: int = MAX_WORKERS_PER_QUEUE):
        self._broker = broker
        self._handle = handle
        self._route = route or handle
        self._tenant_rates = tenant_rates
        self._latency_s = latency_s
        self._stop = stop
        self._shared_workers = shared_workers
        self._refresh_s = refresh_s
        self._max_workers = max_workers
        self._groups: list[ConsumerGroup] = []
        self._workers: dict[str, int] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._refresh_until_stopped, name="sender-discovery", daemon=True)

    @property
    def queues(self) -> list[str]:
        with self._lock:
            return list(self._workers)

    def workers(self, queue: str) -> int:
        """Return how many workers consume queue in this instance."""
        with self._lock:
            return self._workers.get(queue, 0)

    @property
    def consuming(self) -> bool:
        """Return True while at least one worker is connected to its queue."""
        return any(self._broker.consumers(queue) > 0 for queue in self.queues)

    def start(self) -> SenderPool:
        logger.info("sender instance %s starting", uuid.uuid4().hex[:8])
        self._grow(QUEUE_JOBS, self._shared_workers, self._route)
        self.refresh()
        self._thread.start()
        return self

    def refresh(self) -> None:
        """Start or grow the consumer group of every tenant's queue."""
        latency_s = self._latency_s()
        for tenant_id, rate in self._tenant_rates().items():
            try:
                queue = tenant_jobs_queue(tenant_id)
            except ValueError:
                logger.error("tenant %r cannot have a job queue: its Cloud ID is not a valid queue key", tenant_id)
                continue
            self._grow(queue, workers_for(rate, latency_s, self._max_workers), self._handle)

    def join(self, timeout: float | None = None) -> None:
        """Wait for every worker to finish its text in flight after `stop` was set."""
        self._thread.join(timeout)
        with self._lock:
            groups = list(self._groups)
        for group in groups:
            group.join(timeout)

    def _grow(self, queue: str, wanted: int, handler: Callable) -> None:
        with self._lock:
            extra = wanted - self._workers.get(queue, 0)
            if extra <= 0 or self._stop.is_set():
                return
            self._workers[queue] = wanted
            group = ConsumerGroup(self._broker, queue, handler, prefetch=PREFETCH_PER_WORKER, workers=extra,
                                  stop=self._stop, name=f"sender {queue}")
            self._groups.append(group)
        logger.info("consuming %s with %s workers", queue, wanted)
        group.start()

    def _refresh_until_stopped(self) -> None:
        while not self._stop.wait(self._refresh_s):
            try:
                self.refresh()
            except Exception:
                logger.exception("looking for new tenants failed; trying again in %s s", self._refresh_s)


def start(runtime: Runtime, stop: threading.Event, *, workers: int | None = None) -> SenderPool:
    """Start a sender instance on the runtime's broker; it stops after its texts in flight once stop is set."""
    sender = build_sender(runtime, stopping=stop)
    return SenderPool(runtime.broker, sender.handle, route=sender.route,
                      tenant_rates=lambda: tenant_rates(runtime.db), latency_s=lambda: sender.latency.mean_s,
                      stop=stop, shared_workers=workers or runtime.settings.sender_workers).start()
