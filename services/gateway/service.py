"""Campaigns and runs as staff manage them; every query is scoped to one tenant."""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from datetime import datetime

from pymongo import ReturnDocument
from pymongo.database import Database

from libs.common.broker import PublishError, tenant_jobs_queue
from libs.common.progress import ACTIVE_RUN_STATUSES, RUN_COUNTERS, RunProgress
from services.gateway.errors import Conflict, InvalidInput, NotFound

logger = logging.getLogger(__name__)

COUNT_NAMES = RUN_COUNTERS
MESSAGE_FIELDS = ("member_id", "to", "status", "sid", "sent_at", "error_code", "reason", "imis_log")


class CampaignService:
    """Create campaigns, start runs and steer them; reads and writes filter on the tenant."""

    def __init__(self, db: Database, *, broker, clock):
        self._db = db
        self._broker = broker
        self._clock = clock
        self._progress = RunProgress(db, clock)

    def create(self, tenant_id: str, fields: dict, username: str) -> dict:
        now = self._clock.now()
        campaign = dict(fields, _id=uuid.uuid4().hex, tenant_id=tenant_id, status="draft", created_at=now,
                        updated_at=now, created_by=username, current_run_id=None)
        self._db.campaigns.insert_one(campaign)
        logger.info("campaign %s created", campaign["_id"])
        return self.get(tenant_id, campaign["_id"])

    def list(self, tenant_id: str, limit: int = 200) -> list[dict]:
        found = self._db.campaigns.find({"tenant_id": tenant_id}).sort("created_at", -1).limit(limit)
        return [self._with_counts(campaign) for campaign in found]

    def get(self, tenant_id: str, campaign_id: str) -> dict:
        """Return the campaign with its counts; a current run under way also carries `deferred` and `deferred_until`."""
        campaign = self._with_counts(self._campaign(tenant_id, campaign_id))
        run = campaign["current_run"]
        if run is not None and run["status"] in ACTIVE_RUN_STATUSES:
            campaign["current_run"] = dict(run, **self._deferred(tenant_id, run["_id"]))
        return campaign

    def send(self, tenant_id: str, campaign_id: str, send_at: datetime | None, *, resend: bool = False) -> dict:
        """Create a run due now or at `send_at`; raise Conflict while another run is active.

        Sending a campaign whose earlier runs texted anyone texts everyone in its query
        again, so it needs `resend`. Without it, Conflict is raised with the number of
        texts already sent. A campaign whose runs sent nothing, such as one cancelled
        before its send time, is sent without `resend`.
        """
        campaign = self._campaign(tenant_id, campaign_id)
        now = self._clock.now()
        if campaign.get("schedule_active"):
            raise Conflict("this campaign repeats on a schedule: stop the schedule first (Stop repeating), "
                           "then send it once", {"next_occurrence": _iso(campaign.get("next_occurrence"))})
        if not resend and campaign.get("status") not in ("sending", "paused", "scheduled"):
            self._check_nothing_sent(campaign)
        if send_at is not None and send_at <= now:
            raise InvalidInput("send_at is in the past: pick a later time or leave it out to send now",
                               {"send_at": send_at.isoformat()})
        run_id = uuid.uuid4().hex
        claimed = self._db.campaigns.find_one_and_update(
            {"_id": campaign_id, "tenant_id": tenant_id, "current_run_id": campaign.get("current_run_id"),
             "status": {"$nin": ["sending", "paused", "scheduled"]}},
            {"$set": {"current_run_id": run_id, "status": "scheduled" if send_at else "sending", "error": None,
                      "updated_at": now}},
        )
        if claimed is None:
            raise Conflict("this campaign is already scheduled or sending: wait for it to finish, or cancel it first")
        self._db.runs.insert_one({
            "_id": run_id, "tenant_id": tenant_id, "campaign_id": campaign_id, "status": "due",
            "due_at": send_at or now, "created_at": now, "counts": {name: 0 for name in COUNT_NAMES + ("done",)},
            "expanded": False,
        })
        logger.info("run %s due at %s", run_id, (send_at or now).isoformat())
        return self.get(tenant_id, campaign_id)

    def _check_nothing_sent(self, campaign: dict) -> None:
        """Raise Conflict when an earlier run of the campaign sent a text, or may be sending one now."""
        runs = list(self._db.runs.find({"tenant_id": campaign["tenant_id"], "campaign_id": campaign["_id"]},
                                       {"counts.sent": 1}))
        sent = sum(run.get("counts", {}).get("sent", 0) for run in runs)
        in_flight = self._db.messages.find_one({"run_id": campaign.get("current_run_id"),
                                                "tenant_id": campaign["tenant_id"], "status": "sending"}, {"_id": 1})
        if sent == 0 and in_flight is None:
            return
        raise Conflict(f"this campaign already sent {sent:,} texts, and sending it again texts everyone its query "
                       "returns, those members included: confirm with Send again in Text Manager, or send "
                       'with {"resend": true}', {"previous_run_id": campaign.get("current_run_id"), "sent": sent})

    def pause(self, tenant_id: str, campaign_id: str) -> dict:
        """Stop sending between texts; texts that arrive meanwhile wait as `paused`."""
        run = self._current_run(self._campaign(tenant_id, campaign_id))
        if self._db.runs.find_one_and_update({"_id": run["_id"], "status": {"$in": ["expanding", "sending"]}},
                                             {"$set": {"status": "paused", "paused_reason": "paused by staff"}}) is None:
            raise Conflict(f"the campaign is {run['status']}, so it cannot be paused")
        self._set_campaign_status(tenant_id, campaign_id, "paused")
        return self.get(tenant_id, campaign_id)

    def resume(self, tenant_id: str, campaign_id: str) -> dict:
        """Continue where sending stopped: publish again every text set aside while paused."""
        run = self._current_run(self._campaign(tenant_id, campaign_id))
        status = "sending" if run.get("expanded") else "expanding"
        if self._db.runs.find_one_and_update({"_id": run["_id"], "status": "paused"},
                                             {"$set": {"status": status}, "$unset": {"paused_reason": ""}}) is None:
            raise Conflict(f"the campaign is {run['status']}, not paused")
        self._set_campaign_status(tenant_id, campaign_id, "sending")
        self._republish_parked(run["_id"], "paused")
        return self.get(tenant_id, campaign_id)

    def cancel(self, tenant_id: str, campaign_id: str) -> dict:
        """Stop the run for good; texts not yet sent are marked cancelled.

        A recurring campaign goes back to `scheduled`: its schedule goes on until staff
        stop it.
        """
        campaign = self._campaign(tenant_id, campaign_id)
        run = self._current_run(campaign)
        if self._db.runs.find_one_and_update({"_id": run["_id"], "status": {"$in": list(ACTIVE_RUN_STATUSES)}},
                                             {"$set": {"status": "cancelled", "cancelled_at": self._clock.now()}}) is None:
            raise Conflict(_with_schedule_hint(f"the campaign's last run is {run['status']}, so there is nothing "
                                               "to cancel", campaign))
        now = self._clock.now()
        if self._db.campaigns.find_one_and_update({"_id": campaign_id, "tenant_id": tenant_id, "schedule_active": True},
                                                  {"$set": {"status": "scheduled", "updated_at": now}}) is None:
            self._set_campaign_status(tenant_id, campaign_id, "cancelled")
        for status in ("paused", "deferred", "retrying"):
            while True:
                message = self._db.messages.find_one_and_update(
                    {"run_id": run["_id"], "tenant_id": tenant_id, "status": status},
                    {"$set": {"status": "cancelled", "reason": "campaign cancelled"}})
                if message is None:
                    break
                self._progress.count_final(run["_id"], "cancelled")
        return self.get(tenant_id, campaign_id)

    def run_report(self, tenant_id: str, run_id: str, *, offset: int = 0, limit: int = 100) -> dict:
        """Return a run with its skipped rows and their reasons, a page at a time; raise NotFound.

        The IQA rows set aside before sending are listed one by one. Texts that ended
        `skipped` are counted by reason: `refused_by_reason` for those whose create call
        Twilio refused, and `undeliverable_by_reason` for those Twilio accepted and then
        reported undeliverable.
        """
        run = self._db.runs.find_one({"_id": run_id, "tenant_id": tenant_id})
        if run is None:
            raise NotFound(f"no run {run_id} in this organisation")
        skipped = []
        for page in self._db.run_pages.find({"run_id": run_id, "tenant_id": tenant_id}, {"skipped": 1}).sort("page_no", 1):
            skipped.extend(page.get("skipped", []))
        refused, undeliverable = Counter(), Counter()
        for message in self._db.messages.find({"run_id": run_id, "tenant_id": tenant_id, "status": "skipped"},
                                              {"reason": 1, "sent_at": 1}):
            (undeliverable if message.get("sent_at") else refused)[message.get("reason") or "no reason recorded"] += 1
        return {"run": run, "skipped": skipped[offset:offset + limit], "skipped_total": len(skipped),
                "refused_by_reason": dict(refused), "undeliverable_by_reason": dict(undeliverable)}

    def run_messages(self, tenant_id: str, run_id: str, *, offset: int = 0, limit: int = 100) -> dict:
        """Return a page of a run's texts, ordered by number, and how many there are; raise NotFound.

        Each text carries `imis_log`, whether and how iMIS recorded it: the stored outcome,
        `{"status": "pending"}` for a sent text the iMIS writer has not logged yet, or
        None for a text that was not sent.
        """
        if self._db.runs.find_one({"_id": run_id, "tenant_id": tenant_id}, {"_id": 1}) is None:
            raise NotFound(f"no run {run_id} in this organisation")
        query = {"run_id": run_id, "tenant_id": tenant_id}
        # Message ids do not follow the number, so the order comes from the number itself.
        found = self._db.messages.find(query, dict.fromkeys(MESSAGE_FIELDS, 1)).sort("to", 1).skip(offset).limit(limit)
        return {"messages": [_with_imis_log(message) for message in found],
                "total": self._db.messages.count_documents(query)}

    def _deferred(self, tenant_id: str, run_id: str) -> dict:
        """Return how many of the run's texts wait for the daily limit, and the earliest time one is released.

        The sender stores such a text as `deferred` with `deferred_until`, the tenant's
        next midnight. Raising the limit moves `deferred_until` to the past, so the
        scheduler sends those texts at its next tick.
        """
        query = {"run_id": run_id, "tenant_id": tenant_id, "status": "deferred"}
        count = self._db.messages.count_documents(query)
        first = None
        if count:
            first = next(iter(self._db.messages.find(query, {"deferred_until": 1}).sort("deferred_until", 1)
                              .limit(1)), {}).get("deferred_until")
        return {"deferred": count, "deferred_until": first}

    def _republish_parked(self, run_id: str, status: str) -> None:
        """Publish each text set aside with `status` again, moving it to `retrying` first.

        The move is one update per text, so a sender that parks a text while the run is
        being resumed, and publishes it itself, does not publish it a second time. A text
        whose publish fails gets a `retry_at`, so that the scheduler publishes it later.
        """
        parked = [document["_id"] for document in self._db.messages.find({"run_id": run_id, "status": status},
                                                                         {"_id": 1})]
        for message_id in parked:
            message = self._db.messages.find_one_and_update({"_id": message_id, "status": status},
                                                            {"$set": {"status": "retrying"}})
            if message is None:
                continue
            try:
                self._broker.publish(tenant_jobs_queue(message["tenant_id"]), message["job"],
                                     message_id=message["_id"])
            except PublishError:
                logger.warning("publishing the paused text %s failed; the scheduler publishes it later",
                               message["_id"], exc_info=True)
                self._db.messages.update_one({"_id": message["_id"], "status": "retrying"},
                                             {"$set": {"retry_at": self._clock.now()}})

    def _set_campaign_status(self, tenant_id: str, campaign_id: str, status: str) -> None:
        self._db.campaigns.update_one({"_id": campaign_id, "tenant_id": tenant_id},
                                      {"$set": {"status": status, "updated_at": self._clock.now()}})

    def _campaign(self, tenant_id: str, campaign_id: str) -> dict:
        campaign = self._db.campaigns.find_one({"_id": campaign_id, "tenant_id": tenant_id})
        if campaign is None:
            raise NotFound(f"no campaign {campaign_id} in this organisation")
        return campaign

    def _current_run(self, campaign: dict) -> dict:
        run = self._db.runs.find_one({"_id": campaign.get("current_run_id"), "tenant_id": campaign["tenant_id"]})
        if run is None:
            raise Conflict(_with_schedule_hint("the campaign has not been sent yet", campaign))
        return run

    def _with_counts(self, campaign: dict) -> dict:
        counts = {name: 0 for name in COUNT_NAMES}
        current = None
        for run in self._db.runs.find({"tenant_id": campaign["tenant_id"], "campaign_id": campaign["_id"]}):
            for name in COUNT_NAMES:
                counts[name] += run.get("counts", {}).get(name, 0)
            if run["_id"] == campaign.get("current_run_id"):
                current = run
        return dict(campaign, counts=counts, current_run=current)


def _with_schedule_hint(message: str, campaign: dict) -> str:
    """Return the message, telling how to stop the schedule when the campaign repeats."""
    if not campaign.get("schedule_active"):
        return message
    return (f"{message}: to stop its recurring schedule, use Stop repeating "
            f"(DELETE /api/campaigns/{campaign['_id']}/schedule)")


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _with_imis_log(message: dict) -> dict:
    if message.get("imis_log"):
        return message
    return dict(message, imis_log={"status": "pending"} if message.get("sent_at") else None)
