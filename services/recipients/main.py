"""Composition and run loop of the recipients process."""

from __future__ import annotations

import logging
import threading

from libs.common.broker import QUEUE_RUNS
from libs.common.process import ConsumerGroup
from libs.common.runtime import Runtime
from services.recipients.service import RunExpander

logger = logging.getLogger(__name__)

# One run at a time per consumer: expansion is bound by iMIS paging, and iMIS asks
# integrators for serial calls.
PREFETCH = 1


def build_expander(runtime: Runtime) -> RunExpander:
    return RunExpander(runtime.db, broker=runtime.broker, tenants=runtime.tenants, imis_factory=runtime.imis,
                       notifier=runtime.notifier, clock=runtime.clock, message_ids=runtime.message_ids)


def start(runtime: Runtime, stop: threading.Event) -> ConsumerGroup:
    expander = build_expander(runtime)
    logger.info("recipients service consuming %s", QUEUE_RUNS)
    return ConsumerGroup(runtime.broker, QUEUE_RUNS, expander.handle, prefetch=PREFETCH, workers=1, stop=stop,
                         name="recipients").start()
