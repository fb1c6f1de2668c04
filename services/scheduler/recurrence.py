"""Occurrences of a recurring campaign, as UTC instants, from wall-clock rules.

A rule keeps its time of day in the tenant's IANA time zone. Python's zoneinfo reads a
wall-clock time with `fold=0`, which gives the two daylight-saving answers RFC 5545
asks for: a time that does not exist (clocks spring forward) takes the UTC offset in
force before the change, and a time that happens twice (clocks fall back) is taken at
its first occurrence. A monthly day past the end of a short month falls on that
month's last day.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

FREQUENCIES = ("daily", "weekly", "monthly")
WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class RuleError(ValueError):
    """A recurrence rule is incomplete or has a value that cannot work."""


@dataclass(frozen=True)
class Rule:
    """When a campaign repeats: frequency, local time, time zone, first and last day."""

    freq: str
    at: time
    tz: ZoneInfo
    start: date
    end: date | None = None
    day: int | None = None
    weekdays: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, data: dict) -> "Rule":
        """Build a rule from its stored form; raise RuleError saying which field is wrong."""
        freq = data.get("freq")
        if freq not in FREQUENCIES:
            raise RuleError(f"freq must be one of {', '.join(FREQUENCIES)}, got {freq!r}")
        rule = cls(freq=freq, at=_parse_time(data.get("time")), tz=_parse_zone(data.get("tz")),
                   start=_parse_date("start", data.get("start")),
                   end=_parse_date("end", data["end"]) if data.get("end") else None,
                   day=_parse_day(data.get("day")) if freq == "monthly" else None,
                   weekdays=_parse_weekdays(data.get("weekdays")) if freq == "weekly" else ())
        if rule.freq == "monthly" and rule.day is None:
            raise RuleError("a monthly rule needs day, the day of the month from 1 to 31")
        if rule.end is not None and rule.end < rule.start:
            raise RuleError("end is before start: pick an end date on or after the start date")
        return rule

    def occurrences(self) -> Iterator[datetime]:
        """Yield every occurrence in order, as aware UTC datetimes."""
        for day in self._days():
            if self.end is not None and day > self.end:
                return
            local = datetime.combine(day, self.at, tzinfo=self.tz)
            yield local.astimezone(timezone.utc)

    def next_after(self, moment: datetime) -> datetime | None:
        """Return the first occurrence strictly after `moment`, or None when the rule has ended."""
        for occurrence in self.occurrences():
            if occurrence > moment:
                return occurrence
        return None

    def _days(self) -> Iterator[date]:
        if self.freq == "daily":
            day = self.start
            while True:
                yield day
                day += timedelta(days=1)
        elif self.freq == "weekly":
            day = self.start
            while True:
                if day.weekday() in self.weekdays:
                    yield day
                day += timedelta(days=1)
        else:
            year, month = self.start.year, self.start.month
            while True:
                last = calendar.monthrange(year, month)[1]
                day = date(year, month, min(self.day, last))
                if day >= self.start:
                    yield day
                year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def _parse_time(value: object) -> time:
    try:
        hours, minutes = str(value).split(":")
        return time(int(hours), int(minutes))
    except (ValueError, TypeError):
        raise RuleError(f"time must be a 24-hour HH:MM time such as 09:30, got {value!r}") from None


def _parse_zone(value: object) -> ZoneInfo:
    try:
        return ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise RuleError(f"tz must be an IANA time zone such as America/New_York, got {value!r}") from None


def _parse_date(name: str, value: object) -> date:
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise RuleError(f"{name} must be a date as YYYY-MM-DD, got {value!r}") from None


def _parse_day(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or not 1 <= value <= 31:
        raise RuleError(f"day must be a day of the month from 1 to 31, got {value!r}")
    return value


def _parse_weekdays(value: object) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise RuleError(f"a weekly rule needs weekdays, a list such as [\"mon\", \"thu\"], got {value!r}")
    try:
        return tuple(sorted({WEEKDAY_NAMES.index(str(name).lower()[:3]) for name in value}))
    except ValueError:
        raise RuleError(f"weekdays must be names from {', '.join(WEEKDAY_NAMES)}, got {value!r}") from None
