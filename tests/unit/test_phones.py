"""Unit tests for phone number normalisation and SMS eligibility."""

import json

import pytest

from libs.common import phones
from libs.common.phones import (
    PhoneCheck, check_number, country_choices, is_e164, is_sender_short_code, is_valid_country, mask_number,
    mask_number_in, sender_number_problem,
)
from tests.conftest import CASES_DIR

PHONE_CASES = json.loads((CASES_DIR / "phones.json").read_text(encoding="utf-8"))["cases"]


def phone_case_id(case):
    return f"{case['raw']!r}-{case['default_country']}"


@pytest.mark.parametrize("case", PHONE_CASES, ids=phone_case_id)
def test_check_shared_case(case):
    result = check_number(case["raw"], case["default_country"])

    assert result.raw == case["raw"]
    assert result.e164 == case["e164"]
    assert result.sendable is case["sendable"]
    assert result.reason == case.get("reason")


@pytest.mark.parametrize(
    ("raw", "country", "e164", "reason"),
    [
        ("+44 20 7946 0018", "US", "+442079460018", "not a mobile number (fixed line)"),
        ("020 7946 0018", "GB", "+442079460018", "not a mobile number (fixed line)"),
        ("0909 879 0000", "GB", "+449098790000", "not a mobile number (premium rate)"),
        ("+1 900 234 5678", "US", "+19002345678", "not a mobile number (premium rate)"),
        ("+33 884 01 23 45", "US", "+33884012345", "not a mobile number (shared cost)"),
        ("+44 76 4012 3456", "US", "+447640123456", "not a mobile number (pager)"),
        (
            "+44 55 1234 5678", "US", "+445512345678",
            "not a mobile number (universal access number)",
        ),
        ("+49 177 99 1234567", "US", "+49177991234567", "not a mobile number (voicemail)"),
        ("+44 70 1234 5678", "US", "+447012345678", "not a mobile number (personal number)"),
    ],
    ids=["gb-landline", "gb-landline-national", "gb-premium", "us-premium", "fr-shared-cost",
         "gb-pager", "gb-uan", "de-voicemail", "gb-personal"],
)
def test_check_not_mobile(raw, country, e164, reason):
    result = check_number(raw, country)

    assert result.e164 == e164
    assert result.sendable is False
    assert result.reason == reason


@pytest.mark.parametrize(
    ("raw", "country", "e164"),
    [
        ("+44 7911 123456", "US", "+447911123456"),
        ("+44 56 1234 5678", "US", "+445612345678"),
        ("(202) 555-0143", "CA", "+12025550143"),
    ],
    ids=["gb-mobile", "gb-voip", "fixed-line-or-mobile"],
)
def test_check_sendable_types(raw, country, e164):
    result = check_number(raw, country)

    assert result.e164 == e164
    assert result.sendable is True
    assert result.reason is None


@pytest.mark.parametrize(
    "raw",
    ["(202) 555-0143 x123", "202-555-0143 ext. 12", "202 555 0143 extension 5", "202-555-0143 #7"],
)
def test_check_strips_extension(raw):
    result = check_number(raw, "US")

    assert result.e164 == "+12025550143"
    assert result.sendable is True


@pytest.mark.parametrize(
    ("raw", "country"),
    [
        ("00 31 6 12345678", "US"),
        ("0031612345678", "US"),
        ("0031 6 12345678", "NL"),
        ("011 31 6 12345678", "US"),
        ("  +31 6 12345678  ", "GB"),
    ],
    ids=["00-from-us", "00-no-spaces", "00-from-nl", "011-from-us", "plus-with-spaces"],
)
def test_check_international_prefix(raw, country):
    result = check_number(raw, country)

    assert result.e164 == "+31612345678"
    assert result.sendable is True


def test_check_int_raw():
    result = check_number(2025550143, "US")

    assert result == PhoneCheck("2025550143", "+12025550143", True, None)


def test_check_integral_float_raw():
    result = check_number(2025550143.0, "US")

    assert result.raw == "2025550143"
    assert result.e164 == "+12025550143"


@pytest.mark.parametrize("raw", [None, "", "   "], ids=["none", "empty", "blank"])
def test_check_no_number(raw):
    result = check_number(raw, "US")

    assert result.e164 is None
    assert result.sendable is False
    assert result.reason == "no number"


@pytest.mark.parametrize("raw", ["n/a", "call me", "00", "+", "12"])
def test_check_invalid_text(raw):
    result = check_number(raw, "US")

    assert result.e164 is None
    assert result.sendable is False
    assert result.reason == "invalid number"


@pytest.mark.parametrize("country", ["us", "USA", "", None, "ZZ", "001", 1])
def test_check_invalid_default_country(country):
    expected = "default country must be an ISO 3166 alpha-2 code such as US"
    with pytest.raises(ValueError, match=expected):
        check_number("(202) 555-0143", country)


@pytest.mark.parametrize(
    ("code", "valid"),
    [("US", True), ("NL", True), ("us", False), ("ZZ", False), (None, False)],
)
def test_is_valid_country(code, valid):
    assert is_valid_country(code) is valid


def test_country_choices_entries():
    choices = {code: (name, calling_code) for code, name, calling_code in country_choices()}

    assert choices["US"] == ("United States", 1)
    assert choices["GB"] == ("United Kingdom", 44)
    assert choices["NL"] == ("Netherlands", 31)
    assert choices["XK"] == ("Kosovo", 383)


def test_country_choices_complete():
    codes = [code for code, _, _ in country_choices()]

    assert len(codes) == len(set(codes))
    assert all(is_valid_country(code) for code in codes)
    assert len(codes) > 200


def test_country_choices_sorted_by_name():
    names = [name for _, name, _ in country_choices()]

    assert names == sorted(names)


def test_country_choices_constant():
    assert phones.COUNTRY_CHOICES == country_choices()


@pytest.mark.parametrize("case", [case for case in PHONE_CASES if case.get("e164")], ids=phone_case_id)
def test_checked_number_is_e164(case):
    assert is_e164(check_number(case["raw"], case["default_country"]).e164)


@pytest.mark.parametrize("value", ["2025550143", "+1 202 555 0143", "+0123456789", "+1202555014312345", "+", "",
                                   None, 12025550143])
def test_not_e164(value):
    assert not is_e164(value)


def test_mask_number_keeps_last_four():
    assert mask_number("+12025550143") == "********0143"


def test_mask_short_number():
    assert mask_number("143") == "143"


@pytest.mark.parametrize(("text", "masked"), [
    ("The 'To' number +12025550143 is not a valid phone number.",
     "The 'To' number +*******0143 is not a valid phone number."),
    ("url: /Messages.json?To=%2B12025550143&PageSize=50", "url: /Messages.json?To=%2B*******0143&PageSize=50"),
    ("to 12025550143 and again +12025550143", "to *******0143 and again +*******0143"),
    ("another number +12025550199", "another number +12025550199"),
])
def test_mask_number_in_text(text, masked):
    assert mask_number_in(text, "+12025550143") == masked


# ------------------------------------------------------------------ sender numbers


@pytest.mark.parametrize("number", [
    "+18885550100", "+18005550100", "+12025550143", "+14165550123", "+447911123456", "+61412345678", "12345",
    "123456",
])
def test_sender_number_accepted(number):
    assert sender_number_problem(number) is None


@pytest.mark.parametrize("number, expected", [
    ("+1888555010", "+1888555010 is not a valid phone number"),
    ("+99912345678", "+99912345678 is not a valid phone number"),
    ("+442079460000", "cannot send texts (fixed line)"),
    ("+19005550100", "cannot send texts (premium rate)"),
    ("+15005550006", "cannot send texts (personal number)"),
    ("1234", "must be an E.164 number such as +18885550100, or a short code of 5 or 6 digits"),
    ("1234567", "or a short code of 5 or 6 digits"),
    ("+1 888 555 0100", "must be an E.164 number"),
    ("", "must be an E.164 number"),
])
def test_sender_number_rejected(number, expected):
    assert expected in sender_number_problem(number)


@pytest.mark.parametrize("number, short_code", [("12345", True), ("123456", True), ("+18885550100", False)])
def test_sender_short_code(number, short_code):
    assert is_sender_short_code(number) is short_code
