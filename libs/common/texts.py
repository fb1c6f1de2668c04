"""SMS body measurement, Smart Encoding and merge-field templates (pure, no I/O)."""

from __future__ import annotations

import math
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import accumulate

GSM7 = "GSM-7"
UCS2 = "UCS-2"

# Twilio rejects a longer Body with error 21617. Its error page
# (https://www.twilio.com/docs/api/errors/21617) states that emoji and other non-GSM
# characters count as multiple characters, so the limit is checked in UTF-16 code
# units, where an emoji outside the BMP counts 2.
# NOTE: Twilio does not name the unit, so UTF-16 code units is an inference.
MAX_BODY_CHARS = 1600

SINGLE_GSM_SEPTETS = 160
CONCAT_GSM_SEPTETS = 153
SINGLE_UCS2_UNITS = 70
CONCAT_UCS2_UNITS = 67

# GSM 03.38 default alphabet, without the escape code 0x1B. Upper-case C-cedilla is in
# it, lower-case c-cedilla is not.
_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Extension table: each character is sent as ESC plus one septet, so it costs 2.
_GSM_EXTENSION = "\f^{}\\[~]|€"
_GSM_ALL = _GSM_BASIC | frozenset(_GSM_EXTENSION)

# Maps every GSM-7 character to its cost in septets, as a one-byte code.
_GSM_COST_TABLE = str.maketrans(
    {**{char: "\x01" for char in _GSM_BASIC}, **{char: "\x02" for char in _GSM_EXTENSION}}
)


@dataclass(frozen=True)
class Measurement:
    """Encoding and segment count of one SMS body, as Twilio bills it.

    `units` are septets for GSM-7 (an extension character counts 2) and UTF-16 code
    units for UCS-2. `too_long` is true when the body is over MAX_BODY_CHARS UTF-16
    code units, which Twilio rejects.
    """

    encoding: str
    segments: int
    units: int
    too_long: bool


def measure(text: str) -> Measurement:
    """Return the encoding, segment count and length of an SMS body.

    Concatenated segments never split a GSM escape pair or a UTF-16 surrogate pair,
    so a character that would straddle a boundary starts the next segment.
    An empty body measures 0 segments.
    """
    if not text:
        return Measurement(GSM7, 0, 0, False)
    if _GSM_ALL.issuperset(text):
        return _measure_gsm(text)
    return _measure_ucs2(text)


def _measure_gsm(text: str) -> Measurement:
    extension_count = sum(map(text.count, _GSM_EXTENSION))
    septets = len(text) + extension_count
    if septets <= SINGLE_GSM_SEPTETS:
        segments = 1
    elif extension_count == 0:
        segments = math.ceil(septets / CONCAT_GSM_SEPTETS)
    else:
        costs = text.translate(_GSM_COST_TABLE).encode("latin-1")
        segments = _pack_segments(costs, CONCAT_GSM_SEPTETS)
    return Measurement(GSM7, segments, septets, len(text) > MAX_BODY_CHARS)


def _measure_ucs2(text: str) -> Measurement:
    # Counted, not encoded: an unpaired surrogate from an IQA value is one code unit,
    # where encoding it would raise.
    units = len(text) + sum(char > "\uffff" for char in text)
    if units <= SINGLE_UCS2_UNITS:
        segments = 1
    elif units == len(text):
        segments = math.ceil(units / CONCAT_UCS2_UNITS)
    else:
        costs = bytes(2 if char > "\uffff" else 1 for char in text)
        segments = _pack_segments(costs, CONCAT_UCS2_UNITS)
    return Measurement(UCS2, segments, units, units > MAX_BODY_CHARS)


def _pack_segments(costs: bytes, capacity: int) -> int:
    """Count the segments when characters of the given costs fill them in order.

    A character never spans two segments: when it does not fit, the segment ends
    early and the character opens the next one.
    """
    cumulative = list(accumulate(costs))
    segments = 0
    index = 0
    filled = 0
    while index < len(cumulative):
        index = bisect_right(cumulative, filled + capacity, lo=index)
        filled = cumulative[index - 1]
        segments += 1
    return segments


# Look-alike characters and the GSM-7 text that replaces them. Letters with accents
# stay, because replacing them changes the spelling and not only the typography.
_SMART_REPLACEMENTS = {
    # Quotation marks and apostrophes.
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u02bc": "'", "\u2039": "<", "\u203a": ">",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
    "\u00ab": '"', "\u00bb": '"',
    # Hyphens, dashes and the minus sign.
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-",
    "\u2015": "-", "\u2212": "-", "\u2043": "-",
    # Bullets.
    "\u2022": "-", "\u2023": "-", "\u25e6": "-", "\u2219": "-",
    # Ellipsis, slashes and spacing modifier letters.
    "\u2026": "...", "\u2044": "/", "\u2215": "/", "\u02c6": "^", "\u02dc": "~",
    # Spaces, including tab, and line separators.
    "\t": " ", "\u00a0": " ", "\u2000": " ", "\u2001": " ", "\u2002": " ",
    "\u2003": " ", "\u2004": " ", "\u2005": " ", "\u2006": " ", "\u2007": " ",
    "\u2008": " ", "\u2009": " ", "\u200a": " ", "\u202f": " ", "\u205f": " ",
    "\u3000": " ", "\u2028": "\n", "\u2029": "\n",
    # Invisible characters. The zero-width joiner stays because emoji sequences use it.
    "\u200b": "", "\u2060": "", "\ufeff": "", "\u00ad": "",
}
_SMART_TABLE = str.maketrans(_SMART_REPLACEMENTS)


def smart_encode(text: str) -> str:
    """Return the text with look-alike punctuation and spaces replaced by GSM-7 ones.

    Like Twilio's Smart Encoding, this turns curly quotes, long dashes, the ellipsis,
    bullets and unusual spaces into GSM-7 characters. Emoji, accented letters and
    non-Latin scripts stay, so such a body remains UCS-2.
    """
    if _GSM_ALL.issuperset(text):
        return text
    return text.translate(_SMART_TABLE)


# Characters that show nothing besides whitespace: the Hangul fillers and the blank
# Braille pattern, which render as empty space, and the variation selectors, which
# only modify the character before them.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
# Marks that Unicode lists as default ignorable, shown as nothing: the combining grapheme
# joiner, two Khmer vowels and the Mongolian variation selectors.
_IGNORABLE_MARKS = frozenset("\u034f\u17b4\u17b5\u180b\u180c\u180d\u180f")
_VARIATION_SELECTORS = (("\ufe00", "\ufe0f"), ("\U000e0100", "\U000e01ef"))
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def is_blank(text: str) -> bool:
    """Return whether the text shows nothing when printed.

    Whitespace, control characters and format characters (category Cf: the zero-width
    space, joiners, the byte order mark, bidirectional marks, the soft hyphen) count
    as blank, as do the few letters that render as empty space.
    """
    return all(_is_invisible(char) for char in text)


def control_characters(text: str) -> list[str]:
    """Return the control characters of a text that phones cannot show, as U+XXXX, once each.

    Line breaks and tabs are allowed.
    """
    found = {char for char in text if unicodedata.category(char) == "Cc" and char not in "\n\r\t"}
    return [f"U+{ord(char):04X}" for char in sorted(found)]


def _is_invisible(char: str) -> bool:
    if char.isspace() or char in _BLANK_LETTERS or char in _IGNORABLE_MARKS:
        return True
    if any(first <= char <= last for first, last in _VARIATION_SELECTORS):
        return True
    return unicodedata.category(char) in _INVISIBLE_CATEGORIES


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def find_lone_surrogate(text: str) -> int | None:
    """Return the index of the first unpaired UTF-16 surrogate in the text, or None.

    JSON escapes such as "\\ud800" decode to such a character. UTF-8, BSON and Twilio
    cannot carry it, so it has to be rejected or replaced before the text is stored.
    """
    found = _LONE_SURROGATE.search(text)
    return None if found is None else found.start()


def replace_lone_surrogates(text: str) -> str:
    """Return the text with each unpaired UTF-16 surrogate replaced by U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", text)


class TemplateError(ValueError):
    """A message body whose merge fields cannot be parsed, with a message written for staff."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


@dataclass(frozen=True)
class _Field:
    name: str
    key: str
    fallback: str


class Template:
    """A message body with merge fields, parsed once and rendered per recipient.

    A merge field is `{ColumnName}` or `{ColumnName|fallback text}`, and `{{` and `}}`
    are literal braces. Column names compare case-insensitively, as iMIS aliases do.
    """

    __slots__ = ("body", "fields", "_parts", "_without_fallback")

    def __init__(self, body: str, parts: tuple[str | _Field, ...]) -> None:
        self.body = body
        self._parts = parts
        self.fields = _unique_field_names(parts)
        self._without_fallback = _unique_fields_without_fallback(parts)

    @classmethod
    def parse(cls, body: str) -> Template:
        """Parse a message body into a template.

        Raises TemplateError, naming the 1-based character position, on an unclosed
        or empty merge field, a brace inside a merge field, or a lone `}`.
        """
        return cls(body, tuple(_parse_parts(body)))

    def missing_fields(self, columns: Iterable[str]) -> list[str]:
        """Return the merge fields that no column matches, ignoring letter case."""
        known = {column.casefold() for column in columns}
        return [name for name in self.fields if name.casefold() not in known]

    def render(self, row: Mapping[str, object]) -> str:
        """Return the body with each merge field replaced by the row's value as text.

        A value is inserted with str() and surrounding whitespace removed. It is never
        interpreted, so braces or format codes in it stay literal. A missing column,
        None or a blank value gives the field's fallback, or nothing. An unpaired UTF-16
        surrogate in a value becomes U+FFFD.
        """
        folded_row = None
        pieces = []
        for part in self._parts:
            if isinstance(part, str):
                pieces.append(part)
                continue

            value = row.get(part.name, _ABSENT)
            if value is _ABSENT:
                if folded_row is None:
                    folded_row = {str(key).casefold(): item for key, item in row.items()}
                value = folded_row.get(part.key)
            pieces.append(_value_text(value) or part.fallback)
        return "".join(pieces)

    def blank_fields(self, row: Mapping[str, object]) -> list[str]:
        """Return the merge fields without a fallback that render as nothing for this row.

        Such a field's column is missing from the row, None or blank, so the text
        loses a word: "Hi {FirstName}!" becomes "Hi !".
        """
        blank = []
        for part in self._without_fallback:
            value = row.get(part.name, _ABSENT)
            if value is _ABSENT:
                value = next((item for key, item in row.items() if str(key).casefold() == part.key), None)
            if not _value_text(value):
                blank.append(part.name)
        return blank

    def __repr__(self) -> str:
        return f"Template({self.body!r})"


_ABSENT = object()


def _value_text(value: object) -> str:
    if value is None:
        return ""
    # An IQA value may carry an unpaired surrogate, which the store and Twilio reject.
    return replace_lone_surrogates(str(value).strip())


def _unique_field_names(parts: Iterable[str | _Field]) -> tuple[str, ...]:
    names: dict[str, str] = {}
    for part in parts:
        if isinstance(part, _Field):
            names.setdefault(part.key, part.name)
    return tuple(names.values())


def _unique_fields_without_fallback(parts: Iterable[str | _Field]) -> tuple[_Field, ...]:
    fields: dict[str, _Field] = {}
    for part in parts:
        if isinstance(part, _Field) and not part.fallback:
            fields.setdefault(part.key, part)
    return tuple(fields.values())


def _parse_parts(body: str) -> list[str | _Field]:
    """Split a body into literal text and merge fields, joining adjacent literals."""
    parts: list[str | _Field] = []
    literal: list[str] = []
    index = 0
    while index < len(body):
        char = body[index]
        if body.startswith("{{", index) or body.startswith("}}", index):
            literal.append(char)
            index += 2
        elif char == "{":
            field, index = _parse_field(body, index)
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(field)
        elif char == "}":
            raise TemplateError(
                f"Unmatched '}}' at character {index + 1}: write '}}}}' for a literal brace.",
                index + 1,
            )
        else:
            literal.append(char)
            index += 1
    if literal:
        parts.append("".join(literal))
    return parts


def _parse_field(body: str, start: int) -> tuple[_Field, int]:
    """Parse the merge field opening at `start` and return it with the index after it."""
    end = start + 1
    while end < len(body) and body[end] not in "{}\n":
        end += 1
    if end == len(body) or body[end] != "}":
        raise TemplateError(
            f"The merge field opened at character {start + 1} is not closed "
            f"{_describe_stop(body, end)}: add '}}' after the column name, "
            "or write '{{' for a literal brace.",
            start + 1,
        )

    name, _, fallback = body[start + 1:end].partition("|")
    name = name.strip()
    if not name:
        raise TemplateError(
            f"The merge field at character {start + 1} has no column name: "
            "write {ColumnName} or {ColumnName|fallback text}.",
            start + 1,
        )
    return _Field(name=name, key=name.casefold(), fallback=fallback.strip()), end + 1


def _describe_stop(body: str, end: int) -> str:
    if end == len(body):
        return "before the end of the message"
    if body[end] == "\n":
        return "on its line"
    return f"before the '{{' at character {end + 1}"


def render_and_measure(
    template: Template, row: Mapping[str, object], smart_encoding: bool = False
) -> tuple[str, Measurement]:
    """Render the template for one row, optionally apply Smart Encoding, and measure it."""
    text = template.render(row)
    if smart_encoding:
        text = smart_encode(text)
    return text, measure(text)
