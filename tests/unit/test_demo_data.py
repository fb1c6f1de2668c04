"""Unit tests for the demo organisation and the benchmark rows."""

from collections import Counter

import phonenumbers
import pytest
from phonenumbers import NumberParseException, PhoneNumberType

from local import demo_data
from local.demo_data import (
    BENCH_DISTINCT_CAPACITY,
    DEMO_DUPLICATE_COUNT,
    DEMO_EMPTY_COUNT,
    DEMO_INVALID_COUNT,
    DEMO_MEMBER_COUNT,
    DEMO_RECIPIENT_COUNT,
    DEMO_SKIPPED_COUNT,
    DEMO_TWILIO_OPTED_OUT,
    DEMO_UNDELIVERED,
    MEMBER_COLUMNS,
    build_bench_member,
    build_demo_members,
)

SENDABLE_TYPES = {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE}


def e164_or_none(raw):
    """Return the E.164 form of a valid US number, None when invalid, "" when empty."""
    if not raw:
        return ""
    try:
        number = phonenumbers.parse(raw, "US")
    except NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    assert phonenumbers.number_type(number) in SENDABLE_TYPES
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@pytest.fixture(scope="module")
def members():
    return build_demo_members()


@pytest.fixture(scope="module")
def numbers(members):
    return [e164_or_none(m["Mobile"]) for m in members]


def test_member_count(members):
    assert len(members) == DEMO_MEMBER_COUNT == 250


def test_member_ids_unique(members):
    assert len({m["ID"] for m in members}) == DEMO_MEMBER_COUNT


def test_member_columns(members):
    assert all(list(m) == MEMBER_COLUMNS for m in members)


def test_invalid_count(numbers):
    assert numbers.count(None) == DEMO_INVALID_COUNT == 6


def test_empty_count(numbers):
    assert numbers.count("") == DEMO_EMPTY_COUNT == 2


def test_duplicate_count(numbers):
    valid = [n for n in numbers if n]
    assert len(valid) - len(set(valid)) == DEMO_DUPLICATE_COUNT == 5


def test_no_number_shared_thrice(numbers):
    counts = Counter(n for n in numbers if n)
    assert max(counts.values()) == 2


def test_duplicates_differ_in_format(members, numbers):
    raws_by_number: dict[str, list[str]] = {}
    for member, number in zip(members, numbers):
        if number:
            raws_by_number.setdefault(number, []).append(member["Mobile"])
    shared = [raws for raws in raws_by_number.values() if len(raws) > 1]
    assert all(len(set(raws)) == len(raws) for raws in shared)


def test_recipient_count(numbers):
    assert len({n for n in numbers if n}) == DEMO_RECIPIENT_COUNT


def test_skipped_count(numbers):
    assert sum(1 for n in numbers if not n) == DEMO_SKIPPED_COUNT


def test_formats_mixed(members):
    mobiles = [m["Mobile"] or "" for m in members]
    assert any(m.startswith("(") for m in mobiles)
    assert any(m.count(".") == 2 for m in mobiles)
    assert any(m.startswith("+1 ") for m in mobiles)
    assert any(m.startswith("1-") for m in mobiles)
    assert any(m.isdigit() and len(m) == 10 for m in mobiles)


def test_numbers_are_fictional(numbers):
    valid = [n for n in numbers if n]
    assert all(n[5:9] == "5550" and "100" <= n[9:] <= "199" for n in valid)


def test_scenario_members(members):
    by_name = Counter((m["FirstName"], m["LastName"]) for m in members)
    carla = next(m for m in members if m["FirstName"] == "Carla")
    assert e164_or_none(carla["Mobile"]) == "+12025550142"
    assert by_name[("Ben", "Okafor")] == 2


def test_ben_okafor_formats(members):
    mobiles = {m["Mobile"] for m in members if (m["FirstName"], m["LastName"]) == ("Ben", "Okafor")}
    assert mobiles == {"(202) 555-0188", "+1 202-555-0188"}


def test_opted_out_are_members(numbers):
    assert len(DEMO_TWILIO_OPTED_OUT) == 4
    assert set(DEMO_TWILIO_OPTED_OUT) <= set(numbers)


def test_undelivered_are_members(numbers):
    assert set(DEMO_UNDELIVERED) <= set(numbers)
    assert sorted(DEMO_UNDELIVERED.values()) == [30005, 30006, 30007]


def test_undelivered_not_opted_out():
    assert not set(DEMO_UNDELIVERED) & set(DEMO_TWILIO_OPTED_OUT)


def test_build_returns_equal_lists():
    assert build_demo_members() == build_demo_members()


def test_seed_imis_adds_users_and_query():
    class Recorder:
        def __init__(self):
            self.users = {}
            self.queries = {}

        def add_user(self, username, password):
            self.users[username] = password

        def add_query(self, path, columns, rows=None, **kwargs):
            self.queries[path] = (columns, rows)

    sim = Recorder()
    demo_data.seed_imis(sim)
    assert sim.users == {"demo": "demo", "staff": "staff", "textmanager-svc": "svc-secret"}
    assert len(sim.queries[demo_data.DEMO_QUERY_PATH][1]) == DEMO_MEMBER_COUNT


def test_demo_sign_in_user_is_admin():
    assert demo_data.DEMO_ADMINS == (demo_data.DEMO_STAFF_USER[0],)
    assert demo_data.DEMO_NON_ADMIN_USER[0] not in demo_data.DEMO_ADMINS


BENCH_ROWS = 10_000


@pytest.fixture(scope="module")
def bench_numbers():
    return [e164_or_none(build_bench_member(i)["Mobile"]) for i in range(BENCH_ROWS)]


def test_bench_invalid_share(bench_numbers):
    assert bench_numbers.count(None) == BENCH_ROWS * 5 // 100


def test_bench_duplicate_share(bench_numbers):
    valid = [n for n in bench_numbers if n]
    assert len(valid) - len(set(valid)) == BENCH_ROWS * 3 // 100


def test_bench_rows_deterministic():
    assert build_bench_member(98_765) == build_bench_member(98_765)


def test_bench_distinct_across_areas():
    last = build_bench_member(BENCH_DISTINCT_CAPACITY - 2)["Mobile"]
    first = build_bench_member(1)["Mobile"]
    assert e164_or_none(last) != e164_or_none(first)
