"""Composition of the feedback process: the webhook app and the iMIS writer."""

from __future__ import annotations

import logging
import threading

from libs.common.broker import QUEUE_IMIS
from libs.common.process import ConsumerGroup, runtime_from_env
from libs.common.runtime import Runtime
from services.feedback.service import ImisWriter

logger = logging.getLogger(__name__)

# iMIS asks integrators for serial calls, so one writer with one message at a time.
PREFETCH = 1

__all__ = ["runtime_from_env", "start_imis_writer"]


def start_imis_writer(runtime: Runtime, stop: threading.Event) -> ConsumerGroup:
    writer = ImisWriter(runtime.db, tenants=runtime.tenants, imis_factory=runtime.imis, clock=runtime.clock,
                        notifier=runtime.notifier)
    logger.info("feedback service consuming %s", QUEUE_IMIS)
    return ConsumerGroup(runtime.broker, QUEUE_IMIS, writer.handle, prefetch=PREFETCH, workers=1, stop=stop,
                         name="imis-writer").start()
