"""Composition and run loop of a sender instance."""

from __future__ import annotations

import logging
import threading
import uuid

from libs.common.broker import QUEUE_JOBS
from libs.common.process import ConsumerGroup
from libs.common.runtime import Runtime
from services.sender.pacing import Pacer
from services.sender.service import Sender

logger = logging.getLogger(__name__)

# Each worker thread holds one text in flight and one more prefetched, so the broker
# round trip never leaves a worker idle; the number of workers sets the concurrency.
PREFETCH_PER_WORKER = 2


def build_sender(runtime: Runtime, pacer: Pacer | None = None) -> Sender:
    return Sender(runtime.db, broker=runtime.broker, tenants=runtime.tenants, twilio_factory=runtime.twilio,
                  pacer=pacer or Pacer(runtime.db, runtime.clock), notifier=runtime.notifier, clock=runtime.clock,
                  public_callback_url=runtime.settings.public_callback_url,
                  lease_s=runtime.settings.sender_claim_lease_s)


def start(runtime: Runtime, stop: threading.Event, *, workers: int | None = None) -> ConsumerGroup:
    sender = build_sender(runtime)
    count = workers or runtime.settings.sender_workers
    logger.info("sender instance %s consuming %s with %s workers", uuid.uuid4().hex[:8], QUEUE_JOBS, count)
    return ConsumerGroup(runtime.broker, QUEUE_JOBS, sender.handle, prefetch=PREFETCH_PER_WORKER, workers=count,
                         stop=stop, name="sender").start()
