"""Consume `tm.dead`: settle each text, run and iMIS write that a work queue gave up on.

A dead job leaves its text `failed` (or `sent`, when Twilio's message list shows it went
out) and counts it on its run, so the run can complete. A dead run message fails its
run and sends the failed-run notice. A dead iMIS write is kept in `failed_imis_writes`
with a notice to the tenant's administrator. Anything else is kept as it is in
`dead_letters`. Every step filters on the tenant and on the state it expects, so
handling the same dead letter twice changes nothing more, and a dead letter is
acknowledged only after its store writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import ConnectionFailure

from libs.common.broker import (
    DEATH_REASON_HEADER, ORIGINAL_QUEUE_HEADER, QUEUE_IMIS, QUEUE_JOBS, QUEUE_RUNS, Delivery, Retry,
    work_queue_of,
)
from libs.common.broker.base import attempt_of
from libs.common.logs import log_context
from libs.common.notices import notify_run_failed
from libs.common.progress import RunProgress
from libs.common.tenants import Tenant, TenantNotFound, TenantRepository
from services.scheduler.dead_jobs import DeadJobs
from services.scheduler.errors import TryLater, Unhandled

logger = logging.getLogger(__name__)

# A dead letter that cannot be settled yet (Twilio or the store does not respond) goes
# back to the end of the dead queue after this pause, at most MAX_TRIES times. So after
# an outage of about 5 minutes or more, it is kept as it is. For a text still claimed by
# a sender, the handler pauses until the claim lapses, at most MAX_PAUSE_S (the sender's
# default claim lease) at a time.
RETRY_PAUSE_S = 5.0
MAX_PAUSE_S = 60.0
MAX_TRIES = 60
# Run statuses in which the run still needs its `tm.runs` message; a paused run needs it
# only while it is not expanded.
RUN_STATUSES_BEFORE_SENDING = ("publishing", "queued", "expanding")
# At most this many notices about failed iMIS writes go to one tenant per hour, so an
# iMIS outage during a long campaign does not send an e-mail per text.
MAX_IMIS_NOTICES_PER_HOUR = 10
IMIS_NOTICE_KEY = "imis-write-failed"
# The reason the broker gives a message that ran out of attempts starts like this.
_GAVE_UP = re.compile(r"^gave up after \d+ attempts?: ")


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered message: where it died, why, and this handler's try at it."""

    queue: str | None
    body: dict
    payload: bytes
    reason: str
    attempts: int
    message_id: str | None
    headers: dict
    try_number: int
    last_try: bool

    @property
    def work_queue(self) -> str | None:
        """Return the work queue it died in, `tm.jobs` for a tenant's partition, or None."""
        return work_queue_of(self.queue) if self.queue else None

    @property
    def tenant_id(self) -> str | None:
        tenant_id = self.body.get("tenant_id")
        return tenant_id if isinstance(tenant_id, str) and tenant_id else None

    @property
    def last_error(self) -> str:
        """Return the last error the work queue's handler reported, without the broker's give-up prefix."""
        return _GAVE_UP.sub("", self.reason, count=1)

    @property
    def give_up_reason(self) -> str:
        """Return "gave up after N attempts: <last error>", the reason staff see on a failed text."""
        return f"gave up after {_attempts(self.attempts)}: {self.last_error}"

    @property
    def fingerprint(self) -> str:
        """Return a key that is the same for every delivery of this dead letter."""
        digest = hashlib.sha256()
        for part in (self.queue or "", self.message_id or ""):
            digest.update(part.encode("utf-8") + b"\0")
        digest.update(self.payload)
        return digest.hexdigest()[:32]


def read_dead_letter(delivery: Delivery, *, queue_prefix: str = "", max_tries: int = MAX_TRIES) -> DeadLetter:
    """Return the dead letter in a delivery from the dead queue."""
    queue, reason = _origin(delivery.headers, queue_prefix)
    return DeadLetter(queue=queue, body=delivery.body, payload=delivery.payload, reason=reason,
                      attempts=attempt_of(delivery.headers), message_id=delivery.message_id,
                      headers=delivery.headers, try_number=delivery.attempt,
                      last_try=delivery.attempt >= max_tries)


def _origin(headers: dict, queue_prefix: str) -> tuple[str | None, str]:
    """Return the queue a message died in, without the broker's prefix, and why it died."""
    queue = headers.get(ORIGINAL_QUEUE_HEADER)
    reason = str(headers.get(DEATH_REASON_HEADER) or "no reason was recorded")
    if isinstance(queue, str):
        return queue, reason

    # RabbitMQ dead-lettered it itself, after the broker could not forward it: x-death
    # lists the latest death first.
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        queue = deaths[0].get("queue")
        if isinstance(queue, str):
            return queue.removeprefix(queue_prefix), f"RabbitMQ dead-lettered it ({deaths[0].get('reason')})"
    return None, reason


class DeadLetterHandler:
    """Settle each dead letter by the work queue it died in, or keep it as it is.

    `pause(seconds)` runs before a dead letter goes back to the dead queue, so that a
    store or Twilio outage does not spin the consumer.
    """

    def __init__(self, db: Database, *, broker, tenants: TenantRepository, twilio_factory, notifier, clock,
                 queue_prefix: str = "", pause: Callable[[float], object] | None = None,
                 retry_pause_s: float = RETRY_PAUSE_S, max_tries: int = MAX_TRIES):
        self._db = db
        self._tenants = tenants
        self._notifier = notifier
        self._clock = clock
        self._queue_prefix = queue_prefix
        self._pause = pause or clock.sleep
        self._retry_pause_s = retry_pause_s
        self._max_tries = max_tries
        self._progress = RunProgress(db, clock)
        self._jobs = DeadJobs(db, self._progress, broker=broker, tenants=tenants, twilio_factory=twilio_factory,
                              clock=clock)

    def handle(self, delivery: Delivery) -> None:
        """Settle or keep one dead letter; raise Retry to have it back later."""
        letter = read_dead_letter(delivery, queue_prefix=self._queue_prefix, max_tries=self._max_tries)
        with log_context(tenant_id=letter.tenant_id, run_id=_text(letter.body.get("run_id")),
                         message_id=letter.message_id):
            try:
                self._settle_or_keep(letter)
            except (TryLater, ConnectionFailure) as error:
                self._pause(self._pause_s(error))
                raise Retry(str(error)) from None
            except Exception:
                self._pause(self._retry_pause_s)
                raise

    def _settle_or_keep(self, letter: DeadLetter) -> None:
        """Settle the letter, or keep it when it cannot be settled; raise TryLater or ConnectionFailure to come back."""
        try:
            self._settle(letter)
        except Unhandled as error:
            self._keep(letter, str(error))
        except (TryLater, ConnectionFailure) as error:
            if letter.last_try:
                self._keep(letter, f"could not settle it in {letter.try_number} tries: {error}")
                return
            logger.warning("dead letter from %s not settled on try %s; trying again in %.0f s: %s",
                           letter.queue, letter.try_number, self._pause_s(error), error)
            raise
        except Exception as error:
            logger.exception("settling the dead letter from %s failed; keeping it as it is", letter.queue)
            self._keep(letter, f"settling it failed: {type(error).__name__}: {error}")

    def _pause_s(self, error: Exception) -> float:
        wait_s = error.wait_s if isinstance(error, TryLater) else 0.0
        return max(self._retry_pause_s, min(wait_s, MAX_PAUSE_S))

    def _settle(self, letter: DeadLetter) -> None:
        logger.info("settling a dead letter from %s: %s", letter.queue, letter.reason)
        if letter.work_queue == QUEUE_JOBS:
            self._jobs.settle(letter)
        elif letter.work_queue == QUEUE_RUNS:
            self._settle_run(letter)
        elif letter.work_queue == QUEUE_IMIS:
            self._keep_imis_write(letter)
        else:
            raise Unhandled(f"it died in {letter.queue or 'an unnamed queue'}, a queue this handler does not settle")

    # Runs

    def _settle_run(self, letter: DeadLetter) -> None:
        """Fail a run that still waited for expansion, and send the failed-run notice once."""
        tenant_id, run_id = _required_text(letter.body, "tenant_id"), _required_text(letter.body, "run_id")
        error = (f"Text Manager gave up preparing the texts after {_attempts(letter.attempts)} "
                 f"({letter.last_error}). Send the campaign again; if it fails again, contact support.")
        failed_now = self._db.runs.find_one_and_update(
            {"_id": run_id, "tenant_id": tenant_id,
             "$or": [{"status": {"$in": list(RUN_STATUSES_BEFORE_SENDING)}},
                     {"status": "paused", "expanded": {"$ne": True}}]},
            {"$set": {"status": "failed", "error": error, "failed_at": self._clock.now()}},
            return_document=ReturnDocument.AFTER,
        )
        run = failed_now or self._db.runs.find_one({"_id": run_id, "tenant_id": tenant_id})
        if run is None:
            raise Unhandled(f"run {run_id} does not exist in tenant {tenant_id}")
        if run["status"] != "failed":
            logger.info("run is %s, so its dead run message changes nothing", run["status"])
            return
        if failed_now:
            logger.warning("run failed: %s", error)

        # Both steps are idempotent, so they run again for a run failed earlier and a notice lost to a crash is sent.
        campaign = self._fail_campaign(run)
        notify_run_failed(self._notifier, run=run, campaign=campaign, admin_email=self._admin_email(tenant_id),
                          reason=run.get("error") or error)

    def _fail_campaign(self, run: dict) -> dict:
        """Mark the run's campaign failed while this run is its current one; return the campaign."""
        self._db.campaigns.update_one(
            {"_id": run["campaign_id"], "tenant_id": run["tenant_id"], "current_run_id": run["_id"],
             "status": {"$ne": "failed"}},
            {"$set": {"status": "failed", "error": run.get("error"), "updated_at": self._clock.now()}},
        )
        campaign = self._db.campaigns.find_one({"_id": run["campaign_id"], "tenant_id": run["tenant_id"]})
        return campaign or {"_id": run["campaign_id"]}

    # iMIS writes

    def _keep_imis_write(self, letter: DeadLetter) -> None:
        """Keep a failed iMIS write in `failed_imis_writes` and tell the tenant's administrator."""
        tenant = self._tenant(_required_text(letter.body, "tenant_id"))
        write_id = f"{tenant.cloud_id}:{letter.fingerprint}"
        write = {
            "tenant_id": tenant.cloud_id, "kind": _required_text(letter.body, "kind"),
            "number": letter.body.get("number"), "member_ids": letter.body.get("member_ids"),
            "message_id": letter.body.get("message_id"), "job": letter.body, "reason": letter.give_up_reason,
            "failed_at": self._clock.now(),
        }
        self._db.failed_imis_writes.update_one({"_id": write_id, "tenant_id": tenant.cloud_id},
                                               {"$setOnInsert": write}, upsert=True)
        logger.error("iMIS %s write failed and is kept as %s: %s", write["kind"], write_id, write["reason"])
        self._notify_imis_write(tenant, letter.fingerprint, write)

    def _notify_imis_write(self, tenant: Tenant, fingerprint: str, write: dict) -> None:
        """Send one notice about the write, unless the tenant got MAX_IMIS_NOTICES_PER_HOUR already."""
        key_prefix = f"{tenant.cloud_id}:{IMIS_NOTICE_KEY}:"
        recent = self._db.notifications.count_documents({
            "tenant_id": tenant.cloud_id, "_id": {"$regex": f"^{re.escape(key_prefix)}"},
            "created_at": {"$gte": self._clock.now() - timedelta(hours=1)},
        })
        if recent >= MAX_IMIS_NOTICES_PER_HOUR:
            logger.warning("no notice about the failed iMIS write: %s notices were sent in the last hour", recent)
            return
        subject, text = _imis_notice(write)
        self._notifier.notify(tenant_id=tenant.cloud_id, recipients=[tenant.default_email], subject=subject,
                              text=text, dedupe_key=f"{IMIS_NOTICE_KEY}:{fingerprint}")

    # Anything else

    def _keep(self, letter: DeadLetter, keep_reason: str) -> None:
        """Store the dead letter as it arrived, with the reason it could not be settled."""
        letter_id = f"{letter.tenant_id or '-'}:{letter.fingerprint}"
        document = {
            "tenant_id": letter.tenant_id, "queue": letter.queue, "message_id": letter.message_id,
            "payload": letter.payload, "headers_json": json.dumps(letter.headers, default=str, sort_keys=True),
            "reason": letter.reason, "attempts": letter.attempts, "kept_because": keep_reason, "kept_at": self._clock.now(),
        }
        self._db.dead_letters.update_one({"_id": letter_id, "tenant_id": letter.tenant_id},
                                         {"$setOnInsert": document}, upsert=True)
        logger.error("dead letter from %s kept as %s in dead_letters because %s (it died because %s)",
                     letter.queue, letter_id, keep_reason, letter.reason)

    def _tenant(self, tenant_id: str) -> Tenant:
        try:
            return self._tenants.get(tenant_id)
        except TenantNotFound:
            raise Unhandled(f"tenant {tenant_id!r} does not exist") from None

    def _admin_email(self, tenant_id: str) -> str:
        try:
            return self._tenants.get(tenant_id).default_email
        except TenantNotFound:
            return ""


def _imis_notice(write: dict) -> tuple[str, str]:
    """Return the subject and text of the notice about a failed iMIS write."""
    recipient = f"{write.get('number')} (member {', '.join(map(str, write.get('member_ids') or [])) or 'unknown'})"
    if write["kind"] == "textunsub":
        return ("Text Manager could not record an opt-out in iMIS",
                f"The TEXTUNSUB activity for {recipient} could not be written to iMIS: {write['reason']}. "
                "Text Manager has recorded the opt-out and sends this number no more texts, but iMIS does "
                "not show it. Add the activity in iMIS by hand.")
    if write["kind"] == "resubscribe":
        return ("Text Manager could not remove an opt-out from iMIS",
                f"{recipient} opted back in, but the TEXTUNSUB activities could not be deleted from iMIS: "
                f"{write['reason']}. Delete them in iMIS by hand.")
    return ("Text Manager could not write to iMIS",
            f"The {write['kind']} entry for {recipient} could not be written to iMIS: {write['reason']}. "
            "Add it in iMIS by hand if you need it there.")


def _attempts(count: int) -> str:
    return f"{count} attempt" if count == 1 else f"{count} attempts"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _required_text(body: dict, field: str) -> str:
    """Return body[field]; raise Unhandled when it is not a non-empty string."""
    value = _text(body.get(field))
    if value is None:
        raise Unhandled(f"its body has no {field}")
    return value
