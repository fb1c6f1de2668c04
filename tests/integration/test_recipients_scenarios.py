"""Whole-product runs of the recipients scenarios: opted-out first pages, duplicates, redelivery, limits."""

from __future__ import annotations

from collections import Counter

from libs.common.broker import PublishError
from local import demo_data
from local.stack import DEMO_CLOUD_ID

S3_QUERY = "$/TextManager/Renewals"


def renewal_member(index: int) -> dict:
    return {"ID": str(50_000 + index), "FirstName": f"Renewal{index}", "LastName": "Member",
            "Mobile": f"(312) 555-{2000 + index:04d}"}


def renewal_number(index: int) -> str:
    return f"+1312555{2000 + index:04d}"


def texts_by_number(stack) -> Counter:
    return Counter(message["to"] for message in stack.twilio.messages() if message["sid"])


def start_stack(stack_factory):
    """Start a stack whose Twilio simulator delivers every text it accepts.

    These tests are about who gets a text, so no text waits for the sender's retries.
    """
    stack = stack_factory()
    stack.twilio.set_undelivered({})
    return stack


def test_first_pages_opted_out(stack_factory, staff_api):
    # 1,200 rows whose first 1,000 numbers opted out: 200 texts, 1,000 skipped, and the run completes.
    stack = start_stack(stack_factory)
    stack.imis.add_query(S3_QUERY, demo_data.MEMBER_COLUMNS, [renewal_member(i) for i in range(1200)])
    stack.runtime.db.optouts.insert_many([
        {"_id": f"{DEMO_CLOUD_ID}:{renewal_number(i)}", "tenant_id": DEMO_CLOUD_ID, "number": renewal_number(i)}
        for i in range(1000)
    ])
    staff = staff_api(stack)
    campaign = staff.create_campaign(iqa_path=S3_QUERY)
    finished = staff.send_and_wait(campaign["id"])

    run = finished["current_run"]
    texts = texts_by_number(stack)
    assert finished["status"] == "completed"
    assert run["status"] == "completed"
    assert run["counts"]["recipients"] == 200
    assert run["counts"]["skipped"] == 1000
    assert run["skipped_by_reason"] == {"opted out": 1000}
    assert sorted(texts) == [renewal_number(i) for i in range(1000, 1200)]
    assert set(texts.values()) == {1}


def test_same_person_twice_one_text(stack_factory, staff_api):
    # Ben Okafor is in the demo query twice, as (202) 555-0188 and in another format.
    stack = start_stack(stack_factory)
    staff = staff_api(stack)
    finished = staff.send_and_wait(staff.create_campaign()["id"])

    ben_rows = [row for row in demo_data.build_demo_members() if row["LastName"] == "Okafor"]
    assert len(ben_rows) == 2
    assert finished["status"] == "completed"
    assert texts_by_number(stack)["+12025550188"] == 1
    assert finished["current_run"]["counts"]["recipients"] == demo_data.DEMO_RECIPIENT_COUNT


def test_run_report_lists_skipped(stack_factory, staff_api):
    stack = start_stack(stack_factory)
    staff = staff_api(stack)
    finished = staff.send_and_wait(staff.create_campaign()["id"])
    report = staff.get(f"/api/runs/{finished['current_run']['id']}?limit=1000").json()

    by_reason: dict[str, set] = {}
    for row in report["skipped"]:
        by_reason.setdefault(row["reason"], set()).add(row["raw"])
    assert report["skipped_total"] == demo_data.DEMO_SKIPPED_COUNT + demo_data.DEMO_DUPLICATE_COUNT
    assert by_reason["invalid number"] == {"555-0100", "12345", "not a number", "202-555-014", "(000) 555-0100",
                                           "+1 202 555 01432"}
    assert by_reason["no number"] == {""}
    assert len(by_reason["duplicate number"]) == demo_data.DEMO_DUPLICATE_COUNT
    assert all(row["member_id"] for row in report["skipped"])


def test_publish_failure_redelivered(stack_factory, staff_api, monkeypatch):
    # The first publish of the jobs fails; the broker delivers the run again and it resumes.
    stack = start_stack(stack_factory)
    broker = stack.runtime.broker
    publish_many = broker.publish_many
    calls = []

    def fail_first(queue, bodies, *, message_ids=None):
        calls.append(queue)
        if len(calls) == 1:
            raise PublishError("connection lost before the confirms")
        return publish_many(queue, bodies, message_ids=message_ids)

    monkeypatch.setattr(broker, "publish_many", fail_first)
    staff = staff_api(stack)
    finished = staff.send_and_wait(staff.create_campaign()["id"])

    texts = texts_by_number(stack)
    assert len(calls) == 2
    assert finished["status"] == "completed"
    assert len(texts) == demo_data.DEMO_RECIPIENT_COUNT - len(demo_data.DEMO_TWILIO_OPTED_OUT)
    assert set(texts.values()) == {1}


def test_run_over_segment_limit(stack_factory, staff_api):
    stack = start_stack(stack_factory)
    stack.runtime.tenants.update(DEMO_CLOUD_ID, {"run_segment_limit": 100})
    staff = staff_api(stack)
    finished = staff.send_and_wait(staff.create_campaign(email="events@demo-association.example")["id"])

    notices = list(stack.runtime.db.notifications.find({"tenant_id": DEMO_CLOUD_ID}))
    assert finished["status"] == "failed"
    assert f"This run needs {demo_data.DEMO_RECIPIENT_COUNT} segments" in finished["error"]
    assert "limit of 100 per run" in finished["error"]
    assert finished["current_run"]["segments"] == demo_data.DEMO_RECIPIENT_COUNT
    assert stack.twilio.messages() == []
    assert [notice["to"] for notice in notices] == [["admin@demo-association.example",
                                                     "events@demo-association.example"]]
