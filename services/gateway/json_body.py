"""Decoding of JSON request bodies, with the checks that keep odd input from failing later."""

from __future__ import annotations

import json

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from libs.common.texts import find_lone_surrogate
from services.gateway.errors import InvalidInput

# API bodies nest at most 2 levels, a list or an object inside the body, so 20 leaves
# a wide margin.
MAX_DEPTH = 20
JSON_OBJECT_REQUIRED = "the request body must be a JSON object (Content-Type: application/json)"


def read_json_object() -> dict:
    """Decode the request body as a JSON object and return it; raise InvalidInput saying what is wrong.

    Besides malformed JSON, it rejects a body that is not UTF-8, the non-standard
    constants NaN and Infinity, and nesting deeper than MAX_DEPTH. It also rejects
    strings with an unpaired UTF-16 surrogate (a JSON escape such as "\\ud800"), which
    neither UTF-8 nor the store can hold, and object keys with a NUL character, which
    the store rejects. A body over the app's MAX_CONTENT_LENGTH raises
    RequestEntityTooLarge (413) first.
    """
    if not request.is_json:
        raise InvalidInput(JSON_OBJECT_REQUIRED)
    raw = request.get_data(cache=True)
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(raw) >= limit:
        # werkzeug cuts a chunked body without Content-Length at the limit and raises
        # nothing, so a body that reached it is taken as too large.
        raise RequestEntityTooLarge()
    body = _decode(raw)
    if not isinstance(body, dict):
        raise InvalidInput(JSON_OBJECT_REQUIRED)
    _check_strings(body)
    return body


def _decode(raw: bytes) -> object:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidInput(f"the request body is not valid UTF-8 (byte {error.start + 1}): send JSON encoded as "
                           "UTF-8") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidInput(_too_deep_message()) from None
    except ValueError as error:
        raise InvalidInput(f"the request body is not valid JSON: {error}") from None


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON value")


def _too_deep_message() -> str:
    return f"the request body nests lists and objects more than {MAX_DEPTH} levels deep: send the fields flat"


def _check_strings(body: dict) -> None:
    """Raise InvalidInput, naming the top-level field, for a value nested too deeply or a string that cannot be stored.

    The walk uses a stack of its own, so a deeply nested body cannot exhaust Python's recursion limit.
    """
    pending = [(value, _printable(key), 2) for key, value in body.items()]
    for key in body:
        _check_key(key, _printable(key))
    while pending:
        value, field, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise InvalidInput(_too_deep_message(), {"fields": {field: [_too_deep_message()]}})
        if isinstance(value, str):
            _check_text(value, field)
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_key(key, field)
                pending.append((item, field, depth + 1))
        elif isinstance(value, list):
            pending.extend((item, field, depth + 1) for item in value)


def _check_key(key: str, field: str) -> None:
    _check_text(key, field)
    if "\0" in key:
        _reject(field, "contains a name with a NUL character (\\u0000): remove it")


def _check_text(text: str, field: str) -> None:
    position = find_lone_surrogate(text)
    if position is not None:
        _reject(field, f"contains an unpaired UTF-16 surrogate ({ascii(text[position])[1:-1]}) at character "
                       f"{position + 1}: send the text as valid Unicode")


def _reject(field: str, message: str) -> None:
    raise InvalidInput("some fields are invalid: correct them and send again", {"fields": {field: [message]}})


def _printable(key: str) -> str:
    """Return a field name that the error response can carry, with surrogates escaped."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8")
