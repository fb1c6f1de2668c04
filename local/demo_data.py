"""Deterministic demo organisation: members in iMIS, and their numbers' state at Twilio.

Every number is fictional. Valid numbers come from the 555-0100..0199 blocks of three
US area codes, which phonenumbers accepts as valid US numbers of type
FIXED_LINE_OR_MOBILE. The synthetic benchmark query uses the rest of the 555 exchange
across twenty area codes so that it can hold 200,000 distinct numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from local.simulators.imis import ImisSimulator

DEMO_QUERY_PATH = "$/TextManager/Demo Members"
BENCH_QUERY_PATH = "$/TextManager/Bench"
MEMBER_COLUMNS = ["ID", "FirstName", "LastName", "Mobile"]

# The demo's sign-in user is the organisation's administrator. The second staff user
# is not, so it sees the settings read-only but runs campaigns all the same.
DEMO_STAFF_USER = ("demo", "demo")
DEMO_NON_ADMIN_USER = ("staff", "staff")
DEMO_ADMINS = (DEMO_STAFF_USER[0],)
DEMO_SERVICE_USER = ("textmanager-svc", "svc-secret")
DEMO_DEFAULT_COUNTRY = "US"
_TOTAL_ROWS = 250
_FIRST_ID = 10001
_AREA_CODES = ("202", "312", "415")

# The phone column mixes the formats staff type into iMIS.
_FORMATS = (
    "({area}) 555-{line}",
    "{area}.555.{line}",
    "+1 {area}-555-{line}",
    "1-{area}-555-{line}",
    "{area}555{line}",
)

_FIRST_NAMES = (
    "Ana", "Omar", "Grace", "Liam", "Priya", "Noah", "Zoe", "Mateo", "Hana", "Ethan",
    "Amara", "Lucas", "Ines", "Kofi", "Mei", "Samuel", "Leila", "Diego", "Nora", "Tariq",
    "Sofia", "Jonah", "Aiko", "Felix", "Rosa",
)
_LAST_NAMES = (
    "Ruiz", "Nguyen", "Patel", "Schmidt", "Kim", "Haddad", "Johnson", "Moreau", "Silva", "Mensah",
)

# Members named in the fault scenarios, keyed by the 10 digits of their number.
_NAMED_NUMBERS = {
    "2025550142": ("Carla", "Diaz"),
    "2025550188": ("Ben", "Okafor"),
}

# Rows whose number another member already has: (position in the query, first name,
# the shared number as typed). A first name of None marks a second contact record of
# the same person. Any other row is a household member with the owner's last name.
# The owner's row always shows the number in another format.
_SHARED_NUMBER_ROWS = (
    (12, "Luca", "202.555.0107"),
    (150, None, "(202) 555-0188"),
    (190, "Elena", "(312) 555-0125"),
    (233, "Iris", "2025550161"),
    (240, "Jamal", "1-415-555-0103"),
)

# Rows whose phone value is not a valid number: (position, value as typed).
_INVALID_ROWS = (
    (20, "555-0100"),
    (57, "12345"),
    (98, "not a number"),
    (141, "202-555-014"),
    (188, "(000) 555-0100"),
    (226, "+1 202 555 01432"),
)

# Rows with no phone value: one empty string, one null column.
_EMPTY_ROWS = (
    (45, ""),
    (205, None),
)


def _valid_numbers(count: int) -> list[str]:
    """Return `count` distinct 10-digit numbers, 100 per area code."""
    numbers = [f"{area}5550{line:03d}" for area in _AREA_CODES for line in range(100, 200)]
    if count > len(numbers):
        raise ValueError(f"the demo blocks hold {len(numbers)} numbers, {count} requested")
    return numbers[:count]


def format_number(digits: str, style: int) -> str:
    """Return a 10-digit US number written in one of the five demo formats."""
    template = _FORMATS[style % len(_FORMATS)]
    return template.format(area=digits[:3], line=digits[6:])


def _special_rows() -> dict[int, tuple[str, object]]:
    """Return the shared, invalid and empty rows keyed by position, as (kind, value)."""
    special: dict[int, tuple[str, object]] = {}
    for position, first_name, mobile in _SHARED_NUMBER_ROWS:
        special[position] = ("shared", (first_name, mobile))
    for position, mobile in _INVALID_ROWS:
        special[position] = ("invalid", mobile)
    for position, mobile in _EMPTY_ROWS:
        special[position] = ("empty", mobile)
    return special


def _digits_of(mobile: str) -> str:
    digits = "".join(ch for ch in mobile if ch.isdigit())
    return digits[-10:]


_SHARED_MOBILES = {_digits_of(mobile): mobile for _, _, mobile in _SHARED_NUMBER_ROWS}


def _owner_mobile(digits: str, position: int) -> str:
    """Format the number of a row by position, avoiding the format of its shared copy."""
    mobile = format_number(digits, position)
    if mobile == _SHARED_MOBILES.get(digits):
        mobile = format_number(digits, position + 1)
    return mobile


def _generated_name(position: int) -> tuple[str, str]:
    first = _FIRST_NAMES[position % len(_FIRST_NAMES)]
    last = _LAST_NAMES[(position // len(_FIRST_NAMES)) % len(_LAST_NAMES)]
    return first, last


def _member(position: int, first: str, last: str, mobile: str | None) -> dict:
    return {
        "ID": str(_FIRST_ID + position),
        "FirstName": first,
        "LastName": last,
        "Mobile": mobile,
    }



def build_demo_members() -> list[dict]:
    """Return the rows of the demo query, in query order (a new list on every call)."""
    special = _special_rows()
    numbers = iter(_valid_numbers(_TOTAL_ROWS - len(special)))
    members: list[dict] = []
    owners: dict[str, dict] = {}

    for position in range(_TOTAL_ROWS):
        kind, value = special.get(position, ("unique", None))
        first, last = _generated_name(position)

        if kind == "unique":
            digits = next(numbers)
            first, last = _NAMED_NUMBERS.get(digits, (first, last))
            member = _member(position, first, last, _owner_mobile(digits, position))
            owners[digits] = member
        elif kind == "shared":
            shared_first, mobile = value
            owner = owners[_digits_of(mobile)]
            first = owner["FirstName"] if shared_first is None else shared_first
            member = _member(position, first, owner["LastName"], mobile)
        else:
            member = _member(position, first, last, value)
        members.append(member)

    return members


def _e164(digits: str) -> str:
    return f"+1{digits}"


DEMO_MEMBER_COUNT = len(build_demo_members())
DEMO_DUPLICATE_COUNT = len(_SHARED_NUMBER_ROWS)
DEMO_INVALID_COUNT = len(_INVALID_ROWS)
DEMO_EMPTY_COUNT = len(_EMPTY_ROWS)
# Rows without a usable number: skipped with a reason when a campaign expands.
DEMO_SKIPPED_COUNT = DEMO_INVALID_COUNT + DEMO_EMPTY_COUNT
# Distinct valid numbers: the recipients of a campaign to the demo query.
DEMO_RECIPIENT_COUNT = DEMO_MEMBER_COUNT - DEMO_SKIPPED_COUNT - DEMO_DUPLICATE_COUNT

# Demo members who replied STOP earlier, so Twilio rejects texts to them with 21610.
DEMO_TWILIO_OPTED_OUT = (
    _e164("2025550142"),
    _e164("2025550163"),
    _e164("3125550117"),
    _e164("4155550109"),
)

# Demo members whose texts Twilio accepts and later reports undelivered, with the code.
# Each code ends the text at once (filtered as spam, unknown handset, landline), so a
# demo campaign finishes in minutes. Codes that earn new attempts would keep it open
# for the length of their back-off.
DEMO_UNDELIVERED = {
    _e164("3125550150"): 30007,
    _e164("2025550121"): 30005,
    _e164("4155550130"): 30006,
}


def seed_imis(sim: ImisSimulator) -> None:
    """Add the demo users and the demo query to an iMIS simulator."""
    sim.add_user(*DEMO_STAFF_USER)
    sim.add_user(*DEMO_NON_ADMIN_USER)
    sim.add_user(*DEMO_SERVICE_USER)
    sim.add_query(DEMO_QUERY_PATH, MEMBER_COLUMNS, build_demo_members())


# Benchmark query: one row in 20 has an invalid number (5%), and rows 10, 43 and 76 of
# every hundred repeat the previous row's number in another format (3%).
BENCH_AREA_CODES = (
    "202", "312", "415", "617", "212", "305", "404", "503", "602", "702",
    "713", "718", "206", "303", "512", "615", "612", "801", "919", "971",
)
BENCH_INVALID_EVERY = 20
BENCH_DUPLICATE_POSITIONS = (10, 43, 76)
_BENCH_LINES_PER_AREA = 10_000
BENCH_DISTINCT_CAPACITY = _BENCH_LINES_PER_AREA * len(BENCH_AREA_CODES)
_BENCH_INVALID_VALUES = ("555-{line}", "not a number", "{area}-555-{short}")


def _bench_digits(index: int) -> str:
    area = BENCH_AREA_CODES[(index // _BENCH_LINES_PER_AREA) % len(BENCH_AREA_CODES)]
    return f"{area}555{index % _BENCH_LINES_PER_AREA:04d}"


def _is_bench_invalid(index: int) -> bool:
    return index % BENCH_INVALID_EVERY == BENCH_INVALID_EVERY - 1


def _is_bench_duplicate(index: int) -> bool:
    return index % 100 in BENCH_DUPLICATE_POSITIONS


def _bench_mobile(index: int) -> str:
    if _is_bench_invalid(index):
        digits = _bench_digits(index)
        template = _BENCH_INVALID_VALUES[(index // BENCH_INVALID_EVERY) % len(_BENCH_INVALID_VALUES)]
        return template.format(area=digits[:3], line=digits[6:], short=digits[6:9])
    if _is_bench_duplicate(index):
        return format_number(_bench_digits(index - 1), index)
    return format_number(_bench_digits(index), index)


def build_bench_member(index: int) -> dict:
    """Return row `index` (0-based) of the benchmark query; the same index gives the same row.

    Numbers stay distinct for the first BENCH_DISTINCT_CAPACITY rows and repeat after.
    """
    first, last = _generated_name(index)
    return {
        "ID": str(100_000 + index),
        "FirstName": first,
        "LastName": last,
        "Mobile": _bench_mobile(index),
    }


def seed_bench(sim: ImisSimulator, rows: int) -> None:
    """Add the benchmark query of `rows` lazily generated rows to an iMIS simulator."""
    sim.add_query(BENCH_QUERY_PATH, MEMBER_COLUMNS, row_factory=build_bench_member, total=rows)
