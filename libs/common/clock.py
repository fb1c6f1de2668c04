"""Clocks the services receive, so that tests can control time."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone


class SystemClock:
    """Wall-clock time, and real sleeping."""

    def time(self) -> float:
        return time.time()

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class FakeClock:
    """A clock that moves only when a test advances it or something sleeps on it.

    `sleep` advances the time at once, so code that paces itself runs instantly while
    every timestamp it records stays exact.
    """

    def __init__(self, start: float = 1_800_000_000.0):
        self._now = start
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self._now

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), timezone.utc)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


def utc_from_timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def start_of_day(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


ONE_DAY = timedelta(days=1)


def as_utc(moment: datetime) -> datetime:
    """Return a datetime in UTC. A naive one is taken as UTC, because MongoDB returns stored datetimes naive."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)
