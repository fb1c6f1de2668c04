"""Message and run state changes shared by the sender, feedback and gateway.

Each change is one atomic single-document update whose filter holds the expected
state, and the run counters move in the same step as the message they count, so a
message is counted once however often a step is repeated.
"""

from __future__ import annotations

import logging
from datetime import datetime

from pymongo import ReturnDocument
from pymongo.database import Database

logger = logging.getLogger(__name__)

FINAL_STATUSES = ("delivered", "undelivered", "failed", "opted_out", "skipped", "cancelled")
PARKED_STATUSES = ("retrying", "paused", "deferred")

# Callback statuses ranked by how far along a text is; a message never moves to a lower rank.
STATUS_RANK = {
    "sending": 0, "accepted": 1, "scheduled": 1, "queued": 1, "sent": 2,
    "delivered": 3, "undelivered": 3, "failed": 3, "read": 3, "canceled": 3, "opted_out": 3,
}

# The run counter each final status raises besides `done`.
FINAL_COUNTER = {
    "delivered": "delivered",
    "read": "delivered",
    "undelivered": "failed",
    "failed": "failed",
    "canceled": "failed",
    "opted_out": "opted_out",
    "skipped": "skipped",
    "cancelled": "skipped",
}


class RunProgress:
    """Counters on runs, and the step that completes a run."""

    def __init__(self, db: Database, clock):
        self._runs = db.runs
        self._campaigns = db.campaigns
        self._clock = clock

    def count(self, run_id: str, **increments: int) -> dict | None:
        """Raise run counters; complete the run when this made it done."""
        update = {"$inc": {f"counts.{name}": value for name, value in increments.items() if value}}
        if not update["$inc"]:
            return None
        run = self._runs.find_one_and_update({"_id": run_id}, update, return_document=ReturnDocument.AFTER)
        if run is not None and increments.get("done"):
            self.complete_if_done(run)
        return run

    def count_final(self, run_id: str, final_status: str) -> None:
        """Count a message that reached a final status."""
        self.count(run_id, done=1, **{FINAL_COUNTER[final_status]: 1})

    def complete_if_done(self, run: dict) -> bool:
        """Mark the run completed when expansion ended and every message is final."""
        counts = run.get("counts", {})
        if not run.get("expanded") or counts.get("done", 0) < counts.get("recipients", 0):
            return False
        completed = self._runs.find_one_and_update(
            {"_id": run["_id"], "status": {"$in": ["sending", "paused"]}, "expanded": True},
            {"$set": {"status": "completed", "completed_at": self._clock.now()}},
        )
        if completed is None:
            return False
        logger.info("run %s completed: %s", run["_id"], counts)
        self._campaigns.update_one(
            {"_id": run["campaign_id"], "tenant_id": run["tenant_id"], "current_run_id": run["_id"], "status": "sending"},
            {"$set": {"status": "completed", "updated_at": self._clock.now()}},
        )
        return True


def apply_callback_status(db: Database, progress: RunProgress, *, tenant_id: str, message_id: str,
                          status: str, error_code: int | None, at: datetime) -> str | None:
    """Move a message forward to a callback's status; return the new status or None.

    A callback for a lower or equal rank, or for a message already final, changes
    nothing, so repeated and out-of-order callbacks are harmless.
    """
    rank = STATUS_RANK.get(status)
    if rank is None:
        return None
    lower = [name for name, value in STATUS_RANK.items() if value < rank]
    update = {"$set": {"status": status, "status_at": at}}
    if error_code:
        update["$set"]["error_code"] = error_code
    before = db.messages.find_one_and_update(
        {"_id": message_id, "tenant_id": tenant_id, "status": {"$in": lower}}, update,
    )
    if before is None:
        return None
    if status in FINAL_COUNTER:
        progress.count_final(before["run_id"], status)
    return status
