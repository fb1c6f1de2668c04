"""Unit tests for SMS measurement, Smart Encoding and merge-field templates."""

import json

import pytest

from libs.common.texts import (
    MAX_BODY_CHARS,
    Measurement,
    Template,
    TemplateError,
    control_characters,
    find_lone_surrogate,
    is_blank,
    measure,
    render_and_measure,
    replace_lone_surrogates,
    smart_encode,
)
from tests.conftest import CASES_DIR

SEGMENT_CASES = json.loads((CASES_DIR / "segments.json").read_text(encoding="utf-8"))["cases"]

EXTENSION_CHARS = "\f^{}\\[~]|€"
GSM_BASIC_SAMPLE = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCXYZÄÖÑÜ§¿abcxyzäöñüà"
)


def build_text(spec):
    if isinstance(spec, str):
        return spec
    if "repeat" in spec:
        return spec["repeat"] * spec["times"]
    return "".join(build_text(part) for part in spec["concat"])


def expected_units(text, encoding):
    if encoding == "GSM-7":
        return len(text) + sum(text.count(char) for char in EXTENSION_CHARS)
    return len(text.encode("utf-16-le")) // 2


def segment_case_id(case):
    return case.get("note", str(case["text"]))[:40]


@pytest.mark.parametrize("case", SEGMENT_CASES, ids=segment_case_id)
def test_measure_shared_case(case):
    text = build_text(case["text"])

    result = measure(text)

    assert result.encoding == case["encoding"]
    assert result.segments == case["segments"]
    assert result.units == expected_units(text, case["encoding"])
    assert result.too_long is False


def test_measure_empty_body():
    assert measure("") == Measurement("GSM-7", 0, 0, False)


def test_measure_gsm_basic_set():
    result = measure(GSM_BASIC_SAMPLE)

    assert result.encoding == "GSM-7"
    assert result.units == len(GSM_BASIC_SAMPLE)


@pytest.mark.parametrize("char", list(EXTENSION_CHARS))
def test_measure_extension_costs_two(char):
    result = measure("a" + char)

    assert result.encoding == "GSM-7"
    assert result.units == 3


@pytest.mark.parametrize("char", ["ç", "á", "\t", "Ä\u0308", "ł", "😜", "Ж"])
def test_measure_non_gsm_is_ucs2(char):
    assert measure("Hello " + char).encoding == "UCS-2"


def test_measure_upper_cedilla_is_gsm():
    assert measure("Ça va").encoding == "GSM-7"


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        # 152 + 2 would be 154 septets: the escape pair moves to segment 2, leaving 1 over.
        ("a" * 152 + "€" + "a" * 152, 3),
        ("a" * 151 + "€" + "a" * 152, 2),
        ("€" * 80, 1),
        ("€" * 81, 2),
        # Only 76 escape pairs (152 septets) fit in a concatenated segment.
        ("€" * 153, 3),
        ("€" * 152, 2),
    ],
    ids=[
        "pair-at-153-moves", "pair-ends-at-153", "80-euros", "81-euros", "153-euros", "152-euros",
    ],
)
def test_measure_gsm_escape_pair_boundary(text, segments):
    result = measure(text)

    assert result.encoding == "GSM-7"
    assert result.segments == segments


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        # 66 + 2 would be 68 units: the surrogate pair moves to segment 2, leaving 1 over.
        ("Á" * 66 + "😜" + "Á" * 66, 3),
        ("Á" * 65 + "😜" + "Á" * 67, 2),
        ("😜" * 35, 1),
        ("😜" * 36, 2),
        # Only 33 surrogate pairs (66 units) fit in a concatenated segment.
        ("😜" * 67, 3),
        ("😜" * 66, 2),
    ],
    ids=["pair-at-67-moves", "pair-ends-at-67", "35-emoji", "36-emoji", "67-emoji", "66-emoji"],
)
def test_measure_surrogate_pair_boundary(text, segments):
    result = measure(text)

    assert result.encoding == "UCS-2"
    assert result.segments == segments


@pytest.mark.parametrize(
    ("text", "too_long"),
    [
        ("a" * MAX_BODY_CHARS, False),
        ("a" * (MAX_BODY_CHARS + 1), True),
        ("€" * MAX_BODY_CHARS, False),
        ("Á" * (MAX_BODY_CHARS + 1), True),
        ("😜" * (MAX_BODY_CHARS // 2), False),
        ("😜" * (MAX_BODY_CHARS // 2) + "a", True),
    ],
    ids=[
        "gsm-at-limit", "gsm-over", "euros-at-limit", "ucs2-over", "emoji-at-limit", "emoji-over",
    ],
)
def test_measure_too_long(text, too_long):
    assert measure(text).too_long is too_long


def test_measure_long_gsm_segments():
    result = measure("€" * MAX_BODY_CHARS)

    assert result.units == 2 * MAX_BODY_CHARS
    assert result.segments == 22


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\u2018Hi\u2019 \u201cthere\u201d", "'Hi' \"there\""),
        ("9\u201310 \u2014 today", "9-10 - today"),
        ("Wait\u2026", "Wait..."),
        ("a\u00a0b\u2009c\u202fd\u3000e\tf", "a b c d e f"),
        ("\u2022 one\n\u2022 two", "- one\n- two"),
        ("zero\u200bwidth\ufeff", "zerowidth"),
        ("\u00abquoted\u00bb", '"quoted"'),
        ("1\u22122", "1-2"),
    ],
    ids=["quotes", "dashes", "ellipsis", "spaces", "bullets", "invisible", "guillemets", "minus"],
)
def test_smart_encode_replaces(text, expected):
    result = smart_encode(text)

    assert result == expected
    assert measure(result).encoding == "GSM-7"


@pytest.mark.parametrize(
    "text",
    ["Thanks 😜", "Привет", "José", "你好", "👨\u200d👩\u200d👧"],
    ids=["emoji", "cyrillic", "accent", "chinese", "zwj-sequence"],
)
def test_smart_encode_keeps_real_text(text):
    assert smart_encode(text) == text


def test_smart_encode_gsm_unchanged():
    assert smart_encode(GSM_BASIC_SAMPLE + "€[]") == GSM_BASIC_SAMPLE + "€[]"


def test_smart_encode_with_emoji():
    result = smart_encode("It\u2019s here 😜")

    assert result == "It's here 😜"
    assert measure(result).encoding == "UCS-2"


def test_template_fields():
    template = Template.parse("Hi {FirstName}, {LastName|member}! {firstname} {Due Date}")

    assert template.fields == ("FirstName", "LastName", "Due Date")


def test_template_no_fields():
    template = Template.parse("Plain text")

    assert template.fields == ()
    assert template.render({}) == "Plain text"


def test_template_missing_fields():
    template = Template.parse("Hi {FirstName}, you owe {AMOUNT} by {DueDate}")

    missing = template.missing_fields(["firstname", "Amount", "Email"])

    assert missing == ["DueDate"]


def test_template_render_values():
    template = Template.parse("Hi {FirstName}, you owe {Amount}.")

    text = template.render({"FirstName": "Jane", "Amount": 42})

    assert text == "Hi Jane, you owe 42."


def test_template_render_case_insensitive():
    template = Template.parse("Hi {FirstName} {LASTNAME}")

    assert template.render({"firstname": "Jane", "LastName": "Doe"}) == "Hi Jane Doe"


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"FirstName": None}, "Hi there!"),
        ({"FirstName": ""}, "Hi there!"),
        ({"FirstName": "   "}, "Hi there!"),
        ({}, "Hi there!"),
        ({"FirstName": " Jane "}, "Hi Jane!"),
    ],
    ids=["none", "empty", "blank", "absent", "trimmed"],
)
def test_template_fallback(row, expected):
    template = Template.parse("Hi {FirstName|there}!")

    assert template.render(row) == expected


def test_template_no_fallback_is_empty():
    template = Template.parse("Hi {FirstName}!")

    assert template.render({"FirstName": None}) == "Hi !"


def test_template_fallback_whitespace():
    template = Template.parse("Hi { FirstName | dear member }!")

    assert template.fields == ("FirstName",)
    assert template.render({}) == "Hi dear member!"


def test_template_literal_braces():
    template = Template.parse("Use {{code}} and }} {{{Name}}}")

    assert template.fields == ("Name",)
    assert template.render({"Name": "x"}) == "Use {code} and } {x}"


@pytest.mark.parametrize(
    "value",
    ["{LastName}", "%s", "{0}", "{{", "{FirstName.__class__}", "${HOME}", "%(x)s"],
)
def test_template_value_stays_literal(value):
    template = Template.parse("Hi {FirstName}")

    text = template.render({"FirstName": value, "LastName": "Doe", "HOME": "/root", "x": "y"})

    assert text == "Hi " + value


def test_template_body_percent_literal():
    template = Template.parse("100% of {Name} %s {{0}}")

    assert template.render({"Name": "us"}) == "100% of us %s {0}"


def test_template_attribute_name_not_evaluated():
    template = Template.parse("{FirstName.__class__|x}")

    assert template.fields == ("FirstName.__class__",)
    assert template.render({"FirstName": "Jane"}) == "x"


@pytest.mark.parametrize(
    ("body", "position", "words"),
    [
        ("Hi {FirstName", 4, "not closed"),
        ("Hi {First\nName}", 4, "not closed on its line"),
        ("Hi {First{Name}", 4, "before the '{' at character 10"),
        ("Hi } there", 4, "Unmatched '}'"),
        ("Hi {} there", 4, "no column name"),
        ("Hi {|friend}", 4, "no column name"),
    ],
    ids=["unclosed", "newline", "nested", "lone-close", "empty", "fallback-only"],
)
def test_template_parse_error(body, position, words):
    with pytest.raises(TemplateError) as caught:
        Template.parse(body)

    assert caught.value.position == position
    assert words in str(caught.value)


def test_template_error_is_value_error():
    with pytest.raises(ValueError):
        Template.parse("{")


def test_render_and_measure_plain():
    template = Template.parse("Hi {FirstName} \u2013 welcome")

    text, result = render_and_measure(template, {"FirstName": "Jane"})

    assert text == "Hi Jane \u2013 welcome"
    assert result.encoding == "UCS-2"


def test_render_and_measure_smart():
    template = Template.parse("Hi {FirstName} \u2013 welcome")

    text, result = render_and_measure(template, {"FirstName": "Jane"}, smart_encoding=True)

    assert text == "Hi Jane - welcome"
    assert result == Measurement("GSM-7", 1, len(text), False)


def test_render_and_measure_value_changes_encoding():
    template = Template.parse("Hi {FirstName}")

    _, result = render_and_measure(template, {"FirstName": "Łukasz"})

    assert result.encoding == "UCS-2"


@pytest.mark.parametrize("row, expected", [
    ({"FirstName": "Ana", "Due": "May 1"}, []),
    ({"FirstName": None, "Due": "May 1"}, ["FirstName"]),
    ({"FirstName": "  ", "Due": ""}, ["FirstName", "Due"]),
    ({"Due": "May 1"}, ["FirstName"]),
    ({"firstname": "", "DUE": "May 1"}, ["FirstName"]),
    ({"firstname": "Ana", "DUE": None}, ["Due"]),
])
def test_template_blank_fields(row, expected):
    assert Template.parse("Hi {FirstName}, renew by {Due}").blank_fields(row) == expected


def test_template_blank_fields_skips_fallbacks():
    template = Template.parse("Hi {FirstName|friend}, renew by {Due|June}")
    assert template.blank_fields({"FirstName": None, "Due": None}) == []


def test_template_blank_field_named_once():
    template = Template.parse("{FirstName}, yes {firstname}, and {FirstName|you}")
    assert template.blank_fields({"FirstName": None}) == ["FirstName"]


def test_template_blank_field_empty_fallback():
    assert Template.parse("Hi {FirstName|}!").blank_fields({"FirstName": ""}) == ["FirstName"]


# ------------------------------------------------------------------ blank text and lone surrogates


@pytest.mark.parametrize("text", [
    "", " ", "\t\r\n", "\u00a0\u2003\u3000", "\u200b", "\ufeff", "\u2060\u200c\u200d", "\u00ad",
    "\u200e\u200f\u202e", "\u3164\u115f\u1160\uffa0", "\u2800", "\ufe0f", "\U000e0041", "\x00\x1b",
    "\u00ad \u034f", "\u180b\u17b4",
])
def test_is_blank(text):
    assert is_blank(text) is True


@pytest.mark.parametrize("text", [
    "a", "\u200bx", ".", "\U0001F44B", "\u0301", "{FirstName}", "\u4e2d", "\u200b\u2800!",
])
def test_is_not_blank(text):
    assert is_blank(text) is False


@pytest.mark.parametrize("text, expected", [
    ("Hello\nsee you\tsoon\r\n", []),
    ("x\u0000", ["U+0000"]),
    ("\x1b[31mred\x1b[0m \x07", ["U+0007", "U+001B"]),
])
def test_control_characters(text, expected):
    assert control_characters(text) == expected


@pytest.mark.parametrize("text, position", [
    ("\ud800", 0),
    ("ok \udfff", 3),
    ("\U0001F600 then \ud83d", 7),
    ("\U0001F600", None),
    ("\ud83d\ude00", 0),
    ("plain", None),
])
def test_find_lone_surrogate(text, position):
    assert find_lone_surrogate(text) == position


def test_replace_lone_surrogates():
    assert replace_lone_surrogates("a\ud800b\U0001F600") == "a\ufffdb\U0001F600"


def test_measure_lone_surrogate():
    """A lone surrogate in an IQA value counts as one UTF-16 code unit instead of raising."""
    assert measure("Hi \ud800") == Measurement("UCS-2", 1, 4, False)
    assert measure("\ud800" * 71) == Measurement("UCS-2", 2, 71, False)


def test_render_replaces_lone_surrogate():
    assert Template.parse("Hi {FirstName}").render({"FirstName": "Ana\udc00"}) == "Hi Ana\ufffd"
