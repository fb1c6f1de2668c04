"""Phone number normalisation to E.164 and SMS eligibility, built on phonenumbers."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType

REASON_NO_NUMBER = "no number"
REASON_INVALID = "invalid number"

# Types that can take a text. FIXED_LINE_OR_MOBILE is what US and Canadian numbers
# parse as, because their numbering plan does not tell the two apart. VOIP stays
# sendable because many VoIP carriers accept SMS. When one does not, Twilio reports
# it per message (21612, or 30006 in the status callback) and the sender skips it.
_SENDABLE_TYPES = frozenset(
    {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE, PhoneNumberType.VOIP}
)

_NOT_MOBILE_REASONS = {
    PhoneNumberType.FIXED_LINE: "not a mobile number (fixed line)",
    PhoneNumberType.TOLL_FREE: "not a mobile number (toll-free)",
    PhoneNumberType.PREMIUM_RATE: "not a mobile number (premium rate)",
    PhoneNumberType.SHARED_COST: "not a mobile number (shared cost)",
    PhoneNumberType.PERSONAL_NUMBER: "not a mobile number (personal number)",
    PhoneNumberType.PAGER: "not a mobile number (pager)",
    PhoneNumberType.UAN: "not a mobile number (universal access number)",
    PhoneNumberType.VOICEMAIL: "not a mobile number (voicemail)",
}

# Types of number that Twilio can send texts from. US and Canadian long codes parse as
# FIXED_LINE_OR_MOBILE, because their numbering plan does not tell the two apart.
_SENDER_TYPES = frozenset(
    {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE, PhoneNumberType.TOLL_FREE}
)
# A short code is sent as its digits alone, without a country code.
SHORT_CODE_PATTERN = re.compile(r"[0-9]{5,6}")

# The form check_number returns: a plus sign, a country code that does not start with 0,
# and at most 15 digits in all (ITU-T E.164).
E164_PATTERN = re.compile(r"\+[1-9][0-9]{1,14}")
# Digits of a number that logs keep, enough to tell numbers apart when reading them.
SHOWN_DIGITS = 4

# Regions that phonenumbers' locale data has no English name for (phonenumbers 9.0).
_EXTRA_COUNTRY_NAMES = {"AC": "Ascension Island", "TA": "Tristan da Cunha", "XK": "Kosovo"}


@dataclass(frozen=True)
class PhoneCheck:
    """The result of checking one phone value from an IQA row.

    `e164` is set whenever the number is valid, even when it cannot take a text.
    `reason` is None when the number is sendable, otherwise a short text for staff.
    """

    raw: str
    e164: str | None
    sendable: bool
    reason: str | None


def is_valid_country(code: object) -> bool:
    """Return whether `code` is an upper-case ISO 3166 alpha-2 code that phonenumbers supports."""
    return isinstance(code, str) and code in phonenumbers.SUPPORTED_REGIONS


def check_number(raw: object, default_country: str) -> PhoneCheck:
    """Normalise a phone value to E.164 and decide whether it can take a text.

    A number that starts with + or 00 keeps its own country, and any other number is
    read as a national number of `default_country`. Extensions ("x123", "ext. 12") are
    dropped. Integers and other non-string values are converted with str().
    Raises ValueError when `default_country` is not a supported ISO 3166 alpha-2 code.
    """
    if not is_valid_country(default_country):
        raise ValueError(
            "default country must be an ISO 3166 alpha-2 code such as US, "
            f"got {default_country!r}"
        )
    return _check_text(_as_text(raw), default_country)


def _as_text(raw: object) -> str:
    if raw is None:
        return ""
    if isinstance(raw, float) and raw.is_integer():
        # A spreadsheet-typed column may hold 2025550143.0.
        return str(int(raw))
    return str(raw)


@functools.lru_cache(maxsize=4096)
def _check_text(raw: str, default_country: str) -> PhoneCheck:
    text = raw.strip()
    if not text:
        return PhoneCheck(raw, None, False, REASON_NO_NUMBER)
    if text.startswith("00"):
        # 00 is the international prefix in most of the world, but phonenumbers treats
        # it as one only when the default country dials it (the US dials 011).
        text = "+" + text[2:]

    try:
        number = phonenumbers.parse(text, default_country)
    except NumberParseException:
        return PhoneCheck(raw, None, False, REASON_INVALID)

    # number_type() returns UNKNOWN exactly when is_valid_number() is false, so one
    # call does both and keeps parsing fast.
    number_type = phonenumbers.number_type(number)
    if number_type == PhoneNumberType.UNKNOWN:
        return PhoneCheck(raw, None, False, REASON_INVALID)

    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    if number_type in _SENDABLE_TYPES:
        return PhoneCheck(raw, e164, True, None)
    reason = _NOT_MOBILE_REASONS.get(number_type, "not a mobile number")
    return PhoneCheck(raw, e164, False, reason)


def sender_number_problem(value: str) -> str | None:
    """Return why `value` cannot be the number texts are sent from, or None when it can.

    A sender is a short code of 5 or 6 digits, or a valid E.164 number of a type that
    Twilio sends texts from. Those types are mobile, toll-free, and fixed line or
    mobile, which is how US and Canadian long codes parse. The message names what to
    enter instead.
    """
    if SHORT_CODE_PATTERN.fullmatch(value):
        return None
    if not is_e164(value):
        return "must be an E.164 number such as +18885550100, or a short code of 5 or 6 digits"
    try:
        number_type = phonenumbers.number_type(phonenumbers.parse(value))
    except NumberParseException:
        number_type = PhoneNumberType.UNKNOWN
    if number_type == PhoneNumberType.UNKNOWN:
        return f"{value} is not a valid phone number: check the digits of the number Twilio gave you"
    if number_type not in _SENDER_TYPES:
        kind = _NOT_MOBILE_REASONS.get(number_type, "not a mobile number").removeprefix("not a mobile number ")
        return f"{value} cannot send texts {kind}: enter a mobile, toll-free or long-code number, or a short code"
    return None


def is_sender_short_code(value: str) -> bool:
    """Return whether the sender number is a short code rather than an E.164 number."""
    return SHORT_CODE_PATTERN.fullmatch(value) is not None


def is_e164(value: object) -> bool:
    """Return whether `value` is a string in the E.164 form that check_number returns."""
    return isinstance(value, str) and E164_PATTERN.fullmatch(value) is not None


def mask_number(number: str) -> str:
    """Return the number with all but its last four characters replaced by *, for logs."""
    return "*" * max(len(number) - SHOWN_DIGITS, 0) + number[-SHOWN_DIGITS:]


def mask_number_in(text: str, number: str) -> str:
    """Return `text` with every occurrence of the number's digits masked, for logs.

    The digits are matched without the plus sign, so the number is also masked where a
    message shows it without the sign or URL-encoded ("%2B12025550143").
    """
    digits = number.lstrip("+")
    if len(digits) <= SHOWN_DIGITS:
        return text
    return text.replace(digits, mask_number(digits))


@functools.cache
def country_choices() -> tuple[tuple[str, str, int], ...]:
    """Return (code, English name, calling code) for every supported region, by name.

    The names come from phonenumbers' locale data, loaded on the first call because
    importing it takes a noticeable fraction of a second.
    """
    from phonenumbers.geodata.locale import LOCALE_DATA

    choices = []
    for code in phonenumbers.SUPPORTED_REGIONS:
        name = _english_name(LOCALE_DATA.get(code, {})) or _EXTRA_COUNTRY_NAMES.get(code, code)
        choices.append((code, name, phonenumbers.country_code_for_region(code)))
    return tuple(sorted(choices, key=lambda choice: choice[1]))


def _english_name(names_by_language: dict[str, str]) -> str | None:
    """Return the English name, following the '*xx' references the locale data uses."""
    name = names_by_language.get("en")
    while name is not None and name.startswith("*"):
        name = names_by_language.get(name[1:])
    return name


def __getattr__(name: str) -> object:
    # COUNTRY_CHOICES is built on first access so importing this module stays cheap.
    if name == "COUNTRY_CHOICES":
        return country_choices()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
