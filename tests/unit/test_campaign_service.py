"""Campaign steering in the gateway: sending again, cancelling, texts waiting for the daily limit, run reports."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from services.gateway.errors import Conflict
from services.gateway.service import CampaignService

TENANT = "ACME"


@pytest.fixture
def campaigns(runtime) -> CampaignService:
    return CampaignService(runtime.db, broker=runtime.broker, clock=runtime.clock)


@pytest.fixture
def campaign_id(runtime, campaigns) -> str:
    campaign = campaigns.create(TENANT, {"name": "Renewals", "body": "Renew today", "iqa_path": "$/TextManager/Members"},
                                "staff")
    return campaign["_id"]


def add_run(runtime, campaign_id: str, run_id: str, status: str, **counts: int) -> None:
    """Store a run of the campaign with counts, and make it the current one."""
    runtime.db.runs.insert_one({"_id": run_id, "tenant_id": TENANT, "campaign_id": campaign_id, "status": status,
                                "expanded": True, "due_at": runtime.clock.now(), "counts": counts})
    campaign_status = status if status in ("completed", "cancelled", "failed") else "sending"
    runtime.db.campaigns.update_one({"_id": campaign_id},
                                    {"$set": {"current_run_id": run_id, "status": campaign_status}})


def add_message(runtime, run_id: str, number: str, status: str, **fields) -> None:
    runtime.db.messages.insert_one({"_id": f"{run_id}:{number}", "tenant_id": TENANT, "run_id": run_id,
                                    "to": number, "member_id": "1", "status": status, **fields})


# ------------------------------------------------------------------ sending again


def test_send_again_needs_resend(runtime, campaigns, campaign_id):
    add_run(runtime, campaign_id, "r1", "completed", recipients=233, sent=233, done=233)

    with pytest.raises(Conflict) as raised:
        campaigns.send(TENANT, campaign_id, None)

    assert "already sent 233 texts" in raised.value.message
    assert "Send again" in raised.value.message
    assert '{"resend": true}' in raised.value.message
    assert raised.value.details["sent"] == 233
    assert runtime.db.runs.count_documents({"campaign_id": campaign_id}) == 1


def test_send_again_with_resend(runtime, campaigns, campaign_id):
    add_run(runtime, campaign_id, "r1", "completed", recipients=233, sent=233, done=233)

    campaign = campaigns.send(TENANT, campaign_id, None, resend=True)

    assert campaign["status"] == "sending"
    assert campaign["current_run_id"] != "r1"
    assert runtime.db.runs.count_documents({"campaign_id": campaign_id}) == 2


def test_cancelled_before_sending_sends(runtime, campaigns, campaign_id):
    """A campaign scheduled once and cancelled before its time sent nothing, so it sends without resend."""
    add_run(runtime, campaign_id, "r1", "cancelled", recipients=0, sent=0)

    campaign = campaigns.send(TENANT, campaign_id, None)

    assert campaign["status"] == "sending"


def test_earlier_run_counts(runtime, campaigns, campaign_id):
    """A run that sent texts still counts when a later run was cancelled before sending."""
    add_run(runtime, campaign_id, "r1", "completed", recipients=233, sent=233, done=233)
    add_run(runtime, campaign_id, "r2", "cancelled", recipients=0, sent=0)

    with pytest.raises(Conflict) as raised:
        campaigns.send(TENANT, campaign_id, None)

    assert raised.value.details["sent"] == 233


def test_text_in_flight_needs_resend(runtime, campaigns, campaign_id):
    """A text claimed when the run was cancelled may still reach Twilio, so sending again is confirmed."""
    add_run(runtime, campaign_id, "r1", "cancelled", recipients=5, sent=0)
    add_message(runtime, "r1", "+12025550101", "sending")

    with pytest.raises(Conflict):
        campaigns.send(TENANT, campaign_id, None)


# ------------------------------------------------------------------ cancelling


def test_cancel_counts_cancelled(runtime, campaigns, campaign_id):
    add_run(runtime, campaign_id, "r1", "sending", recipients=3, sent=1, skipped=2, done=1)
    add_message(runtime, "r1", "+12025550101", "sent", sent_at=runtime.clock.now())
    add_message(runtime, "r1", "+12025550102", "deferred")
    add_message(runtime, "r1", "+12025550103", "paused")

    campaign = campaigns.cancel(TENANT, campaign_id)

    counts = runtime.db.runs.find_one({"_id": "r1"})["counts"]
    assert campaign["status"] == "cancelled"
    assert counts["cancelled"] == 2
    assert counts["skipped"] == 2
    assert counts["done"] == 3
    assert campaign["counts"]["cancelled"] == 2


def test_cancel_finished_run_is_409(runtime, campaigns, campaign_id):
    add_run(runtime, campaign_id, "r1", "completed", recipients=1, sent=1, done=1)

    with pytest.raises(Conflict) as raised:
        campaigns.cancel(TENANT, campaign_id)

    assert "last run is completed" in raised.value.message


# ------------------------------------------------------------------ texts waiting for the daily limit


def test_deferred_texts_on_current_run(runtime, campaigns, campaign_id):
    add_run(runtime, campaign_id, "r1", "sending", recipients=4, sent=1, done=0)
    midnight = datetime(2100, 1, 2, 5, 0, tzinfo=timezone.utc)
    add_message(runtime, "r1", "+12025550101", "sent")
    add_message(runtime, "r1", "+12025550102", "deferred", deferred_until=midnight)
    add_message(runtime, "r1", "+12025550103", "deferred", deferred_until=midnight + timedelta(days=1))
    add_message(runtime, "r1", "+12025550104", "retrying")

    run = campaigns.get(TENANT, campaign_id)["current_run"]

    assert run["deferred"] == 2
    assert run["deferred_until"] == midnight


def test_deferred_of_other_tenant_ignored(runtime, campaigns, campaign_id):
    add_run(runtime, campaign_id, "r1", "sending", recipients=1)
    runtime.db.messages.insert_one({"_id": "r1:x", "tenant_id": "OTHER", "run_id": "r1", "status": "deferred"})

    assert campaigns.get(TENANT, campaign_id)["current_run"]["deferred"] == 0


def test_finished_run_no_deferred(runtime, campaigns, campaign_id):
    add_run(runtime, campaign_id, "r1", "completed", recipients=1, sent=1, done=1)

    assert "deferred" not in campaigns.get(TENANT, campaign_id)["current_run"]


# ------------------------------------------------------------------ run report


def test_report_splits_skipped_texts(runtime, campaigns, campaign_id):
    """Texts Twilio refused count apart from those it accepted and then reported undeliverable."""
    add_run(runtime, campaign_id, "r1", "completed", recipients=4, sent=3, skipped=1, undeliverable=2, done=4)
    runtime.db.run_pages.insert_one({"_id": "r1:0", "tenant_id": TENANT, "run_id": "r1", "page_no": 0,
                                     "skipped": [{"member_id": "9", "raw": "", "e164": None, "reason": "no number"}]})
    sent_at = runtime.clock.now()
    add_message(runtime, "r1", "+12025550101", "skipped", reason="not a mobile number", error_code=21614)
    add_message(runtime, "r1", "+12025550102", "skipped", reason="unknown handset", error_code=30005, sent_at=sent_at)
    add_message(runtime, "r1", "+12025550103", "skipped", reason="unknown handset", error_code=30005, sent_at=sent_at)
    add_message(runtime, "r1", "+12025550104", "delivered", sent_at=sent_at)

    report = campaigns.run_report(TENANT, "r1")

    assert report["skipped_total"] == 1
    assert report["refused_by_reason"] == {"not a mobile number": 1}
    assert report["undeliverable_by_reason"] == {"unknown handset": 2}
