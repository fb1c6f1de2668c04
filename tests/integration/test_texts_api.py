"""POST /api/texts/measure and POST /api/phone-numbers/check over HTTP, for the campaign editor."""

from __future__ import annotations

import json

import pytest
import requests

from local.stack import DEMO_CLOUD_ID
from tests.conftest import CASES_DIR

SEGMENT_CASES = json.loads((CASES_DIR / "segments.json").read_text(encoding="utf-8"))["cases"]
PHONE_CASES = json.loads((CASES_DIR / "phones.json").read_text(encoding="utf-8"))["cases"]
GSM_EXTENSION = "\f^{}\\[~]|€"


def build_text(spec) -> str:
    """Return the text a segments.json case describes: a string, {repeat, times} or {concat}."""
    if isinstance(spec, str):
        return spec
    if "repeat" in spec:
        return spec["repeat"] * spec["times"]
    return "".join(build_text(part) for part in spec["concat"])


def expected_units(text: str, encoding: str) -> int:
    """Septets for GSM-7, where an extension character costs 2; UTF-16 code units for UCS-2."""
    if encoding == "GSM-7":
        return len(text) + sum(text.count(char) for char in GSM_EXTENSION)
    return len(text.encode("utf-16-le")) // 2


@pytest.fixture(scope="module")
def stack(module_stack_factory):
    return module_stack_factory()


@pytest.fixture
def staff(stack, staff_api):
    return staff_api(stack)


def measure(staff, body) -> requests.Response:
    return staff.post("/api/texts/measure", json={"body": body})


def check(staff, **fields) -> requests.Response:
    return staff.post("/api/phone-numbers/check", json=fields)


# ------------------------------------------------------------------ measure


@pytest.mark.parametrize("case", SEGMENT_CASES, ids=lambda case: f"{case['encoding']}-{case['segments']}")
def test_measure_shared_case(staff, case):
    text = build_text(case["text"])
    response = measure(staff, text)
    assert response.status_code == 200
    assert response.json() == {"encoding": case["encoding"], "segments": case["segments"],
                               "units": expected_units(text, case["encoding"]), "too_long": False}


def test_measure_empty_body(staff):
    assert measure(staff, "").json() == {"encoding": "GSM-7", "segments": 0, "units": 0, "too_long": False}


@pytest.mark.parametrize(("text", "too_long"), [
    ("a" * 1600, False),
    ("a" * 1601, True),
    ("€" * 1600, False),
    ("Á" * 1601, True),
    ("😜" * 800, False),
    ("😜" * 801, True),
])
def test_measure_too_long(staff, text, too_long):
    assert measure(staff, text).json()["too_long"] is too_long


def test_measure_extension_counts_two(staff):
    assert measure(staff, "[1]").json()["units"] == 5


@pytest.mark.parametrize("payload", [{}, {"body": 5}, {"body": None}, {"body": "hi", "extra": 1}])
def test_measure_invalid_input(staff, payload):
    response = staff.post("/api/texts/measure", json=payload)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_input"


def test_measure_needs_session(stack):
    response = requests.post(f"{stack.gateway_url}/api/texts/measure", json={"body": "hi"})
    assert response.status_code == 401


def test_measure_needs_csrf(staff):
    response = staff.http.post(f"{staff.url}/api/texts/measure", json={"body": "hi"})
    assert response.status_code == 403
    assert response.json()["error"] == "csrf_failed"


# ------------------------------------------------------------------ phone check


@pytest.mark.parametrize("case", PHONE_CASES, ids=lambda case: f"{case['raw']!r}-{case['default_country']}")
def test_check_shared_case(staff, case):
    response = check(staff, number=case["raw"], country=case["default_country"])
    assert response.status_code == 200
    assert response.json() == {"e164": case["e164"], "sendable": case["sendable"], "reason": case.get("reason")}


def test_check_default_country_of_tenant(stack, staff):
    assert check(staff, number="(202) 555-0143").json()["e164"] == "+12025550143"
    stack.runtime.tenants.update(DEMO_CLOUD_ID, {"default_country": "NL"})
    try:
        assert check(staff, number="06 12345678").json()["e164"] == "+31612345678"
    finally:
        stack.runtime.tenants.update(DEMO_CLOUD_ID, {"default_country": "US"})


def test_check_null_country_uses_default(staff):
    assert check(staff, number="202.555.0143", country=None).json()["e164"] == "+12025550143"


def test_check_ignores_opt_out_list(stack, staff):
    stack.runtime.db.optouts.insert_one({"_id": f"{DEMO_CLOUD_ID}:+12025550177", "tenant_id": DEMO_CLOUD_ID,
                                         "number": "+12025550177"})
    try:
        body = check(staff, number="(202) 555-0177").json()
    finally:
        stack.runtime.db.optouts.delete_one({"_id": f"{DEMO_CLOUD_ID}:+12025550177"})
    assert body == {"e164": "+12025550177", "sendable": True, "reason": None}


def test_check_empty_number(staff):
    assert check(staff, number="").json() == {"e164": None, "sendable": False, "reason": "no number"}


def test_check_integer_number(staff):
    assert check(staff, number=2025550143).json()["e164"] == "+12025550143"


@pytest.mark.parametrize("payload", [{}, {"number": None}, {"number": "1", "country": "USA"},
                                     {"number": "1", "country": "us"}, {"number": ["1"]}])
def test_check_invalid_input(staff, payload):
    response = staff.post("/api/phone-numbers/check", json=payload)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_input"


def test_check_needs_session(stack):
    response = requests.post(f"{stack.gateway_url}/api/phone-numbers/check", json={"number": "1"})
    assert response.status_code == 401


def test_check_needs_csrf(staff):
    response = staff.http.post(f"{staff.url}/api/phone-numbers/check", json={"number": "1"})
    assert response.status_code == 403
