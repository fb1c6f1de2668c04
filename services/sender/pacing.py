"""Send slots per sender number, shared by every sender instance through the store."""

from __future__ import annotations

import logging
import math

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

logger = logging.getLogger(__name__)

WINDOW_S = 1.0
# Float tolerance when comparing slot times, far below any margin or spacing.
EPSILON_S = 1e-6


class Pacer:
    """Reserve the time at which a text may go out from a sender number.

    The rule is Twilio's: segments per second per sender. A reservation keeps two
    promises. Consecutive texts are spaced by their segments divided by the rate, so
    the flow is even. No half-open window of one second (widened by `margin_s`, which
    absorbs the jitter between the reserved time and the moment Twilio receives the
    request, and the clock skew between instances) holds more than `rate` segments, all
    of a text's segments counted at the moment it is sent. The margin costs `margin_s`
    per second of throughput: 1.5% at the default.

    The state is one document per sender number in `rate_windows`, updated by
    compare-and-set on a version, so any number of instances share one limit. Slots
    are handed out in increasing order, so a slot is never earlier than one reserved
    before it.
    """

    def __init__(self, db: Database, clock, *, margin_s: float = 0.015):
        self._windows = db.rate_windows
        self._clock = clock
        self._margin_s = margin_s

    def reserve(self, key: str, segments: int, rate: float) -> float:
        """Return the epoch time at which a text of `segments` may be sent (now or later).

        A rate of math.inf means no limit: the slot is now and nothing is stored.
        """
        if math.isinf(rate):
            return self._clock.time()
        while True:
            document = self._windows.find_one({"_id": key})
            effective_rate = rate * _slow_factor(document, self._clock.time())
            slot, slots = self._next_slot(document, segments, effective_rate)
            if self._store(key, document, slots, slot + segments / effective_rate):
                return slot

    def wait_for(self, key: str, segments: int, rate: float) -> float:
        """Reserve a slot and sleep until it; return the slot time."""
        slot = self.reserve(key, segments, rate)
        self._clock.sleep(slot - self._clock.time())
        return slot

    def slow_down(self, key: str, *, factor: float, duration_s: float) -> None:
        """Send from this number at `factor` times its rate for the next `duration_s` seconds.

        Used when Twilio reports that its queue for the sender is full or that texts
        expired in it. A later call replaces the factor and extends the period.
        """
        until = self._clock.time() + duration_s
        self._windows.update_one(
            {"_id": key},
            {"$set": {"slow_factor": factor, "slow_until": until}, "$inc": {"version": 1},
             "$setOnInsert": {"slots": [], "next_at": 0.0}},
            upsert=True,
        )
        logger.warning("sending from %s slowed to %.0f%% of its rate for %.0f s", key, factor * 100, duration_s)

    def _next_slot(self, document: dict | None, segments: int, rate: float) -> tuple[float, list]:
        # A text with more segments than the rate fits no window; it fills one whole window,
        # and the spacing after it (segments / rate) keeps the average rate.
        counted = min(segments, rate)
        now = self._clock.time()
        slots = [tuple(entry) for entry in (document or {}).get("slots", [])]
        slot = max(now, (document or {}).get("next_at", now))
        window = WINDOW_S + self._margin_s
        while True:
            recent = [(at, used) for at, used in slots if slot - at < window - EPSILON_S]
            if sum(used for _, used in recent) + counted <= rate + EPSILON_S:
                return slot, recent + [(slot, counted)]
            slot = recent[0][0] + window

    def _store(self, key: str, document: dict | None, slots: list, next_at: float) -> bool:
        entries = [list(entry) for entry in slots]
        if document is None:
            try:
                self._windows.insert_one({"_id": key, "slots": entries, "next_at": next_at, "version": 1})
                return True
            except DuplicateKeyError:
                return False
        result = self._windows.update_one(
            {"_id": key, "version": document["version"]},
            {"$set": {"slots": entries, "next_at": next_at}, "$inc": {"version": 1}},
        )
        return result.modified_count == 1


def _slow_factor(document: dict | None, now: float) -> float:
    if document and document.get("slow_until", 0) > now:
        return document.get("slow_factor", 1.0)
    return 1.0
