"""CampaignPreview on mongomock with a fake iMIS: counts, samples, the day's usage, warnings."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from libs.common.broker import QUEUE_JOBS, tenant_jobs_queue
from libs.common.clock import FakeClock
from libs.common.imis import ImisQueryNotFound, ImisUnavailable
from services.gateway.errors import NotFound, UpstreamUnavailable
from services.gateway.preview import CampaignNotSendable, CampaignPreview
from tests.unit.test_recipients_service import FakeImis, e164, member

QUERY = "$/TextManager/Members"
# 03:00 UTC on 15 January 2027 is still 14 January in New York.
NOW = datetime(2027, 1, 15, 3, 0, tzinfo=timezone.utc)


@pytest.fixture
def tenant(tenant_factory):
    return tenant_factory(timezone="America/New_York", daily_limit=3000, run_segment_limit=10000)


@pytest.fixture
def imis() -> FakeImis:
    return FakeImis([member(i) for i in range(12)])


@pytest.fixture
def preview(runtime, tenant, imis) -> CampaignPreview:
    return CampaignPreview(runtime.db, tenants=runtime.tenants, imis_factory=lambda tenant: imis,
                           clock=FakeClock(NOW.timestamp()), page_size=5)


def add_campaign(db, campaign_id: str = "c1", **fields) -> str:
    db.campaigns.insert_one({"_id": campaign_id, "tenant_id": "ACME", "name": "Spring", "iqa_path": QUERY,
                             "body": "Hello {FirstName|member}", "status": "draft", **fields})
    return campaign_id


def codes(result: dict) -> list[str]:
    return [warning["code"] for warning in result["warnings"]]


def test_counts(runtime, preview, imis):
    imis.rows += [member(20, Mobile="12345"), member(21, Mobile=""), member(22, ID="dup", Mobile=member(0)["Mobile"])]
    result = preview.build("ACME", add_campaign(runtime.db))
    assert result["rows"] == 15
    assert result["recipients"] == 12
    assert result["skipped"] == 3
    assert result["skipped_by_reason"] == {"invalid number": 1, "no number": 1, "duplicate number": 1}
    assert result["segments"] == 12
    assert result["encoding"] == "GSM-7"
    assert result["encodings"] == {"GSM-7": 12}


def test_samples_first_texts(runtime, preview):
    result = preview.build("ACME", add_campaign(runtime.db))
    assert result["samples"] == [{"member_id": str(10_000 + i), "to": e164(i), "body": f"Hello Member{i}",
                                  "segments": 1, "encoding": "GSM-7"} for i in range(5)]


def test_opted_out_counted(runtime, preview):
    runtime.db.optouts.insert_one({"_id": f"ACME:{e164(3)}", "tenant_id": "ACME", "number": e164(3)})
    result = preview.build("ACME", add_campaign(runtime.db))
    assert result["recipients"] == 11
    assert result["skipped_by_reason"] == {"opted out": 1}


def test_same_person_twice_counts_once(runtime, preview, imis):
    imis.rows = [member(0, ID="10151", Mobile="(202) 555-0188"), member(1, ID="10300", Mobile="+1 202-555-0188")]
    result = preview.build("ACME", add_campaign(runtime.db))
    assert result["recipients"] == 1
    assert result["skipped_by_reason"] == {"duplicate number": 1}


def test_mixed_encoding(runtime, preview, imis):
    imis.rows = [member(0), member(1, FirstName="Zoë")]
    result = preview.build("ACME", add_campaign(runtime.db))
    assert result["encoding"] == "mixed"
    assert result["encodings"] == {"GSM-7": 1, "UCS-2": 1}


def test_nothing_to_send(runtime, preview, imis):
    imis.rows = [member(0, Mobile="12345")]
    result = preview.build("ACME", add_campaign(runtime.db))
    assert result["encoding"] is None
    assert codes(result) == ["no_recipients"]


def test_limits_and_usage_of_local_day(runtime, preview):
    runtime.db.usage.insert_many([{"_id": "ACME:2027-01-14", "tenant_id": "ACME", "day": "2027-01-14", "count": 40},
                                  {"_id": "ACME:2027-01-15", "tenant_id": "ACME", "day": "2027-01-15", "count": 999}])
    result = preview.build("ACME", add_campaign(runtime.db))
    assert result["daily_limit"] == 3000
    assert result["daily_used"] == 40
    assert result["daily_remaining"] == 2960
    assert result["run_segment_limit"] == 10000
    assert result["warnings"] == []


def test_daily_allowance_warning(runtime, preview):
    runtime.db.usage.insert_one({"_id": "ACME:2027-01-14", "tenant_id": "ACME", "day": "2027-01-14", "count": 2995})
    result = preview.build("ACME", add_campaign(runtime.db))
    assert codes(result) == ["daily_allowance"]
    assert result["warnings"][0]["message"] == (
        "This run has 12 texts, but only 5 of today's allowance of 3,000 texts remain, so 7 texts would wait "
        "until the allowance renews at midnight (America/New_York). Send to fewer members, or send tomorrow.")


def test_daily_allowance_used_up(runtime, preview):
    runtime.db.usage.insert_one({"_id": "ACME:2027-01-14", "tenant_id": "ACME", "day": "2027-01-14", "count": 3100})
    result = preview.build("ACME", add_campaign(runtime.db))
    assert result["daily_remaining"] == 0
    assert "12 texts would wait" in result["warnings"][0]["message"]


def test_segment_limit_warning(runtime, preview, tenant_factory):
    tenant_factory(timezone="America/New_York", run_segment_limit=10)
    result = preview.build("ACME", add_campaign(runtime.db))
    assert codes(result) == ["run_segment_limit"]
    assert "This run needs 12 segments, more than the limit of 10 per run" in result["warnings"][0]["message"]


def test_smart_encoding_warning(runtime, preview):
    result = preview.build("ACME", add_campaign(runtime.db, body="It\u2019s {FirstName}"))
    assert codes(result) == ["smart_encoding"]
    assert result["warnings"][0]["message"].startswith("12 texts are sent as UCS-2")


def test_smart_encoding_on(runtime, preview):
    result = preview.build("ACME", add_campaign(runtime.db, body="It\u2019s {FirstName}", smart_encoding=True))
    assert result["warnings"] == []
    assert result["encoding"] == "GSM-7"
    assert result["samples"][0]["body"] == "It's Member0"


def test_no_smart_warning_for_real_unicode(runtime, preview):
    result = preview.build("ACME", add_campaign(runtime.db, body="Olá {FirstName} 🎉"))
    assert result["encoding"] == "UCS-2"
    assert result["warnings"] == []


def test_row_without_member_id_skipped(runtime, preview, imis):
    imis.rows[2]["ID"] = None
    imis.rows[7]["ID"] = " "
    result = preview.build("ACME", add_campaign(runtime.db))
    assert result["recipients"] == 10
    assert result["skipped_by_reason"] == {"no member ID": 2}
    assert [sample["member_id"] for sample in result["samples"]] == ["10000", "10001", "10003", "10004", "10005"]


def test_blank_merge_field_warning(runtime, preview, imis):
    # Rows 3 and 11 fall on different pages (5 rows a page), so the counts add up across pages.
    imis.rows[3]["FirstName"] = None
    imis.rows[11]["FirstName"] = ""
    result = preview.build("ACME", add_campaign(runtime.db, body="Hi {FirstName}! See you there"))
    assert result["recipients"] == 12
    assert codes(result) == ["blank_merge_field"]
    assert result["warnings"][0]["message"] == (
        "{FirstName} is empty for 2 of the 12 members who would get a text, so their text leaves it out. These "
        "texts are still sent. To put a word in its place, add a fallback after a bar, as in "
        "{FirstName|text to use instead}, or fill in the value in iMIS.")


def test_warning_per_blank_merge_field(runtime, preview, imis):
    imis.rows[0].update(FirstName=None, Chapter="North")
    imis.rows[1].update(FirstName="Bo", Chapter=None)
    result = preview.build("ACME", add_campaign(runtime.db, body="Hi {FirstName} of {Chapter}"))
    messages = [warning["message"] for warning in result["warnings"]]
    assert codes(result) == ["blank_merge_field", "blank_merge_field"]
    assert messages[0].startswith("{FirstName} is empty for 1 of the 12 members")
    assert messages[1].startswith("{Chapter} is empty for 11 of the 12 members")


def test_no_blank_warning_with_fallback(runtime, preview, imis):
    imis.rows[3]["FirstName"] = None
    result = preview.build("ACME", add_campaign(runtime.db, body="Hi {FirstName|friend}"))
    assert result["warnings"] == []
    assert result["samples"][3]["body"] == "Hi friend"


def test_missing_merge_field(runtime, preview):
    with pytest.raises(CampaignNotSendable, match=r"The text uses \{Nickname\}"):
        preview.build("ACME", add_campaign(runtime.db, body="Hi {Nickname}"))


def test_query_not_found(runtime, preview, imis):
    imis.failures = {0: ImisQueryNotFound("iMIS found no query at $/X. Check the query path.")}
    with pytest.raises(CampaignNotSendable, match="iMIS found no query"):
        preview.build("ACME", add_campaign(runtime.db))


def test_imis_unavailable(runtime, preview, imis):
    imis.failures = {0: ImisUnavailable("iMIS at http://imis is unavailable.")}
    with pytest.raises(UpstreamUnavailable, match="unavailable"):
        preview.build("ACME", add_campaign(runtime.db))


def test_unknown_campaign(preview):
    with pytest.raises(NotFound):
        preview.build("ACME", "nope")


def test_other_tenant_campaign(runtime, preview, tenant_factory):
    tenant_factory(cloud_id="OTHER")
    campaign_id = add_campaign(runtime.db)
    with pytest.raises(NotFound):
        preview.build("OTHER", campaign_id)


def test_preview_writes_nothing(runtime, preview):
    before = {name: runtime.db[name].count_documents({}) for name in ("runs", "run_pages", "messages", "usage")}
    preview.build("ACME", add_campaign(runtime.db))
    after = {name: runtime.db[name].count_documents({}) for name in before}
    assert after == before
    assert runtime.broker.queue_depth(QUEUE_JOBS) == 0
    with pytest.raises(ValueError):
        runtime.broker.queue_depth(tenant_jobs_queue("ACME"))
