"""Send one text: claim it, pace it, call Twilio, record the answer."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from libs.common.broker import QUEUE_IMIS, QUEUE_JOBS, Reject, Retry
from libs.common.logs import log_context
from libs.common.progress import PARKED_STATUSES, RunProgress
from libs.common.tenants import Tenant, TenantNotFound, TenantRepository
from libs.common.twilio_client import TwilioError, TwilioUnavailable
from services.sender import outcomes
from services.sender.pacing import Pacer

logger = logging.getLogger(__name__)

JOB_FIELDS = ("tenant_id", "campaign_id", "run_id", "message_id", "member_id", "to", "body", "segments", "encoding")
STOPPED_RUN_STATUSES = ("cancelled", "failed")


@dataclass
class Claim:
    token: str
    attempts: int
    unknown_outcome_since: object = None


class Sender:
    """Turn one job from `tm.jobs` into at most one Twilio message.

    The message document is claimed (`sending`, with a token and a lease) before the
    call and recorded after it; the queue message is acknowledged only once the record
    is stored. A claim whose lease lapsed may have reached Twilio, so it is reconciled
    against Twilio's message list before anything is sent again.
    """

    def __init__(self, db: Database, *, broker, tenants: TenantRepository, twilio_factory, pacer: Pacer,
                 notifier, clock, public_callback_url: str, lease_s: float = 60.0):
        self._db = db
        self._broker = broker
        self._tenants = tenants
        self._twilio_factory = twilio_factory
        self._pacer = pacer
        self._notifier = notifier
        self._clock = clock
        self._callback_base = public_callback_url.rstrip("/")
        self._lease = timedelta(seconds=lease_s)
        self._progress = RunProgress(db, clock)

    def handle(self, delivery) -> None:
        """Process one job; raise Reject for an invalid job and Retry to try again later."""
        job = _validate_job(delivery.body)
        with log_context(tenant_id=job["tenant_id"], campaign_id=job["campaign_id"],
                         run_id=job["run_id"], message_id=job["message_id"]):
            self._send(job, delivery.attempt)

    def _send(self, job: dict, attempt: int) -> None:
        try:
            tenant = self._tenants.get(job["tenant_id"])
        except TenantNotFound:
            raise Reject(f"unknown tenant {job['tenant_id']!r}") from None
        run = self._db.runs.find_one({"_id": job["run_id"], "tenant_id": job["tenant_id"]})
        if run is None:
            raise Reject(f"run {job['run_id']} does not exist")

        claim = self._claim(job)
        if claim is None:
            return
        if run["status"] in STOPPED_RUN_STATUSES:
            self._finish(job, claim, "cancelled", reason=f"run {run['status']}")
            return
        if run["status"] == "paused":
            self._park(job, claim, "paused")
            self._republish_if_resumed(job)
            return
        if claim.unknown_outcome_since is not None and self._reconcile(job, claim, tenant):
            return
        if not self._reserve_daily_allowance(tenant):
            self._release(job, claim, "deferred", reason="daily allowance used up",
                          deferred_until=self._next_midnight(tenant))
            return

        self._pacer.wait_for(f"{tenant.cloud_id}:{tenant.sender_number}", job["segments"], tenant.sender_rate_sps)
        self._call_twilio(job, claim, tenant)

    def _claim(self, job: dict) -> Claim | None:
        now = self._clock.now()
        token = uuid.uuid4().hex
        claim_fields = {"status": "sending", "claim_token": token, "claim_until": now + self._lease, "claimed_at": now}
        insert_fields = {key: job[key] for key in JOB_FIELDS if key != "message_id"}
        insert_fields["created_at"] = now
        try:
            document = self._db.messages.find_one_and_update(
                {"_id": job["message_id"], "status": {"$in": list(PARKED_STATUSES)}},
                {"$set": claim_fields, "$setOnInsert": insert_fields, "$inc": {"attempts": 1}},
                upsert=True, return_document=ReturnDocument.AFTER,
            )
            return Claim(token, document["attempts"])
        except DuplicateKeyError:
            return self._claim_existing(job, claim_fields, now)

    def _claim_existing(self, job: dict, claim_fields: dict, now) -> Claim | None:
        existing = self._db.messages.find_one({"_id": job["message_id"]})
        if existing is None or existing["status"] != "sending":
            logger.info("job already handled (message %s), acknowledging", existing and existing["status"])
            return None
        if existing["claim_until"].replace(tzinfo=now.tzinfo) > now:
            seconds_left = (existing["claim_until"].replace(tzinfo=now.tzinfo) - now).total_seconds()
            raise Retry("another sender instance holds this text", delay_s=max(seconds_left, 1.0))
        taken = self._db.messages.find_one_and_update(
            {"_id": job["message_id"], "status": "sending", "claim_token": existing["claim_token"]},
            {"$set": claim_fields, "$inc": {"attempts": 1}}, return_document=ReturnDocument.AFTER,
        )
        if taken is None:
            raise Retry("another sender instance took over this text", delay_s=1.0)
        logger.warning("taking over a lapsed claim: the earlier attempt may have reached Twilio")
        return Claim(claim_fields["claim_token"], taken["attempts"], unknown_outcome_since=existing["claimed_at"])

    def _reconcile(self, job: dict, claim: Claim, tenant: Tenant) -> bool:
        """Record a text Twilio already holds from a lapsed attempt; return True if found."""
        since = claim.unknown_outcome_since.replace(tzinfo=self._clock.now().tzinfo) - timedelta(minutes=1)
        try:
            listed = self._twilio(tenant).list_messages(to=job["to"], sent_after=since)
        except (TwilioError, TwilioUnavailable) as error:
            self._release(job, claim, "retrying")
            raise Retry(f"cannot check Twilio for an earlier attempt: {error}") from None
        for message in listed:
            if message.body == job["body"] and message.from_ in (tenant.sender_number, None, ""):
                logger.info("an earlier attempt reached Twilio as %s; not sending again", message.sid)
                self._record_sent(job, claim, message.sid)
                return True
        return False

    def _call_twilio(self, job: dict, claim: Claim, tenant: Tenant) -> None:
        callback = f"{self._callback_base}/twilio/status/{job['tenant_id']}/{job['message_id']}"
        try:
            created = self._twilio(tenant).create_message(
                to=job["to"], from_=None if tenant.messaging_service_sid else tenant.sender_number,
                messaging_service_sid=tenant.messaging_service_sid or None,
                body=job["body"], status_callback=callback,
            )
        except TwilioUnavailable as error:
            # The call may have reached Twilio: keep the claim so its lease lapses and
            # the next attempt reconciles before sending.
            self._release_allowance(tenant)
            raise Retry(f"Twilio did not answer: {error}", delay_s=self._lease.total_seconds()) from None
        except TwilioError as error:
            self._release_allowance(tenant)
            self._on_twilio_error(job, claim, tenant, error)
            return
        self._record_sent(job, claim, created.sid)

    def _record_sent(self, job: dict, claim: Claim, sid: str) -> None:
        now = self._clock.now()
        recorded = self._db.messages.find_one_and_update(
            {"_id": job["message_id"], "claim_token": claim.token, "status": "sending"},
            {"$set": {"status": "sent", "sid": sid, "sent_at": now}, "$unset": {"claim_token": "", "claim_until": ""}},
        )
        if recorded is None:
            # A status callback got here first and moved the status on; keep its status.
            recorded = self._db.messages.find_one_and_update(
                {"_id": job["message_id"], "claim_token": claim.token},
                {"$set": {"sid": sid, "sent_at": now}, "$unset": {"claim_token": "", "claim_until": ""}},
            )
        if recorded is None:
            logger.warning("claim lost before the send was recorded (sid %s); the next attempt reconciles", sid)
            return
        self._progress.count(job["run_id"], sent=1)
        logger.info("sent as %s", sid)

    def _on_twilio_error(self, job: dict, claim: Claim, tenant: Tenant, error: TwilioError) -> None:
        outcome = outcomes.classify(error.code, error.http_status, toll_free=tenant.sender_kind == "toll-free")
        logger.warning("Twilio answered %s (HTTP %s): %s", error.code, error.http_status, outcome.action)
        if outcome.action == outcomes.OPT_OUT:
            self._record_opt_out(job, claim)
        elif outcome.action == outcomes.SKIP:
            self._finish(job, claim, "skipped", reason=outcome.reason, error_code=error.code)
        elif outcome.action == outcomes.PAUSE:
            self._park(job, claim, "paused", reason=outcome.reason, error_code=error.code)
            self._pause_campaign(job, tenant, outcome.reason)
        elif outcome.action == outcomes.RETRY and claim.attempts < outcome.max_attempts:
            self._park(job, claim, "retrying", reason=outcome.reason, error_code=error.code)
            raise Retry(outcome.reason)
        else:
            self._finish(job, claim, "failed", reason=outcome.reason, error_code=error.code)

    def _record_opt_out(self, job: dict, claim: Claim) -> None:
        now = self._clock.now()
        self._db.optouts.update_one(
            {"_id": f"{job['tenant_id']}:{job['to']}"},
            {"$set": {"tenant_id": job["tenant_id"], "number": job["to"], "opted_out_at": now, "source": "twilio-21610"},
             "$addToSet": {"member_ids": job["member_id"]}},
            upsert=True,
        )
        if self._finish(job, claim, "opted_out", reason="opted out (replied STOP)", error_code=21610):
            self._broker.publish(QUEUE_IMIS, {
                "kind": "textunsub", "tenant_id": job["tenant_id"], "number": job["to"],
                "member_ids": [job["member_id"]], "sent_at": now.isoformat(), "message_id": job["message_id"],
            }, message_id=f"textunsub:{job['message_id']}")

    def _finish(self, job: dict, claim: Claim, status: str, *, reason: str, error_code: int | None = None) -> bool:
        done = self._db.messages.find_one_and_update(
            {"_id": job["message_id"], "claim_token": claim.token},
            {"$set": {"status": status, "reason": reason, "error_code": error_code, "finished_at": self._clock.now()},
             "$unset": {"claim_token": "", "claim_until": ""}},
        )
        if done is not None:
            self._progress.count_final(job["run_id"], status)
        return done is not None

    def _park(self, job: dict, claim: Claim, status: str, *, reason: str | None = None, error_code: int | None = None) -> None:
        """Set a message aside (paused, deferred, retrying) with its job, to be sent later."""
        self._release(job, claim, status, reason=reason, error_code=error_code)

    def _release(self, job: dict, claim: Claim, status: str, **details) -> None:
        fields = {"status": status, "job": job}
        fields.update({key: value for key, value in details.items() if value is not None})
        self._db.messages.update_one(
            {"_id": job["message_id"], "claim_token": claim.token},
            {"$set": fields, "$unset": {"claim_token": "", "claim_until": ""}},
        )

    def _republish_if_resumed(self, job: dict) -> None:
        """Publish a parked job again when staff resumed the run while it was being parked."""
        run = self._db.runs.find_one({"_id": job["run_id"]}, {"status": 1})
        if run and run["status"] != "paused":
            parked = self._db.messages.find_one_and_update({"_id": job["message_id"], "status": "paused"},
                                                           {"$set": {"status": "retrying"}})
            if parked is not None:
                self._broker.publish(QUEUE_JOBS, job, message_id=job["message_id"])

    def _pause_campaign(self, job: dict, tenant: Tenant, reason: str) -> None:
        paused = self._db.runs.find_one_and_update(
            {"_id": job["run_id"], "status": {"$in": ["expanding", "sending"]}},
            {"$set": {"status": "paused", "paused_reason": reason}},
        )
        self._db.campaigns.update_one({"_id": job["campaign_id"], "tenant_id": tenant.cloud_id, "status": "sending"},
                                      {"$set": {"status": "paused"}})
        if paused is not None:
            campaign = self._db.campaigns.find_one({"_id": job["campaign_id"], "tenant_id": tenant.cloud_id}) or {}
            self._notifier.notify(
                tenant_id=tenant.cloud_id, recipients=[tenant.default_email, campaign.get("email", "")],
                subject=f"Text Manager paused the campaign {campaign.get('name', job['campaign_id'])!r}",
                text=f"Sending stopped because {reason}. Fix the cause, then resume the campaign in Text Manager.",
                dedupe_key=f"pause:{job['run_id']}",
            )

    def _reserve_daily_allowance(self, tenant: Tenant) -> bool:
        day = self._clock.now().astimezone(ZoneInfo(tenant.timezone)).date().isoformat()
        try:
            self._db.usage.find_one_and_update(
                {"_id": f"{tenant.cloud_id}:{day}", "count": {"$lt": tenant.daily_limit}},
                {"$inc": {"count": 1}, "$setOnInsert": {"tenant_id": tenant.cloud_id, "day": day}}, upsert=True,
            )
            return True
        except DuplicateKeyError:
            return False

    def _next_midnight(self, tenant: Tenant):
        local = self._clock.now().astimezone(ZoneInfo(tenant.timezone))
        tomorrow = datetime.combine(local.date() + timedelta(days=1), time(0, 0), tzinfo=local.tzinfo)
        return tomorrow.astimezone(timezone.utc)

    def _release_allowance(self, tenant: Tenant) -> None:
        day = self._clock.now().astimezone(ZoneInfo(tenant.timezone)).date().isoformat()
        self._db.usage.update_one({"_id": f"{tenant.cloud_id}:{day}", "count": {"$gt": 0}}, {"$inc": {"count": -1}})

    def _twilio(self, tenant: Tenant):
        return self._twilio_factory(tenant.twilio_account_sid, tenant.twilio_auth_token)


def _validate_job(body: object) -> dict:
    if not isinstance(body, dict):
        raise Reject("job is not a JSON object")
    missing = [key for key in JOB_FIELDS if key not in body]
    if missing:
        raise Reject(f"job lacks {', '.join(missing)}")
    if not isinstance(body["segments"], int) or body["segments"] < 1:
        raise Reject(f"job has an invalid segment count {body['segments']!r}")
    return body
