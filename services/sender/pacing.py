"""Send slots per sender number, shared by every sender instance through the store."""

from __future__ import annotations

import logging

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

logger = logging.getLogger(__name__)

WINDOW_S = 1.0


class Pacer:
    """Reserve the time at which a text may go out from a sender number.

    The rule is Twilio's: segments per second per sender. A reservation keeps two
    promises. Consecutive texts are spaced by their segments divided by the rate, so
    the flow is even. No half-open window of one second (plus `margin_s`, which absorbs
    the jitter between our clock and the moment Twilio receives the request) holds
    more than `rate` segments. The state is one document per sender number, updated
    by compare-and-set on a version, so any number of instances share one limit.
    """

    def __init__(self, db: Database, clock, *, margin_s: float = 0.01):
        self._windows = db.rate_windows
        self._clock = clock
        self._margin_s = margin_s

    def reserve(self, key: str, segments: int, rate: float) -> float:
        """Return the epoch time at which a text of `segments` may be sent (now or later)."""
        if segments > rate:
            segments_in_window = rate
        else:
            segments_in_window = segments
        while True:
            document = self._windows.find_one({"_id": key})
            slot, slots = self._next_slot(document, segments_in_window, rate)
            if self._store(key, document, slots, slot + segments / rate):
                return slot

    def wait_for(self, key: str, segments: int, rate: float) -> float:
        """Reserve a slot and sleep until it; return the slot time."""
        slot = self.reserve(key, segments, rate)
        self._clock.sleep(slot - self._clock.time())
        return slot

    def _next_slot(self, document: dict | None, segments: float, rate: float) -> tuple[float, list]:
        now = self._clock.time()
        slots = [tuple(entry) for entry in (document or {}).get("slots", [])]
        slot = max(now, (document or {}).get("next_at", now))
        window = WINDOW_S + self._margin_s
        while True:
            recent = [(at, used) for at, used in slots if at > slot - window]
            if sum(used for _, used in recent) + segments <= rate + 1e-9:
                return slot, recent + [(slot, segments)]
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
