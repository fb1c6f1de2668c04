"""Message and run state changes shared by the sender, feedback, scheduler and gateway.

Each change is one atomic single-document update whose filter holds the expected
state, and the run counters move in the same step as the message they count, so a
message is counted once however often a step is repeated.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from pymongo import ReturnDocument
from pymongo.database import Database

from libs.common.broker import PublishError, tenant_jobs_queue

logger = logging.getLogger(__name__)

# The counters staff see on every run. Runs also count `done`, the messages with a final
# status. `recipients` are the texts to send, and each ends under one final counter:
# - `delivered` or `failed`;
# - `undeliverable`: Twilio accepted it, then reported error 30005 or 30006;
# - `opted_out`;
# - `cancelled`: its run stopped before it went out;
# - `skipped`: Twilio refused its create call with a skip code.
# `sent` counts the texts Twilio accepted. `skipped` also counts the IQA rows set aside
# before sending, which are not recipients.
RUN_COUNTERS = ("recipients", "sent", "delivered", "failed", "undeliverable", "opted_out", "cancelled", "skipped")
FINAL_STATUSES = ("delivered", "undelivered", "failed", "opted_out", "skipped", "cancelled")
PARKED_STATUSES = ("retrying", "paused", "deferred")
# Run statuses from creation until the run completes, fails or is cancelled.
ACTIVE_RUN_STATUSES = ("due", "publishing", "queued", "expanding", "sending", "paused")
RUN_PAUSABLE_STATUSES = ("expanding", "sending")
# The fields of a `tm.jobs` body; a message document stores all of them but `message_id`, its `_id`.
JOB_FIELDS = ("tenant_id", "campaign_id", "run_id", "message_id", "member_id", "to", "body", "segments", "encoding")

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
    "cancelled": "cancelled",
}
# The counter of a text that Twilio accepted and then reported undeliverable with a code of
# CALLBACK_SKIPS; its status is `skipped`, like a text Twilio refused, but it went out.
UNDELIVERABLE_COUNTER = "undeliverable"


class RunProgress:
    """Counters on runs, and the step that completes a run."""

    def __init__(self, db: Database, clock):
        self._runs = db.runs
        self._campaigns = db.campaigns
        self._tenants = db.tenants
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

    def count_final(self, run_id: str, final_status: str, *, counter: str | None = None) -> None:
        """Count a message that reached a final status, under FINAL_COUNTER's counter unless `counter` names one."""
        self.count(run_id, done=1, **{counter or FINAL_COUNTER[final_status]: 1})

    def pause(self, run_id: str, reason: str, *, notifier) -> bool:
        """Pause a sending run on a fault staff must fix, and e-mail the tenant one notice.

        Returns False when the run was not sending (already paused, finished or
        cancelled), in which case nothing is sent. Each pause gets its own notice key,
        so a run paused again after a resume sends a new notice, and a repeated call
        for the same pause does not.
        """
        run = self._runs.find_one_and_update(
            {"_id": run_id, "status": {"$in": list(RUN_PAUSABLE_STATUSES)}},
            {"$set": {"status": "paused", "paused_reason": reason, "paused_at": self._clock.now()},
             "$inc": {"pauses": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if run is None:
            return False
        logger.warning("run %s paused: %s", run_id, reason)
        self._campaigns.update_one(
            {"_id": run["campaign_id"], "tenant_id": run["tenant_id"], "status": "sending"},
            {"$set": {"status": "paused", "updated_at": self._clock.now()}},
        )
        self._notify_pause(run, reason, notifier)
        return True

    def _notify_pause(self, run: dict, reason: str, notifier) -> None:
        if notifier is None:
            logger.warning("no notifier configured, so no e-mail tells staff that run %s paused", run["_id"])
            return
        campaign = self._campaigns.find_one({"_id": run["campaign_id"], "tenant_id": run["tenant_id"]}) or {}
        tenant = self._tenants.find_one({"_id": run["tenant_id"]}, {"default_email": 1}) or {}
        notifier.notify(
            tenant_id=run["tenant_id"], recipients=[tenant.get("default_email", ""), campaign.get("email", "")],
            subject=f"Text Manager paused the campaign {campaign.get('name', run['campaign_id'])!r}",
            text=f"Sending stopped because {reason}. Fix the cause, then resume the campaign in Text Manager.",
            dedupe_key=f"pause:{run['_id']}:{run['pauses']}",
        )

    def complete_if_done(self, run: dict) -> bool:
        """Mark the run completed when expansion ended and every message is final.

        The campaign becomes `completed`, or `scheduled` while its recurring schedule
        has occurrences to come.
        """
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
        current = {"_id": run["campaign_id"], "tenant_id": run["tenant_id"], "current_run_id": run["_id"],
                   "status": {"$in": ["sending", "paused"]}}
        now = self._clock.now()
        if self._campaigns.find_one_and_update({**current, "schedule_active": True},
                                               {"$set": {"status": "scheduled", "updated_at": now}}) is None:
            self._campaigns.update_one({**current, "schedule_active": {"$ne": True}},
                                       {"$set": {"status": "completed", "updated_at": now}})
        return True


def apply_callback_status(db: Database, progress: RunProgress, *, tenant_id: str, message_id: str,
                          status: str, error_code: int | None, at: datetime, sid: str | None = None,
                          reason: str | None = None) -> str | None:
    """Move a message forward to a callback's status; return the new status or None.

    A callback for a lower or equal rank, or for a message already final, changes
    nothing, so repeated and out-of-order callbacks are harmless. With `sid`, a
    callback about an earlier attempt of the message (a SID in `previous_sids`)
    changes nothing either.
    """
    rank = STATUS_RANK.get(status)
    if rank is None:
        return None
    lower = [name for name, value in STATUS_RANK.items() if value < rank]
    update = {"$set": {"status": status, "status_at": at}}
    if error_code:
        update["$set"]["error_code"] = error_code
    if reason:
        update["$set"]["reason"] = reason
    query = {"_id": message_id, "tenant_id": tenant_id, "status": {"$in": lower}}
    if sid:
        query["previous_sids"] = {"$ne": sid}
    before = db.messages.find_one_and_update(query, update)
    if before is None:
        return None
    if status in FINAL_COUNTER:
        progress.count_final(before["run_id"], status)
    return status


# A `deferred_until` that has always passed: the scheduler publishes such texts at its next tick.
DUE_AT_ONCE = datetime(1970, 1, 1, tzinfo=timezone.utc)


def wake_deferred(db: Database, tenant_id: str) -> int:
    """Make the tenant's texts held back by the daily allowance due now; return how many.

    Called when the allowance grows. The sender takes the allowance again for each
    text, so a text that still does not fit is deferred again, to the next midnight.
    """
    result = db.messages.update_many({"tenant_id": tenant_id, "status": "deferred"},
                                     {"$set": {"deferred_until": DUE_AT_ONCE}})
    return result.modified_count


def backoff_s(attempt: int, first_delay_s: float, *, cap_s: float = 600.0, rng=random) -> float:
    """Return the wait before retry number `attempt` (1 for the first): exponential with jitter.

    The nominal wait doubles with each attempt from first_delay_s up to cap_s, and the
    result is drawn uniformly between half the nominal wait and the whole of it, so
    texts that failed together come back spread out.
    """
    nominal = min(cap_s, first_delay_s * 2 ** (attempt - 1))
    return rng.uniform(nominal / 2, nominal)


def job_of(message: dict) -> dict | None:
    """Return the `tm.jobs` body rebuilt from a message document, or None when a field is missing."""
    job = {key: message.get(key) for key in JOB_FIELDS if key != "message_id"}
    job["message_id"] = message["_id"]
    if any(value is None for value in job.values()):
        return None
    return job


@dataclass(frozen=True)
class CallbackRetry:
    """A delivery error worth new attempts: how many, the first wait, and the reason staff see."""

    new_attempts: int
    first_delay_s: float
    reason: str


# Delivery errors that Twilio reports in status callbacks, from Twilio's error dictionary
# (https://www.twilio.com/docs/api/errors), and what the message does next.
CALLBACK_RETRIES = {
    30001: CallbackRetry(3, 60, "Twilio's queue for the sender overflowed"),
    30003: CallbackRetry(2, 120, "the handset was unreachable"),
    30008: CallbackRetry(2, 30, "unknown delivery error"),
    30036: CallbackRetry(3, 60, "the validity period expired in Twilio's queue"),
    30410: CallbackRetry(3, 60, "the carrier timed out"),
}
CALLBACK_SKIPS = {30005: "unknown handset", 30006: "landline or unreachable carrier"}
CALLBACK_PAUSES = {
    30032: "Twilio reports that the toll-free sender number is not verified: finish its verification with Twilio",
}
SPAM_FILTERED = 30007
# "A rising 30007 rate": the run pauses once carriers filtered at least SPAM_MIN_TEXTS of its
# texts and at least SPAM_MIN_SHARE of the texts with a final status so far. A lone
# filtered text does not pause a campaign, and a carrier that starts filtering one does.
SPAM_MIN_TEXTS = 5
SPAM_MIN_SHARE = 0.02
# Codes after which the sender sends from the number at a lower rate for a while.
SLOW_DOWN_CODES = (21611, 30001, 30036)
# Extra time before the scheduler publishes a callback retry whose own publish was lost.
REPUBLISH_GRACE_S = 60.0

OPEN_STATUSES = tuple(name for name, rank in STATUS_RANK.items() if rank < STATUS_RANK["delivered"])


class CallbackOutcomes:
    """Act on the error code of a failed or undelivered status callback.

    A code in CALLBACK_RETRIES gives the text a bounded number of new attempts: the
    message goes back to `retrying` and its job is published through the job queue's
    delay queues, after a wait with jitter. CALLBACK_SKIPS end it as `skipped` with the
    reason; CALLBACK_PAUSES and a rising share of spam filtering pause the run with one
    e-mail notice. Other callbacks, and codes past their retries, take their status as
    it is. Callbacks about an earlier attempt (a SID in `previous_sids`) change nothing.
    """

    def __init__(self, db: Database, progress: RunProgress, *, broker, notifier, clock, rng=random):
        self._db = db
        self._progress = progress
        self._broker = broker
        self._notifier = notifier
        self._clock = clock
        self._rng = rng

    def apply(self, *, tenant_id: str, message_id: str, sid: str | None, status: str, error_code: int | None,
              at: datetime) -> str | None:
        """Apply one status callback; return the message's new status, or None when nothing changed."""
        message = self._db.messages.find_one({"_id": message_id, "tenant_id": tenant_id})
        if message is None:
            return None
        if sid and sid in message.get("previous_sids", []):
            logger.info("callback %s about an earlier attempt %s changes nothing", status, sid)
            return None
        reason = None
        if status in ("undelivered", "failed") and error_code:
            outcome, reason = self._on_error(message, sid, error_code, at)
            if outcome is not None:
                return outcome
        return apply_callback_status(self._db, self._progress, tenant_id=tenant_id, message_id=message_id,
                                     status=status, error_code=error_code, at=at, sid=sid, reason=reason)

    def _on_error(self, message: dict, sid: str | None, code: int, at: datetime) -> tuple[str | None, str | None]:
        """Return (new status, None) when the code was acted on, else (None, reason for the final status)."""
        if code in CALLBACK_RETRIES:
            return self._retry(message, sid, code, at)
        if code in CALLBACK_SKIPS:
            return self._skip(message, sid, code, at), None
        if code in CALLBACK_PAUSES:
            return self._pause(message, sid, code, at), None
        if code == SPAM_FILTERED:
            self._count_spam(message, sid, at)
            return "undelivered", None
        return None, None

    def _retry(self, message: dict, sid: str | None, code: int, at: datetime) -> tuple[str | None, str | None]:
        rule = CALLBACK_RETRIES[code]
        done = message.get("callback_retries", 0)
        if done >= rule.new_attempts:
            return None, f"{rule.reason}; gave up after {done + 1} attempts"
        job = job_of(message)
        if job is None:
            logger.warning("message %s lacks job fields, so error %s ends it without a new attempt",
                           message["_id"], code)
            return None, rule.reason
        delay = backoff_s(done + 1, rule.first_delay_s, rng=self._rng)
        moved = self._move(message, sid, {
            "$set": {"status": "retrying", "job": job, "error_code": code, "status_at": at,
                     "reason": f"{rule.reason}; new attempt {done + 1} of {rule.new_attempts}",
                     "retry_at": at + timedelta(seconds=delay + REPUBLISH_GRACE_S)},
            "$inc": {"callback_retries": 1},
        }, extra_filter={"$or": [{"callback_retries": {"$exists": False}},
                                 {"callback_retries": {"$lt": rule.new_attempts}}]})
        if not moved:
            return None, None
        self._publish_retry(job, delay)
        return "retrying", None

    def _publish_retry(self, job: dict, delay_s: float) -> None:
        try:
            self._broker.publish_delayed(tenant_jobs_queue(job["tenant_id"]), job, delay_s=delay_s,
                                         message_id=job["message_id"])
        except PublishError:
            logger.warning("publishing a new attempt of %s failed; the scheduler publishes it once its "
                           "retry_at passes", job["message_id"], exc_info=True)
            return
        self._db.messages.update_one({"_id": job["message_id"], "status": "retrying"}, {"$unset": {"retry_at": ""}})
        logger.info("new attempt of %s in about %.0f s", job["message_id"], delay_s)

    def _skip(self, message: dict, sid: str | None, code: int, at: datetime) -> str | None:
        reason = CALLBACK_SKIPS[code]
        if not self._move(message, sid, {"$set": {"status": "skipped", "reason": reason, "error_code": code,
                                                  "status_at": at}}, keep_sid=True):
            return None
        self._progress.count_final(message["run_id"], "skipped", counter=UNDELIVERABLE_COUNTER)
        return "skipped"

    def _pause(self, message: dict, sid: str | None, code: int, at: datetime) -> str | None:
        """Set the text aside as `paused`, so that resuming sends it again, and pause its run."""
        reason = CALLBACK_PAUSES[code]
        job = job_of(message)
        if job is None:
            moved = apply_callback_status(self._db, self._progress, tenant_id=message["tenant_id"],
                                          message_id=message["_id"], status="undelivered", error_code=code,
                                          at=at, sid=sid, reason=reason)
        elif self._move(message, sid, {"$set": {"status": "paused", "job": job, "reason": reason,
                                                "error_code": code, "status_at": at}}):
            moved = "paused"
        else:
            moved = None
        if moved:
            self._progress.pause(message["run_id"], reason, notifier=self._notifier)
        return moved

    def _count_spam(self, message: dict, sid: str | None, at: datetime) -> None:
        applied = apply_callback_status(self._db, self._progress, tenant_id=message["tenant_id"],
                                        message_id=message["_id"], status="undelivered", error_code=SPAM_FILTERED,
                                        at=at, sid=sid, reason="filtered by the carrier as spam")
        if applied is None:
            return
        run = self._db.runs.find_one_and_update({"_id": message["run_id"]}, {"$inc": {"spam_filtered": 1}},
                                                return_document=ReturnDocument.AFTER)
        if run is None:
            return
        filtered, final = run["spam_filtered"], run.get("counts", {}).get("done", 0)
        if filtered >= SPAM_MIN_TEXTS and filtered >= SPAM_MIN_SHARE * final:
            reason = (f"carriers filtered {filtered} of its {final} finished texts as spam: "
                      "review the text and the sender's registration")
            self._progress.pause(run["_id"], reason, notifier=self._notifier)

    def _move(self, message: dict, sid: str | None, update: dict, *, keep_sid: bool = False,
              extra_filter: dict | None = None) -> bool:
        """Move an open message (not final, not parked) in one update; return False when it was not open.

        Unless keep_sid, the attempt's SID moves to `previous_sids`, so that its later
        callbacks change nothing.
        """
        query = {"_id": message["_id"], "tenant_id": message["tenant_id"], "status": {"$in": list(OPEN_STATUSES)}}
        old_sid = sid or message.get("sid")
        if old_sid:
            query["previous_sids"] = {"$ne": old_sid}
        query.update(extra_filter or {})
        if not keep_sid:
            update = dict(update, **{"$unset": {"sid": "", "claim_token": "", "claim_until": "",
                                                "call_started_at": ""}})
            if old_sid:
                update["$push"] = {"previous_sids": old_sid}
        return self._db.messages.find_one_and_update(query, update) is not None
