"""Settle a dead job: record its text as failed, or as sent when Twilio's message list shows it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from libs.common.broker import QUEUE_JOBS
from libs.common.imis_log import publish_sent_text
from libs.common.progress import JOB_FIELDS, RunProgress
from libs.common.reconcile import CLAIM_FIELDS, find_created_message, record_sent, unknown_outcome_since
from libs.common.tenants import Tenant, TenantNotFound, TenantRepository
from libs.common.twilio_client import TwilioError, TwilioUnavailable
from services.scheduler.errors import TryLater, Unhandled

if TYPE_CHECKING:
    from services.scheduler.dead_letters import DeadLetter

logger = logging.getLogger(__name__)

# Job fields that must be non-empty strings to find, reconcile and record the text.
_TEXT_FIELDS = ("tenant_id", "run_id", "message_id", "to", "body")


class DeadJobs:
    """Settle the text of each job that `tm.jobs` or a tenant's partition gave up on.

    A text without a message document (never claimed) or set aside as `retrying` is
    recorded as failed. A text still `sending` waits until the sender's claim lapses.
    If that claim's Twilio call started, Twilio's message list is read first, as the
    sender does, and a text found there is recorded as sent. Texts in any other status
    are final, sent, or set aside for staff or the scheduler to publish again, so they
    stay as they are. A text recorded as failed is counted on its run.
    """

    def __init__(self, db: Database, progress: RunProgress, *, broker, tenants: TenantRepository, twilio_factory,
                 clock):
        self._db = db
        self._broker = broker
        self._progress = progress
        self._tenants = tenants
        self._twilio_factory = twilio_factory
        self._clock = clock

    def settle(self, letter: DeadLetter) -> None:
        """Settle the dead job's text; raise Unhandled for an invalid job and TryLater to come back."""
        job = _job_of(letter)
        tenant = self._tenant(job["tenant_id"])
        if self._db.runs.find_one({"_id": job["run_id"], "tenant_id": tenant.cloud_id}, {"_id": 1}) is None:
            raise Unhandled(f"run {job['run_id']} does not exist in tenant {tenant.cloud_id}")

        message = self._db.messages.find_one({"_id": job["message_id"], "tenant_id": tenant.cloud_id})
        if message is None:
            self._fail_unclaimed(job, letter.give_up_reason)
        elif message["status"] == "sending":
            self._settle_claimed(job, message, tenant, letter)
        elif message["status"] == "retrying":
            self._fail(job, {"status": "retrying"}, letter.give_up_reason)
        else:
            logger.info("the text is %s, so its dead job changes nothing", message["status"])

    def _settle_claimed(self, job: dict, message: dict, tenant: Tenant, letter: DeadLetter) -> None:
        """Record a claimed text as sent if Twilio has it, else as failed, once its claim lapsed."""
        now = self._clock.now()
        claim_until = message.get("claim_until")
        if claim_until is not None and claim_until.replace(tzinfo=now.tzinfo) > now:
            raise TryLater(f"the text is claimed by a sender until {claim_until.isoformat()}",
                           wait_s=(claim_until.replace(tzinfo=now.tzinfo) - now).total_seconds())

        reason = letter.give_up_reason
        since = unknown_outcome_since(message)
        if since is not None:
            try:
                created = find_created_message(self._twilio(tenant), tenant, job, since, db=self._db)
            except (TwilioError, TwilioUnavailable) as error:
                if not letter.last_try:
                    raise TryLater(f"Twilio's message list could not be read: {error}") from None
                created = None
                reason = f"{reason}; Twilio's message list could not be read ({error}), so the text may have been sent"
            if created is not None:
                logger.info("Twilio has the text of the dead job as %s; recording it sent", created.sid)
                if record_sent(self._db, self._progress, job, message.get("claim_token"), created.sid, at=now):
                    publish_sent_text(self._broker, self._db, job, now, clock=self._clock)
                return
        self._fail(job, {"status": "sending", "claim_token": message.get("claim_token")}, reason)

    def _fail(self, job: dict, expected: dict, reason: str) -> None:
        """Move the text from the expected state to `failed` and count it; raise TryLater if it moved on."""
        finished = self._db.messages.find_one_and_update(
            {"_id": job["message_id"], "tenant_id": job["tenant_id"], **expected},
            {"$set": {"status": "failed", "reason": reason, "finished_at": self._clock.now()},
             "$unset": {name: "" for name in CLAIM_FIELDS}},
        )
        if finished is None:
            raise TryLater("the text changed while it was being settled")
        self._progress.count_final(job["run_id"], "failed")
        logger.warning("text recorded as failed: %s", reason)

    def _fail_unclaimed(self, job: dict, reason: str) -> None:
        """Create the message document of a text no sender claimed, as failed, and count it."""
        now = self._clock.now()
        document = {key: job[key] for key in JOB_FIELDS if key != "message_id"}
        document.update(_id=job["message_id"], status="failed", reason=reason, created_at=now, finished_at=now)
        try:
            self._db.messages.insert_one(document)
        except DuplicateKeyError:
            raise TryLater("a sender created the text while it was being settled") from None
        self._progress.count_final(job["run_id"], "failed")
        logger.warning("unclaimed text recorded as failed: %s", reason)

    def _tenant(self, tenant_id: str) -> Tenant:
        try:
            return self._tenants.get(tenant_id)
        except TenantNotFound:
            raise Unhandled(f"tenant {tenant_id!r} does not exist") from None

    def _twilio(self, tenant: Tenant):
        return self._twilio_factory(tenant.twilio_account_sid, tenant.twilio_auth_token)


def _job_of(letter: DeadLetter) -> dict:
    """Return the job in the dead letter; raise Unhandled when it is invalid or in another tenant's queue."""
    body = letter.body
    missing = [field for field in JOB_FIELDS if field not in body]
    if missing:
        raise Unhandled(f"the job lacks {', '.join(missing)}")
    for field in _TEXT_FIELDS:
        if not isinstance(body[field], str) or not body[field]:
            raise Unhandled(f"the job's {field} is not a non-empty string")
    if not body["message_id"].startswith(body["run_id"] + ":"):
        raise Unhandled(f"the job's message_id {body['message_id']!r} is not one of run {body['run_id']}")
    if letter.queue != QUEUE_JOBS and letter.queue.rpartition(".")[2] != body["tenant_id"]:
        raise Unhandled(f"a job of tenant {body['tenant_id']!r} died in {letter.queue}, another tenant's queue")
    return body
