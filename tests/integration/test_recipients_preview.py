"""GET /api/campaigns/{id}/preview over HTTP, on the whole product with the demo organisation."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import requests

from local import demo_data
from local.stack import DEMO_CLOUD_ID


@pytest.fixture(scope="module")
def stack(module_stack_factory):
    return module_stack_factory()


@pytest.fixture
def staff(stack, staff_api):
    return staff_api(stack)


def preview(staff, campaign_id: str) -> requests.Response:
    return staff.get(f"/api/campaigns/{campaign_id}/preview")


def demo_skips() -> dict[str, int]:
    return {"duplicate number": demo_data.DEMO_DUPLICATE_COUNT, "invalid number": demo_data.DEMO_INVALID_COUNT,
            "no number": demo_data.DEMO_EMPTY_COUNT}


def test_demo_preview(staff):
    response = preview(staff, staff.create_campaign()["id"])
    body = response.json()
    first_rows = demo_data.build_demo_members()[:2]

    assert response.status_code == 200
    assert body["rows"] == demo_data.DEMO_MEMBER_COUNT
    assert body["recipients"] == demo_data.DEMO_RECIPIENT_COUNT
    assert body["skipped_by_reason"] == demo_skips()
    assert body["segments"] == demo_data.DEMO_RECIPIENT_COUNT
    assert body["encoding"] == "GSM-7"
    assert [sample["body"] for sample in body["samples"][:2]] == [
        f"Hello {row['FirstName']}, this is the Demo Association." for row in first_rows]
    assert len(body["samples"]) == 5
    assert body["run_segment_limit"] == 10000
    assert body["warnings"] == []


def test_preview_matches_run(stack_factory, staff_api):
    # A stack of its own, because sending records opt-outs and usage that later previews
    # would see. Its Twilio simulator delivers every text, so no text waits for a retry.
    stack = stack_factory()
    stack.twilio.set_undelivered({})
    staff = staff_api(stack)
    campaign = staff.create_campaign(body="Dear {FirstName|member}, our annual meeting is on 12 June \u2013 see you!")
    previewed = preview(staff, campaign["id"]).json()
    run = staff.send_and_wait(campaign["id"])["current_run"]

    assert previewed["recipients"] == run["counts"]["recipients"]
    assert previewed["skipped"] == run["counts"]["skipped"]
    assert previewed["skipped_by_reason"] == run["skipped_by_reason"]
    assert previewed["segments"] == run["segments"]


def test_same_person_counted_once(stack, staff):
    ben = [row for row in demo_data.build_demo_members() if row["LastName"] == "Okafor"]
    stack.imis.add_query("$/TextManager/Ben", demo_data.MEMBER_COLUMNS, ben)
    body = preview(staff, staff.create_campaign(iqa_path="$/TextManager/Ben")["id"]).json()
    assert body["recipients"] == 1
    assert body["skipped_by_reason"] == {"duplicate number": 1}
    assert [sample["to"] for sample in body["samples"]] == ["+12025550188"]


def test_daily_allowance_warning(stack, staff):
    tenant = stack.runtime.tenants.get(DEMO_CLOUD_ID)
    day = datetime.now(ZoneInfo(tenant.timezone)).date().isoformat()
    stack.runtime.db.usage.insert_one({"_id": f"{DEMO_CLOUD_ID}:{day}", "tenant_id": DEMO_CLOUD_ID, "day": day,
                                       "count": 2900})
    try:
        body = preview(staff, staff.create_campaign()["id"]).json()
    finally:
        stack.runtime.db.usage.delete_one({"_id": f"{DEMO_CLOUD_ID}:{day}"})

    waiting = demo_data.DEMO_RECIPIENT_COUNT - 100
    assert body["daily_used"] == 2900
    assert body["daily_remaining"] == 100
    assert [warning["code"] for warning in body["warnings"]] == ["daily_allowance"]
    assert f"so {waiting} texts would wait until the allowance renews" in body["warnings"][0]["message"]


def test_segment_limit_warning(stack, staff):
    stack.runtime.tenants.update(DEMO_CLOUD_ID, {"run_segment_limit": 200})
    try:
        body = preview(staff, staff.create_campaign()["id"]).json()
    finally:
        stack.runtime.tenants.update(DEMO_CLOUD_ID, {"run_segment_limit": 10000})
    assert [warning["code"] for warning in body["warnings"]] == ["run_segment_limit"]
    assert (f"This run needs {demo_data.DEMO_RECIPIENT_COUNT} segments, more than the limit of 200 per run"
            in body["warnings"][0]["message"])


def test_missing_merge_field(staff):
    response = preview(staff, staff.create_campaign(body="Hi {Nickname}")["id"])
    assert response.status_code == 422
    assert response.json()["error"] == "campaign_not_sendable"
    assert "The text uses {Nickname}" in response.json()["message"]


def test_query_not_found(staff):
    response = preview(staff, staff.create_campaign(iqa_path="$/TextManager/Gone")["id"])
    assert response.status_code == 422
    assert 'marked "Available via the REST API" in iMIS' in response.json()["message"]


def test_query_not_available_over_rest(stack, staff):
    stack.imis.add_query("$/TextManager/Private", demo_data.MEMBER_COLUMNS, demo_data.build_demo_members())
    stack.imis.set_rest_available("$/TextManager/Private", False)
    response = preview(staff, staff.create_campaign(iqa_path="$/TextManager/Private")["id"])
    assert response.status_code == 422
    assert "over REST" in response.json()["message"]


def test_unknown_campaign(staff):
    response = preview(staff, "0" * 32)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_needs_session(stack, staff):
    campaign_id = staff.create_campaign()["id"]
    response = requests.get(f"{stack.gateway_url}/api/campaigns/{campaign_id}/preview")
    assert response.status_code == 401
    assert response.json()["error"] == "not_signed_in"
