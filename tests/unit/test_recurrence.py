"""Recurring schedule rules: the shared daylight-saving cases and rule validation."""

import json
from datetime import datetime, timezone
from itertools import islice

import pytest

from services.scheduler.recurrence import Rule, RuleError
from tests.conftest import CASES_DIR

SCHEDULE_CASES = json.loads((CASES_DIR / "schedules.json").read_text(encoding="utf-8"))["cases"]


@pytest.mark.parametrize("case", SCHEDULE_CASES, ids=lambda case: f"{case['rule']['freq']}-{case['rule']['start']}")
def test_occurrences_match_shared_cases(case):
    rule = Rule.from_dict(case["rule"])

    found = [moment.strftime("%Y-%m-%dT%H:%M:%SZ") for moment in islice(rule.occurrences(), case["first"])]

    assert found == case["expect"]


def test_weekly_rule_fires_on_named_days():
    rule = Rule.from_dict({"freq": "weekly", "time": "18:00", "tz": "Europe/London", "start": "2027-03-22",
                           "weekdays": ["mon", "thu"]})

    found = list(islice(rule.occurrences(), 4))

    assert [moment.strftime("%a %d %H:%M") for moment in found] == [
        "Mon 22 18:00", "Thu 25 18:00", "Mon 29 17:00", "Thu 01 17:00"]


def test_rule_stops_after_end_date():
    rule = Rule.from_dict({"freq": "daily", "time": "09:00", "tz": "UTC", "start": "2027-01-01",
                           "end": "2027-01-03"})

    assert len(list(rule.occurrences())) == 3


def test_next_after_is_strictly_later():
    rule = Rule.from_dict({"freq": "daily", "time": "09:00", "tz": "UTC", "start": "2027-01-01"})
    first = datetime(2027, 1, 1, 9, tzinfo=timezone.utc)

    assert rule.next_after(first) == datetime(2027, 1, 2, 9, tzinfo=timezone.utc)


def test_next_after_end_is_none():
    rule = Rule.from_dict({"freq": "daily", "time": "09:00", "tz": "UTC", "start": "2027-01-01", "end": "2027-01-01"})

    assert rule.next_after(datetime(2027, 1, 1, 9, tzinfo=timezone.utc)) is None


@pytest.mark.parametrize("change, expected", [
    ({"freq": "hourly"}, "freq must be one of"),
    ({"time": "9am"}, "time must be a 24-hour HH:MM"),
    ({"time": "25:00"}, "time must be a 24-hour HH:MM"),
    ({"tz": "Mars/Olympus"}, "tz must be an IANA time zone"),
    ({"start": "next week"}, "start must be a date"),
    ({"freq": "monthly"}, "a monthly rule needs day"),
    ({"freq": "monthly", "day": 32}, "day must be a day of the month"),
    ({"freq": "weekly"}, "a weekly rule needs weekdays"),
    ({"freq": "weekly", "weekdays": ["someday"]}, "weekdays must be names"),
    ({"end": "2026-12-31"}, "end is before start"),
])
def test_invalid_rule_says_what_to_fix(change, expected):
    fields = {"freq": "daily", "time": "09:00", "tz": "UTC", "start": "2027-01-01"}
    fields.update(change)

    with pytest.raises(RuleError) as raised:
        Rule.from_dict(fields)

    assert expected in str(raised.value)
