"""Publish each due campaign run to the recipients service, once."""

from __future__ import annotations

import logging
from datetime import timedelta

from pymongo import ReturnDocument
from pymongo.database import Database

from libs.common.broker import QUEUE_JOBS, QUEUE_RUNS, PublishError
from libs.common.logs import log_context

logger = logging.getLogger(__name__)


class Scheduler:
    """Find due runs and deferred texts, and publish them.

    A run is claimed (`due -> publishing`, with a lease) before it is published and
    marked `queued` after the broker confirms. If the process dies in between, the
    lease lapses and the run is published again; the recipients service ignores a run
    that has moved past `queued`, so the run is expanded once.
    """

    def __init__(self, db: Database, *, broker, clock, lease_s: float = 30.0):
        self._db = db
        self._broker = broker
        self._clock = clock
        self._lease = timedelta(seconds=lease_s)

    def tick(self, limit: int = 100) -> int:
        """Publish up to `limit` due runs and release deferred texts; return runs published."""
        published = 0
        while published < limit:
            run = self._claim_due_run()
            if run is None:
                break
            if self._publish(run):
                published += 1
        self._release_deferred()
        return published

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
            self._db.runs.update_one({"_id": run["_id"], "status": "publishing"},
                                     {"$set": {"status": "queued", "queued_at": self._clock.now()}})
            self._db.campaigns.update_one({"_id": run["campaign_id"], "tenant_id": run["tenant_id"],
                                           "status": "scheduled"}, {"$set": {"status": "sending"}})
            logger.info("run published")
            return True

    def _release_deferred(self) -> None:
        """Publish again texts held back by the daily allowance once their day is over."""
        now = self._clock.now()
        while True:
            message = self._db.messages.find_one_and_update(
                {"status": "deferred", "deferred_until": {"$lte": now}},
                {"$set": {"status": "retrying"}},
            )
            if message is None:
                return
            try:
                self._broker.publish(QUEUE_JOBS, message["job"], message_id=message["_id"])
            except PublishError:
                self._db.messages.update_one({"_id": message["_id"], "status": "retrying"},
                                             {"$set": {"status": "deferred"}})
                logger.warning("publishing a deferred text failed; it is tried at the next tick", exc_info=True)
                return
