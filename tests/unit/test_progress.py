"""Run counters, run completion, and callback statuses that only move forward."""

from __future__ import annotations

import pytest

from libs.common.progress import FINAL_STATUSES, RunProgress, apply_callback_status

COUNT_NAMES = ("recipients", "sent", "delivered", "failed", "undeliverable", "opted_out", "cancelled", "skipped",
               "done")


@pytest.fixture
def progress(runtime) -> RunProgress:
    return RunProgress(runtime.db, runtime.clock)


@pytest.fixture
def run(runtime) -> dict:
    """A run of 2 recipients, expanded and sending, and its campaign."""
    runtime.db.campaigns.insert_one({"_id": "c1", "tenant_id": "ACME", "status": "sending", "current_run_id": "r1"})
    document = {"_id": "r1", "tenant_id": "ACME", "campaign_id": "c1", "status": "sending", "expanded": True,
                "counts": {name: 0 for name in COUNT_NAMES}}
    document["counts"]["recipients"] = 2
    runtime.db.runs.insert_one(document)
    return document


def add_message(runtime, number: str, status: str = "sent") -> str:
    message_id = runtime.message_ids.build("r1", number)
    runtime.db.messages.insert_one({"_id": message_id, "tenant_id": "ACME", "run_id": "r1", "campaign_id": "c1",
                                    "to": number, "member_id": "10001", "status": status})
    return message_id


def counts_of(runtime) -> dict:
    return runtime.db.runs.find_one({"_id": "r1"})["counts"]


def test_count_raises_counters(runtime, progress, run):
    progress.count("r1", sent=2, failed=1)

    counts = counts_of(runtime)
    assert counts["sent"] == 2
    assert counts["failed"] == 1
    assert counts["done"] == 0


def test_count_of_nothing(runtime, progress, run):
    assert progress.count("r1", sent=0) is None
    assert counts_of(runtime)["sent"] == 0


@pytest.mark.parametrize("status, counter", [
    ("delivered", "delivered"),
    ("read", "delivered"),
    ("undelivered", "failed"),
    ("failed", "failed"),
    ("canceled", "failed"),
    ("opted_out", "opted_out"),
    ("skipped", "skipped"),
    ("cancelled", "cancelled"),
])
def test_count_final(runtime, progress, run, status, counter):
    progress.count_final("r1", status)

    counts = counts_of(runtime)
    assert counts[counter] == 1
    assert counts["done"] == 1


def test_count_final_other_counter(runtime, progress, run):
    progress.count_final("r1", "skipped", counter="undeliverable")

    counts = counts_of(runtime)
    assert counts["undeliverable"] == 1
    assert counts["skipped"] == 0
    assert counts["done"] == 1


def test_cancelled_not_skipped(runtime, progress, run):
    progress.count_final("r1", "cancelled")

    counts = counts_of(runtime)
    assert counts["cancelled"] == 1
    assert counts["skipped"] == 0


def test_counters_named_once():
    from libs.common.progress import FINAL_COUNTER, RUN_COUNTERS, UNDELIVERABLE_COUNTER

    assert set(FINAL_COUNTER.values()) | {UNDELIVERABLE_COUNTER} <= set(RUN_COUNTERS)
    assert set(RUN_COUNTERS) == set(COUNT_NAMES) - {"done"}


def test_run_completes_at_last_final(runtime, progress, run):
    progress.count_final("r1", "delivered")
    between = runtime.db.runs.find_one({"_id": "r1"})["status"]

    progress.count_final("r1", "failed")

    completed = runtime.db.runs.find_one({"_id": "r1"})
    assert between == "sending"
    assert completed["status"] == "completed"
    assert completed["completed_at"] == runtime.clock.now()
    assert runtime.db.campaigns.find_one({"_id": "c1"})["status"] == "completed"


def test_recurring_campaign_back_to_scheduled(runtime, progress, run):
    """A run of a campaign whose schedule goes on leaves the campaign waiting for the next occurrence."""
    runtime.db.campaigns.update_one({"_id": "c1"}, {"$set": {"schedule_active": True}})

    progress.count_final("r1", "delivered")
    progress.count_final("r1", "delivered")

    assert runtime.db.runs.find_one({"_id": "r1"})["status"] == "completed"
    assert runtime.db.campaigns.find_one({"_id": "c1"})["status"] == "scheduled"


def test_stopped_schedule_completes(runtime, progress, run):
    runtime.db.campaigns.update_one({"_id": "c1"}, {"$set": {"schedule_active": False}})

    progress.count_final("r1", "delivered")
    progress.count_final("r1", "delivered")

    assert runtime.db.campaigns.find_one({"_id": "c1"})["status"] == "completed"


def test_paused_campaign_completes(runtime, progress, run):
    """A run paused by an error whose last texts end anyway completes its paused campaign too."""
    runtime.db.runs.update_one({"_id": "r1"}, {"$set": {"status": "paused"}})
    runtime.db.campaigns.update_one({"_id": "c1"}, {"$set": {"status": "paused"}})

    progress.count_final("r1", "delivered")
    progress.count_final("r1", "failed")

    assert runtime.db.campaigns.find_one({"_id": "c1"})["status"] == "completed"


def test_unexpanded_run_stays_open(runtime, progress, run):
    """A run whose later IQA pages are not staged yet must not finish early."""
    runtime.db.runs.update_one({"_id": "r1"}, {"$set": {"expanded": False, "status": "expanding"}})

    progress.count_final("r1", "delivered")
    progress.count_final("r1", "delivered")

    assert runtime.db.runs.find_one({"_id": "r1"})["status"] == "expanding"
    assert runtime.db.campaigns.find_one({"_id": "c1"})["status"] == "sending"


def test_paused_run_completes(runtime, progress, run):
    runtime.db.runs.update_one({"_id": "r1"}, {"$set": {"status": "paused"}})

    progress.count_final("r1", "delivered")
    progress.count_final("r1", "delivered")

    assert runtime.db.runs.find_one({"_id": "r1"})["status"] == "completed"


def test_cancelled_run_stays_cancelled(runtime, progress, run):
    runtime.db.runs.update_one({"_id": "r1"}, {"$set": {"status": "cancelled"}})
    runtime.db.campaigns.update_one({"_id": "c1"}, {"$set": {"status": "cancelled"}})

    progress.count_final("r1", "cancelled")
    progress.count_final("r1", "cancelled")

    assert runtime.db.runs.find_one({"_id": "r1"})["status"] == "cancelled"
    assert runtime.db.campaigns.find_one({"_id": "c1"})["status"] == "cancelled"


def test_complete_once(runtime, progress, run):
    runtime.db.runs.update_one({"_id": "r1"}, {"$set": {"counts.done": 2}})
    document = runtime.db.runs.find_one({"_id": "r1"})

    first = progress.complete_if_done(document)
    second = progress.complete_if_done(document)

    assert first is True
    assert second is False


def test_older_run_leaves_campaign(runtime, progress, run):
    """Completing a run that is no longer the campaign's current one leaves the campaign alone."""
    runtime.db.campaigns.update_one({"_id": "c1"}, {"$set": {"current_run_id": "r2"}})

    progress.count_final("r1", "delivered")
    progress.count_final("r1", "delivered")

    assert runtime.db.runs.find_one({"_id": "r1"})["status"] == "completed"
    assert runtime.db.campaigns.find_one({"_id": "c1"})["status"] == "sending"


def test_callback_moves_forward(runtime, progress, run):
    message_id = add_message(runtime, "+12025550101")

    applied = apply_callback_status(runtime.db, progress, tenant_id="ACME", message_id=message_id,
                                    status="delivered", error_code=None, at=runtime.clock.now())

    assert applied == "delivered"
    assert runtime.db.messages.find_one({"_id": message_id})["status"] == "delivered"
    assert counts_of(runtime)["delivered"] == 1


@pytest.mark.parametrize("later", ["queued", "sent", "delivered", "undelivered", "failed"])
def test_final_status_kept(runtime, progress, run, later):
    message_id = add_message(runtime, "+12025550101")
    apply_callback_status(runtime.db, progress, tenant_id="ACME", message_id=message_id, status="delivered",
                          error_code=None, at=runtime.clock.now())

    applied = apply_callback_status(runtime.db, progress, tenant_id="ACME", message_id=message_id, status=later,
                                    error_code=30003, at=runtime.clock.now())

    assert applied is None
    assert runtime.db.messages.find_one({"_id": message_id})["status"] == "delivered"
    assert counts_of(runtime)["done"] == 1


def test_lower_status_ignored(runtime, progress, run):
    message_id = add_message(runtime, "+12025550101", status="sent")

    applied = apply_callback_status(runtime.db, progress, tenant_id="ACME", message_id=message_id, status="queued",
                                    error_code=None, at=runtime.clock.now())

    assert applied is None
    assert runtime.db.messages.find_one({"_id": message_id})["status"] == "sent"


def test_unknown_status_ignored(runtime, progress, run):
    message_id = add_message(runtime, "+12025550101")

    applied = apply_callback_status(runtime.db, progress, tenant_id="ACME", message_id=message_id,
                                    status="teleported", error_code=None, at=runtime.clock.now())

    assert applied is None
    assert runtime.db.messages.find_one({"_id": message_id})["status"] == "sent"


def test_error_code_stored(runtime, progress, run):
    message_id = add_message(runtime, "+12025550101")

    apply_callback_status(runtime.db, progress, tenant_id="ACME", message_id=message_id, status="undelivered",
                          error_code=30003, at=runtime.clock.now())

    message = runtime.db.messages.find_one({"_id": message_id})
    assert message["status"] == "undelivered"
    assert message["error_code"] == 30003
    assert counts_of(runtime)["failed"] == 1


def test_callback_of_other_tenant_ignored(runtime, progress, run):
    message_id = add_message(runtime, "+12025550101")

    applied = apply_callback_status(runtime.db, progress, tenant_id="OTHER", message_id=message_id,
                                    status="delivered", error_code=None, at=runtime.clock.now())

    assert applied is None
    assert runtime.db.messages.find_one({"_id": message_id})["status"] == "sent"


def test_final_statuses_have_counters():
    from libs.common.progress import FINAL_COUNTER

    assert [status for status in FINAL_STATUSES if status not in FINAL_COUNTER] == []
