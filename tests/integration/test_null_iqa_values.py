"""IQA rows with null or blank values, through the whole product: preview, run report and iMIS log."""

from __future__ import annotations

import pytest

from local import demo_data
from tests.conftest import wait_until

QUERY = "$/TextManager/Gaps"
BODY = "Hi {FirstName}! Our annual meeting is on 12 June."
# Two members with IDs, one of them without a first name, and three rows without a member ID.
ROWS = [
    {"ID": "30001", "FirstName": "Ana", "LastName": "Reyes", "Mobile": "(202) 555-0143"},
    {"ID": None, "FirstName": "Ben", "LastName": "Okafor", "Mobile": "(202) 555-0144"},
    {"ID": "", "FirstName": "Carla", "LastName": "Diaz", "Mobile": "(202) 555-0145"},
    {"ID": "  ", "FirstName": "Dan", "LastName": "Moss", "Mobile": "(202) 555-0146"},
    {"ID": "30005", "FirstName": None, "LastName": "Li", "Mobile": "(202) 555-0147"},
]


@pytest.fixture
def stack(stack_factory):
    started = stack_factory()
    started.imis.add_query(QUERY, demo_data.MEMBER_COLUMNS, ROWS)
    started.twilio.set_undelivered({})
    return started


@pytest.fixture
def staff(stack, staff_api):
    return staff_api(stack)


def test_preview_skips_and_warns(staff):
    campaign = staff.create_campaign(body=BODY, iqa_path=QUERY)
    response = staff.get(f"/api/campaigns/{campaign['id']}/preview")
    body = response.json()

    assert response.status_code == 200
    assert body["recipients"] == 2
    assert body["skipped_by_reason"] == {"no member ID": 3}
    assert [warning["code"] for warning in body["warnings"]] == ["blank_merge_field"]
    assert body["warnings"][0]["message"].startswith("{FirstName} is empty for 1 of the 2 members")
    assert "{FirstName|text to use instead}" in body["warnings"][0]["message"]
    assert [sample["body"] for sample in body["samples"]] == [
        "Hi Ana! Our annual meeting is on 12 June.", "Hi ! Our annual meeting is on 12 June."]


def test_send_texts_and_logs_members_only(stack, staff):
    campaign = staff.send_and_wait(staff.create_campaign(body=BODY, iqa_path=QUERY)["id"])
    run = campaign["current_run"]

    assert campaign["status"] == "completed"
    assert run["counts"]["recipients"] == 2
    assert run["counts"]["skipped"] == 3
    assert run["skipped_by_reason"] == {"no member ID": 3}
    assert run["blank_fields"] == {"FirstName": 1}
    assert sorted(message["to"] for message in stack.twilio.messages()) == ["+12025550143", "+12025550147"]

    logged = wait_until(lambda: len(stack.imis.communication_log()) == 2 and stack.imis.communication_log(),
                        "both sent texts are logged in iMIS")
    assert sorted(entry["recipient_id"] for entry in logged) == ["30001", "30005"]
    assert stack.runtime.db.failed_imis_writes.count_documents({}) == 0


def test_run_report_lists_rows_without_id(staff):
    campaign = staff.send_and_wait(staff.create_campaign(body=BODY, iqa_path=QUERY)["id"])
    report = staff.get(f"/api/runs/{campaign['current_run']['id']}").json()

    assert report["skipped_total"] == 3
    assert [(row["member_id"], row["raw"], row["reason"]) for row in report["skipped"]] == [
        ("", "(202) 555-0144", "no member ID"), ("", "(202) 555-0145", "no member ID"),
        ("", "(202) 555-0146", "no member ID")]
