"""Composition and run loop of the scheduler process, and its dead-letter consumer."""

from __future__ import annotations

import logging
import threading

from libs.common.broker import QUEUE_DEAD
from libs.common.process import ConsumerGroup
from libs.common.runtime import Runtime
from services.scheduler.dead_letters import DeadLetterHandler
from services.scheduler.service import Scheduler

logger = logging.getLogger(__name__)

# One dead letter at a time: dead letters are rare, and a prefetched one would only wait
# behind one that is paused between tries.
DEAD_LETTER_PREFETCH = 1
# How long the run loop waits for the dead-letter consumer to finish its dead letter in flight.
DEAD_LETTER_JOIN_S = 10.0


def build_scheduler(runtime: Runtime) -> Scheduler:
    return Scheduler(runtime.db, broker=runtime.broker, clock=runtime.clock)


def build_dead_letter_handler(runtime: Runtime, stop: threading.Event) -> DeadLetterHandler:
    """Return the handler of `tm.dead`; its pause between tries ends early once stop is set."""
    return DeadLetterHandler(runtime.db, broker=runtime.broker, tenants=runtime.tenants, twilio_factory=runtime.twilio,
                             notifier=runtime.notifier, clock=runtime.clock,
                             queue_prefix=runtime.broker.queue_prefix, pause=stop.wait)


def start_dead_letter_consumer(runtime: Runtime, stop: threading.Event) -> ConsumerGroup:
    """Consume `tm.dead` on a thread of its own until stop is set."""
    handler = build_dead_letter_handler(runtime, stop)
    logger.info("scheduler consuming %s", QUEUE_DEAD)
    return ConsumerGroup(runtime.broker, QUEUE_DEAD, handler.handle, prefetch=DEAD_LETTER_PREFETCH, workers=1,
                         stop=stop, name="dead-letters").start()


def run(runtime: Runtime, stop: threading.Event) -> None:
    """Consume `tm.dead` and tick every `TM_SCHEDULER_POLL_S` seconds until stop is set."""
    scheduler = build_scheduler(runtime)
    dead_letters = start_dead_letter_consumer(runtime, stop)
    logger.info("scheduler started, polling every %s s", runtime.settings.scheduler_poll_s)
    while not stop.is_set():
        try:
            scheduler.tick()
        except Exception:
            logger.exception("scheduler tick failed; trying again at the next tick")
        stop.wait(runtime.settings.scheduler_poll_s)
    dead_letters.join(DEAD_LETTER_JOIN_S)
    logger.info("scheduler stopped")
