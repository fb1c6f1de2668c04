"""Composition and run loop of the scheduler process."""

from __future__ import annotations

import logging
import threading

from libs.common.runtime import Runtime
from services.scheduler.service import Scheduler

logger = logging.getLogger(__name__)


def build_scheduler(runtime: Runtime) -> Scheduler:
    return Scheduler(runtime.db, broker=runtime.broker, clock=runtime.clock)


def run(runtime: Runtime, stop: threading.Event) -> None:
    """Tick every `TM_SCHEDULER_POLL_S` seconds until stop is set."""
    scheduler = build_scheduler(runtime)
    logger.info("scheduler started, polling every %s s", runtime.settings.scheduler_poll_s)
    while not stop.is_set():
        try:
            scheduler.tick()
        except Exception:
            logger.exception("scheduler tick failed; trying again at the next tick")
        stop.wait(runtime.settings.scheduler_poll_s)
    logger.info("scheduler stopped")
