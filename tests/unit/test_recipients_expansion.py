"""RowProcessor and the column check: the per-row work shared by the pipeline and the preview."""

import json

import pytest

from libs.common.imis import QueryPage
from libs.common.message_ids import MessageIds
from libs.common.texts import GSM7, UCS2, Template
from services.recipients.errors import CampaignSetupError
from services.recipients.expansion import (
    DUPLICATE_NUMBER, EMPTY_TEXT, NO_MEMBER_ID, OPTED_OUT, TOO_LONG, RowProcessor, build_job, build_processor, check_columns,
    process_pages, segment_limit_message,
)
from tests.conftest import CASES_DIR

PHONE_CASES = json.loads((CASES_DIR / "phones.json").read_text(encoding="utf-8"))["cases"]
SEGMENT_CASES = json.loads((CASES_DIR / "segments.json").read_text(encoding="utf-8"))["cases"]

CAMPAIGN = {"_id": "c1", "body": "Hello {FirstName|member}", "iqa_path": "$/TextManager/Members"}


def build_text(spec) -> str:
    """Return the text a segments.json case describes: a string, {repeat, times} or {concat}."""
    if isinstance(spec, str):
        return spec
    if "repeat" in spec:
        return spec["repeat"] * spec["times"]
    return "".join(build_text(part) for part in spec["concat"])


def processor(body: str = "Hello {FirstName|member}", country: str = "US", **options) -> RowProcessor:
    return RowProcessor(template=Template.parse(body), default_country=country, **options)


def row(member_id: str, mobile, first_name: str | None = "Ana", **extra) -> dict:
    return {"ID": member_id, "FirstName": first_name, "Mobile": mobile, **extra}


def no_opt_outs(numbers: list[str]) -> set[str]:
    return set()


def test_job_fields():
    result = processor().process([row("10001", "(202) 555-0143")], no_opt_outs)
    assert result.jobs == [["10001", "+12025550143", "Hello Ana", 1, GSM7]]


def test_page_totals():
    rows = [row("1", "(202) 555-0143"), row("2", "(202) 555-0144", first_name="Zoë"), row("3", "12345")]
    result = processor().process(rows, no_opt_outs)
    assert result.segments == 2
    assert result.encodings == {GSM7: 1, UCS2: 1}
    assert result.skipped_by_reason() == {"invalid number": 1}


@pytest.mark.parametrize("case", PHONE_CASES, ids=lambda case: f"{case['raw']!r}-{case['default_country']}")
def test_phone_shared_case(case):
    result = processor(country=case["default_country"]).process([row("1", case["raw"])], no_opt_outs)
    if case["sendable"]:
        assert [job[1] for job in result.jobs] == [case["e164"]]
        assert result.skipped == []
    else:
        assert result.jobs == []
        assert result.skipped == [{"member_id": "1", "raw": case["raw"], "e164": case["e164"],
                                   "reason": case["reason"]}]


def test_uk_fixed_line_skipped():
    # The README names this number: a leading + overrides the default country, but a
    # fixed line cannot take a text, so the row is skipped rather than sent.
    result = processor(country="US").process([row("1", "+44 20 7234 3456")], no_opt_outs)
    assert result.jobs == []
    assert result.skipped == [{"member_id": "1", "raw": "+44 20 7234 3456", "e164": "+442072343456",
                               "reason": "not a mobile number (fixed line)"}]


@pytest.mark.parametrize("case", SEGMENT_CASES, ids=lambda case: case.get("note", "")[:30] or str(case["segments"]))
def test_segments_shared_case(case):
    text = build_text(case["text"])
    body = text.replace("{", "{{").replace("}", "}}")
    result = processor(body=body).process([row("1", "(202) 555-0143")], no_opt_outs)
    assert result.jobs[0][2] == text
    assert result.jobs[0][3] == case["segments"]
    assert result.jobs[0][4] == case["encoding"]


def test_same_number_other_format():
    rows = [row("10151", "(202) 555-0188", first_name="Ben"), row("10300", "+1 202-555-0188", first_name="Ben")]
    result = processor().process(rows, no_opt_outs)
    assert [job[1] for job in result.jobs] == ["+12025550188"]
    assert result.skipped == [{"member_id": "10300", "raw": "+1 202-555-0188", "e164": "+12025550188",
                               "reason": DUPLICATE_NUMBER}]


def test_same_member_repeated_counted_once():
    rows = [row("10151", "(202) 555-0188"), row("10151", "202.555.0188")]
    result = processor().process(rows, no_opt_outs)
    assert len(result.jobs) == 1
    assert result.skipped == []


def test_duplicate_across_pages():
    rows = processor()
    first = rows.process([row("1", "(202) 555-0188")], no_opt_outs)
    second = rows.process([row("2", "2025550188"), row("1", "(202) 555-0188")], no_opt_outs)
    assert len(first.jobs) == 1
    assert second.jobs == []
    assert [skip["member_id"] for skip in second.skipped] == ["2"]


def test_repeated_skip_reported_once():
    rows = processor()
    rows.process([row("1", "12345")], no_opt_outs)
    again = rows.process([row("1", "12345")], no_opt_outs)
    assert again.skipped == []


def test_opted_out_skipped():
    def lookup(numbers):
        return {"+12025550142"} & set(numbers)

    result = processor().process([row("1", "(202) 555-0142"), row("2", "(202) 555-0143")], lookup)
    assert [job[1] for job in result.jobs] == ["+12025550143"]
    assert result.skipped == [{"member_id": "1", "raw": "(202) 555-0142", "e164": "+12025550142",
                               "reason": OPTED_OUT}]


def test_opted_out_second_member_same_reason():
    result = processor().process([row("1", "(202) 555-0142"), row("2", "202.555.0142")],
                                 lambda numbers: {"+12025550142"})
    assert [skip["reason"] for skip in result.skipped] == [OPTED_OUT, OPTED_OUT]


def test_opt_out_lookup_gets_valid_numbers():
    requested = []

    def lookup(numbers):
        requested.append(list(numbers))
        return set()

    processor().process([row("1", "(202) 555-0142"), row("2", "12345"), row("3", "+1 (800) 555-0199")], lookup)
    assert requested == [["+12025550142"]]


def test_opt_out_lookup_skipped_without_numbers():
    requested = []
    processor().process([row("1", ""), row("2", None)], lambda numbers: requested.append(numbers) or set())
    assert requested == []


def test_empty_text_skipped():
    result = processor(body="{Note}").process([row("1", "(202) 555-0143", Note="  ")], no_opt_outs)
    assert result.jobs == []
    assert result.skipped[0]["reason"] == EMPTY_TEXT


def test_too_long_text_skipped():
    result = processor(body="{Note}").process([row("1", "(202) 555-0143", Note="a" * 1601)], no_opt_outs)
    assert result.jobs == []
    assert result.skipped[0]["reason"] == TOO_LONG


def test_number_of_empty_text_stays_free():
    rows = [row("1", "(202) 555-0143", Note=""), row("2", "(202) 555-0143", Note="hi")]
    result = processor(body="{Note}").process(rows, no_opt_outs)
    assert [job[0] for job in result.jobs] == ["2"]


@pytest.mark.parametrize("value", [None, "", "   "])
def test_fallback_for_empty_value(value):
    result = processor(body="Hi {FirstName|friend}").process([row("1", "(202) 555-0143", first_name=value)],
                                                            no_opt_outs)
    assert result.jobs[0][2] == "Hi friend"


@pytest.mark.parametrize("value", ["{LastName}", "%s %(x)s", "{0}", "${HOME}"])
def test_value_inserted_as_text(value):
    result = processor(body="Hi {FirstName}").process([row("1", "(202) 555-0143", first_name=value, LastName="X")],
                                                     no_opt_outs)
    assert result.jobs[0][2] == f"Hi {value}"


def test_smart_encoding_on():
    result = processor(body="It\u2019s {FirstName}\u2026", smart_encoding=True).process(
        [row("1", "(202) 555-0143")], no_opt_outs)
    assert result.jobs[0][2] == "It's Ana..."
    assert result.jobs[0][4] == GSM7


def test_smart_encoding_off():
    result = processor(body="It\u2019s {FirstName}").process([row("1", "(202) 555-0143")], no_opt_outs)
    assert result.jobs[0][2] == "It\u2019s Ana"
    assert result.jobs[0][4] == UCS2


def test_columns_match_any_case():
    rows = [{"id": "1", "firstname": "Ana", "MOBILE": "(202) 555-0143"}]
    result = processor().process(rows, no_opt_outs)
    assert result.jobs == [["1", "+12025550143", "Hello Ana", 1, GSM7]]


@pytest.mark.parametrize("member_id", [None, "", "   ", "\t"])
def test_row_without_member_id_skipped(member_id):
    result = processor().process([row(member_id, "(202) 555-0143")], no_opt_outs)
    assert result.jobs == []
    assert result.skipped == [{"member_id": "", "raw": "(202) 555-0143", "e164": "+12025550143",
                               "reason": NO_MEMBER_ID}]


def test_row_without_id_column_skipped():
    result = processor().process([{"FirstName": "Ana", "Mobile": "(202) 555-0143"}], no_opt_outs)
    assert result.jobs == []
    assert result.skipped_by_reason() == {NO_MEMBER_ID: 1}


def test_no_member_id_reported_before_number():
    result = processor().process([row(None, None)], no_opt_outs)
    assert result.skipped_by_reason() == {NO_MEMBER_ID: 1}


def test_number_of_row_without_id_stays_free():
    result = processor().process([row("", "(202) 555-0143"), row("2", "202.555.0143")], no_opt_outs)
    assert [job[:2] for job in result.jobs] == [["2", "+12025550143"]]
    assert [skip["reason"] for skip in result.skipped] == [NO_MEMBER_ID]


def test_member_id_whitespace_trimmed():
    result = processor().process([row(" 10001 ", "(202) 555-0143")], no_opt_outs)
    assert result.jobs[0][0] == "10001"


@pytest.mark.parametrize("value", [None, "", "   "])
def test_blank_field_counted_and_sent(value):
    result = processor(body="Hi {FirstName}! Renew by {Due}").process(
        [row("1", "(202) 555-0143", first_name=value, Due="May 1"), row("2", "(202) 555-0144", Due="May 1")],
        no_opt_outs)
    assert [job[2] for job in result.jobs] == ["Hi ! Renew by May 1", "Hi Ana! Renew by May 1"]
    assert result.blank_fields == {"FirstName": 1}


def test_blank_field_with_fallback_not_counted():
    result = processor(body="Hi {FirstName|friend}").process([row("1", "(202) 555-0143", first_name=None)],
                                                            no_opt_outs)
    assert result.blank_fields == {}


def test_blank_field_of_skipped_row_not_counted():
    rows = [row("1", "12345", first_name=None), row(None, "(202) 555-0143", first_name=None)]
    result = processor(body="Hi {FirstName}").process(rows, no_opt_outs)
    assert result.jobs == []
    assert result.blank_fields == {}


def test_integer_member_id_and_number():
    result = processor().process([row(10001, 2025550143)], no_opt_outs)
    assert result.jobs[0][:2] == ["10001", "+12025550143"]


def test_restore_takes_back_numbers():
    rows = processor()
    rows.restore([["1", "+12025550188", "Hello", 1, GSM7]], [{"member_id": "3", "raw": "12345", "e164": None,
                                                              "reason": "invalid number"}])
    result = rows.process([row("2", "(202) 555-0188"), row("1", "202.555.0188"), row("3", "12345")], no_opt_outs)
    assert result.jobs == []
    assert [skip["member_id"] for skip in result.skipped] == ["2"]


def test_build_processor_settings():
    built = build_processor(dict(CAMPAIGN, phone_column="Cell", id_column="PartyId", smart_encoding=True), "NL")
    assert (built.phone_column, built.id_column, built.smart_encoding, built.default_country) == (
        "Cell", "PartyId", True, "NL")


def test_build_processor_bad_template():
    with pytest.raises(CampaignSetupError, match="not closed"):
        build_processor(dict(CAMPAIGN, body="Hello {FirstName"), "US")


def test_check_columns_missing_field():
    with pytest.raises(CampaignSetupError) as raised:
        check_columns(dict(CAMPAIGN, body="Hi {Nickname} {FirstName}"), Template.parse("Hi {Nickname} {FirstName}"),
                      [row("1", "x")])
    message = str(raised.value)
    assert "{Nickname}" in message
    assert "{FirstName}" not in message.split("which")[0]
    assert "add it to the IQA or change the text" in message
    assert "$/TextManager/Members" in message
    assert "ID, FirstName, Mobile" in message


def test_check_columns_many_missing():
    with pytest.raises(CampaignSetupError, match=r"\{A\}, \{B\}, which .* add them to the IQA"):
        check_columns(CAMPAIGN, Template.parse("{A} {B}"), [row("1", "x")])


def test_check_columns_phone_column():
    with pytest.raises(CampaignSetupError, match="phone numbers from the column Cell"):
        check_columns(dict(CAMPAIGN, phone_column="Cell"), Template.parse("Hi"), [row("1", "x")])


def test_check_columns_id_column():
    with pytest.raises(CampaignSetupError, match="member IDs from the column PartyId"):
        check_columns(dict(CAMPAIGN, id_column="PartyId"), Template.parse("Hi"), [row("1", "x")])


def test_check_columns_any_case():
    check_columns(dict(CAMPAIGN, phone_column="mobile"), Template.parse("Hi {firstname}"),
                  [{"id": "1", "FIRSTNAME": None, "Mobile": "x"}])


def test_check_columns_union_of_rows():
    rows = [{"ID": "1", "Mobile": "x"}, {"ID": "2", "Mobile": "y", "FirstName": "Ana"}]
    check_columns(CAMPAIGN, Template.parse("Hi {FirstName}"), rows)


def test_check_columns_without_rows():
    check_columns(CAMPAIGN, Template.parse("Hi {Nickname}"), [])


def test_process_pages_checks_first_page():
    pages = [QueryPage(0, 0, (row("1", "(202) 555-0143"),), False, 1)]
    with pytest.raises(CampaignSetupError, match="Nickname"):
        list(process_pages(pages, processor(body="{Nickname}"), CAMPAIGN, no_opt_outs))


def test_process_pages_resumed_skips_check():
    pages = [QueryPage(500, 0, (row("1", "(202) 555-0143"),), False, 501)]
    results = list(process_pages(pages, processor(body="{Nickname|x}"), CAMPAIGN, no_opt_outs, first_page_no=1))
    assert [page_no for page_no, _, _ in results] == [1]


def test_segment_limit_message():
    message = segment_limit_message(12345, 10000)
    assert "12,345 segments" in message
    assert "limit of 10,000 per run" in message
    assert "narrow the IQA, split the campaign, or shorten the text" in message


def test_build_job():
    message_ids = MessageIds(b"k" * 32)
    job = build_job({"tenant_id": "T", "campaign_id": "c", "run_id": "r"}, ["1", "+12025550143", "Hi", 1, GSM7],
                    message_ids)
    assert job == {"tenant_id": "T", "campaign_id": "c", "run_id": "r",
                   "message_id": message_ids.build("r", "+12025550143"),
                   "member_id": "1", "to": "+12025550143", "body": "Hi", "segments": 1, "encoding": GSM7}
    assert "2025550143" not in job["message_id"]
