"""MessageIds: deterministic per run and number, keyed, and without the number's digits."""

import base64
import json
import re

import pytest
from cryptography.fernet import Fernet

from libs.common.crypto import SecretBox
from libs.common.message_ids import KEY_LABEL, TOKEN_HEX_DIGITS, MessageIds
from tests.conftest import CASES_DIR

SECRET_KEY = Fernet.generate_key().decode()
RUN_ID = "spring-run"
OTHER_RUN_ID = "autumn-run"
# A digit run this long or longer, found in an id, would give away part of the number.
LEAKED_DIGITS = 5

SHARED_NUMBERS = sorted({case["e164"] for case in json.loads((CASES_DIR / "phones.json").read_text(encoding="utf-8"))
                         ["cases"] if case.get("e164")})
NUMBERS = SHARED_NUMBERS + ["+12025550101", "+447700900123", "+61412345678", "+8613800138000", "+4915112345678"]


@pytest.fixture
def message_ids() -> MessageIds:
    return MessageIds.from_secrets(SecretBox(SECRET_KEY))


def digit_runs(number: str, length: int) -> set[str]:
    digits = number.lstrip("+")
    return {digits[start:start + length] for start in range(len(digits) - length + 1)}


@pytest.mark.parametrize("number", NUMBERS)
def test_id_hides_number_digits(message_ids, number):
    message_id = message_ids.build(RUN_ID, number)

    leaked = [run for run in digit_runs(number, LEAKED_DIGITS) if run in message_id]
    assert leaked == []


def test_id_is_run_and_hex_token(message_ids):
    message_id = message_ids.build(RUN_ID, "+12025550143")

    run_id, separator, token = message_id.rpartition(":")
    assert run_id == RUN_ID
    assert separator == ":"
    assert re.fullmatch(f"[0-9a-f]{{{TOKEN_HEX_DIGITS}}}", token)


def test_same_run_and_number_same_id(message_ids):
    other_process = MessageIds.from_secrets(SecretBox(SECRET_KEY))

    assert message_ids.build(RUN_ID, "+12025550143") == message_ids.build(RUN_ID, "+12025550143")
    assert other_process.build(RUN_ID, "+12025550143") == message_ids.build(RUN_ID, "+12025550143")


def test_other_run_other_id(message_ids):
    first = message_ids.build(RUN_ID, "+12025550143")
    second = message_ids.build(OTHER_RUN_ID, "+12025550143")

    assert first != second
    assert first.rpartition(":")[2] != second.rpartition(":")[2]


def test_other_numbers_other_ids(message_ids):
    numbers = [f"+1202555{index:04d}" for index in range(10_000)]

    ids = {message_ids.build(RUN_ID, number) for number in numbers}

    assert len(ids) == len(numbers)


def test_other_key_other_id(message_ids):
    other_key = MessageIds.from_secrets(SecretBox(Fernet.generate_key().decode()))

    assert other_key.build(RUN_ID, "+12025550143") != message_ids.build(RUN_ID, "+12025550143")


NOT_E164 = ["2025550143", "+1 202 555 0143", "(202) 555-0143", "+0123456789", "+1202555014312345", 12025550143]


@pytest.mark.parametrize("number", NOT_E164 + ["", None])
def test_number_not_e164_rejected(message_ids, number):
    with pytest.raises(ValueError, match="E.164"):
        message_ids.build(RUN_ID, number)


@pytest.mark.parametrize("number", NOT_E164)
def test_rejection_hides_number(message_ids, number):
    with pytest.raises(ValueError) as raised:
        message_ids.build(RUN_ID, number)

    assert str(number) not in str(raised.value)


@pytest.mark.parametrize("run_id", ["", None])
def test_missing_run_id_rejected(message_ids, run_id):
    with pytest.raises(ValueError, match="run id"):
        message_ids.build(run_id, "+12025550143")


@pytest.mark.parametrize("key", [b"", b"k" * 31, "k" * 32])
def test_short_or_text_key_rejected(key):
    with pytest.raises(ValueError, match="at least 32 bytes"):
        MessageIds(key)


def test_repr_hides_key():
    key = b"0123456789abcdef" * 2

    assert key.decode() not in repr(MessageIds(key))


def test_derived_key_differs_per_label():
    secrets = SecretBox(SECRET_KEY)

    derived = secrets.derive_key(KEY_LABEL)

    assert len(derived) == 32
    assert derived == SecretBox(SECRET_KEY).derive_key(KEY_LABEL)
    assert derived != secrets.derive_key(b"another purpose")
    assert derived != base64.urlsafe_b64decode(SECRET_KEY)
