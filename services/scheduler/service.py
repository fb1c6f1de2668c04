"""Publish each due campaign run to the recipients service, once."""

from __future__ import annotations

import logging
from datetime import timedelta

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from libs.common.broker import QUEUE_JOBS, QUEUE_RUNS, PublishError, tenant_jobs_queue
from libs.common.logs import log_context
from libs.common.progress import ACTIVE_RUN_STATUSES, RUN_COUNTERS
from services.scheduler.recurrence import Rule, RuleError
from services.scheduler.text_logs import UnloggedTexts

logger = logging.getLogger(__name__)

# An occurrence found later than this (the scheduler was down) is recorded as missed
# rather than sent late, so members do not get a morning text in the evening.
MISSED_AFTER = timedelta(hours=1)


class Scheduler:
    """Find due runs and deferred texts, and publish them.

    A run is claimed (`due -> publishing`, with a lease) before it is published and
    marked `queued` after the broker confirms. If the process dies in between, the
    lease lapses and the run is published again. The recipients service ignores a run
    that has moved past `queued`, so the run is expanded once.
    """

    def __init__(self, db: Database, *, broker, clock, lease_s: float = 30.0):
        self._db = db
        self._broker = broker
        self._clock = clock
        self._lease = timedelta(seconds=lease_s)
        self._unlogged = UnloggedTexts(db, broker=broker, clock=clock)

    def tick(self, limit: int = 100) -> int:
        """Publish up to `limit` due runs, release deferred texts and request lost iMIS logs; return runs published."""
        self._create_recurring_runs()
        published = 0
        while published < limit:
            run = self._claim_due_run()
            if run is None:
                break
            if self._publish(run):
                published += 1
        self._release_deferred()
        self._unlogged.sweep_if_due()
        return published

    def _create_recurring_runs(self) -> None:
        """Create one run per due occurrence of each recurring campaign.

        The run id is the campaign id and the occurrence time, so creating it again after
        a crash is a duplicate key, and the campaign's next occurrence moves on only by
        compare-and-set from the occurrence just handled.
        """
        now = self._clock.now()
        due = self._db.campaigns.find({"schedule_active": True, "next_occurrence": {"$lte": now}})
        for campaign in due:
            with log_context(tenant_id=campaign["tenant_id"], campaign_id=campaign["_id"]):
                self._create_occurrence(campaign, now)

    def _create_occurrence(self, campaign: dict, now) -> None:
        occurrence = campaign["next_occurrence"]
        run_id = f"{campaign['_id']}-{occurrence:%Y%m%dT%H%M%SZ}"
        try:
            following = Rule.from_dict(campaign["schedule"]).next_after(occurrence)
        except RuleError as error:
            logger.error("recurring schedule is invalid and stays stopped: %s", error)
            self._db.campaigns.update_one({"_id": campaign["_id"]}, {"$set": {"schedule_active": False,
                                                                             "error": f"invalid schedule: {error}"}})
            return
        changes = {"next_occurrence": following}
        unfinished = self._unfinished_run(campaign)
        if now - occurrence > MISSED_AFTER:
            logger.warning("occurrence %s was missed while the scheduler was down; not sending it late", occurrence)
            self._db.campaigns.update_one({"_id": campaign["_id"]}, {"$push": {"missed_occurrences": occurrence}})
        elif unfinished is not None:
            # Members would get two texts at once, and the runs would share the day's allowance.
            reason = (f"the run of {unfinished['due_at']:%Y-%m-%d %H:%M} UTC was still {unfinished['status']}: "
                      "space the occurrences further apart, or send less per occurrence")
            logger.warning("occurrence %s skipped: %s", occurrence, reason)
            self._db.campaigns.update_one({"_id": campaign["_id"]},
                                          {"$push": {"skipped_occurrences": {"at": occurrence, "reason": reason}}})
        else:
            self._insert_run(campaign, run_id, occurrence)
            changes["current_run_id"] = run_id
        if following is None:
            changes["schedule_active"] = False
        self._db.campaigns.update_one({"_id": campaign["_id"], "next_occurrence": occurrence}, {"$set": changes})

    def _unfinished_run(self, campaign: dict) -> dict | None:
        """Return the campaign's current run if it has not finished, else None."""
        run_id = campaign.get("current_run_id")
        if not run_id:
            return None
        return self._db.runs.find_one({"_id": run_id, "tenant_id": campaign["tenant_id"],
                                       "status": {"$in": list(ACTIVE_RUN_STATUSES)}},
                                      {"status": 1, "due_at": 1})

    def _insert_run(self, campaign: dict, run_id: str, occurrence) -> None:
        try:
            self._db.runs.insert_one({
                "_id": run_id, "tenant_id": campaign["tenant_id"], "campaign_id": campaign["_id"], "status": "due",
                "due_at": occurrence, "created_at": self._clock.now(), "expanded": False, "recurring": True,
                "counts": {name: 0 for name in RUN_COUNTERS + ("done",)},
            })
            logger.info("run %s created for the occurrence at %s", run_id, occurrence.isoformat())
        except DuplicateKeyError:
            logger.info("run %s already exists", run_id)

    def _claim_due_run(self) -> dict | None:
        now = self._clock.now()
        claim = {"$set": {"status": "publishing", "lease_until": now + self._lease}}
        run = self._db.runs.find_one_and_update({"status": "due", "due_at": {"$lte": now}}, claim,
                                                return_document=ReturnDocument.AFTER)
        if run is None:
            run = self._db.runs.find_one_and_update({"status": "publishing", "lease_until": {"$lt": now}}, claim,
                                                    return_document=ReturnDocument.AFTER)
        return run

    def _publish(self, run: dict) -> bool:
        with log_context(tenant_id=run["tenant_id"], campaign_id=run["campaign_id"], run_id=run["_id"]):
            try:
                self._broker.publish(QUEUE_RUNS, {"tenant_id": run["tenant_id"], "campaign_id": run["campaign_id"],
                                                  "run_id": run["_id"]}, message_id=run["_id"])
            except PublishError:
                logger.warning("publishing the run failed; it is tried again when its lease lapses", exc_info=True)
                return False
            queued = self._db.runs.update_one({"_id": run["_id"], "status": "publishing"},
                                              {"$set": {"status": "queued", "queued_at": self._clock.now()}})
            if queued.modified_count:
                self._mark_campaign_sending(run)
            logger.info("run published")
            return True

    def _mark_campaign_sending(self, run: dict) -> None:
        """Show the campaign as sending; between occurrences, a recurring one shows its last run's outcome."""
        waiting = ["scheduled", "completed", "failed", "cancelled"] if run.get("recurring") else ["scheduled"]
        self._db.campaigns.update_one({"_id": run["campaign_id"], "tenant_id": run["tenant_id"],
                                       "current_run_id": run["_id"], "status": {"$in": waiting}},
                                      {"$set": {"status": "sending", "updated_at": self._clock.now()}})

    def _release_deferred(self) -> None:
        """Publish again texts whose wait is over.

        They are texts held back by the daily allowance until the tenant's midnight
        (`deferred`), and new attempts after a delivery error whose own publish was lost
        (`retrying` with a `retry_at` that passed).
        """
        now = self._clock.now()
        while True:
            message = self._db.messages.find_one_and_update(
                {"$or": [{"status": "deferred", "deferred_until": {"$lte": now}},
                         {"status": "retrying", "retry_at": {"$lte": now}}]},
                {"$set": {"status": "retrying"}, "$unset": {"deferred_until": "", "retry_at": ""}},
            )
            if message is None:
                return
            try:
                self._broker.publish(_jobs_queue(message["job"]), message["job"], message_id=message["_id"])
            except PublishError:
                self._put_back(message)
                logger.warning("publishing a deferred text failed; it is tried at the next tick", exc_info=True)
                return

    def _put_back(self, message: dict) -> None:
        wait_field = "deferred_until" if message["status"] == "deferred" else "retry_at"
        self._db.messages.update_one({"_id": message["_id"], "status": "retrying"},
                                     {"$set": {"status": message["status"], wait_field: message[wait_field]}})


def _jobs_queue(job: dict) -> str:
    """Return the tenant's job queue; a job without a tenant goes to `tm.jobs`, where the sender rejects it."""
    tenant_id = job.get("tenant_id")
    return tenant_jobs_queue(tenant_id) if tenant_id else QUEUE_JOBS
