"""Send one text: claim it, pace it, call Twilio, record the response."""

from __future__ import annotations

import logging
import random
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from typing import Callable
from zoneinfo import ZoneInfo

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from libs.common.broker import Reject, Retry, tenant_jobs_queue
from libs.common.imis_log import publish_sent_text
from libs.common.imis_queue import publish_imis_job
from libs.common.logs import log_context
from libs.common.progress import JOB_FIELDS, PARKED_STATUSES, SLOW_DOWN_CODES, RunProgress, backoff_s
from libs.common.reconcile import CLAIM_FIELDS, find_created_message, record_sent, unknown_outcome_since
from libs.common.tenants import Tenant, TenantNotFound, TenantRepository
from libs.common.twilio_client import TwilioError, TwilioUnavailable
from services.sender import outcomes
from services.sender.pacing import Pacer

logger = logging.getLogger(__name__)

STOPPED_RUN_STATUSES = ("cancelled", "failed")
# How often a worker waiting for its send slot checks whether the instance is stopping.
STOP_CHECK_S = 0.2
# A worker ready to call Twilio this long after its send slot takes a later slot, at most
# MAX_SLOT_TRIES slots in all. The bound keeps a worker on an overloaded machine sending.
LATE_START_S = 0.004
MAX_SLOT_TRIES = 3
# After 21611 or a retried 30001/30036, send from the number at this share of its rate for a while.
SLOW_DOWN_FACTOR = 0.5
SLOW_DOWN_S = 600.0
# Assumed Twilio create latency until calls have been measured; an estimate, not a measurement.
INITIAL_LATENCY_S = 0.3


def no_checkpoint(step: str) -> None:
    """Default checkpoint: does nothing."""


@dataclass(frozen=True)
class Claim:
    """This attempt's hold on a message, and the message document as it was before the claim."""

    token: str
    previous: dict | None

    @property
    def unknown_outcome_since(self) -> datetime | None:
        """Return when the first call of a lapsed claim started, if one started: its outcome is unknown."""
        return unknown_outcome_since(self.previous)


class LatencyMeter:
    """Exponentially weighted mean of Twilio create call durations, in seconds."""

    def __init__(self, initial_s: float = INITIAL_LATENCY_S, weight: float = 0.05):
        self._mean_s = initial_s
        self._weight = weight
        self._lock = threading.Lock()

    @property
    def mean_s(self) -> float:
        with self._lock:
            return self._mean_s

    def observe(self, seconds: float) -> None:
        with self._lock:
            self._mean_s += self._weight * (seconds - self._mean_s)


class Sender:
    """Turn one job from a `tm.jobs` queue into at most one Twilio message.

    The message document is claimed (`sending`, with a token and a lease) before the
    call and recorded after it; the queue message is acknowledged only once the record
    is stored. Just before the call the lease is renewed and the call's start stored,
    so a claim whose lease lapsed after that may have reached Twilio: it is reconciled
    against Twilio's message list before anything is sent again. The lease must be
    longer than the Twilio client's timeout, so that a call is over when its lease lapses.

    `checkpoint(step)` is called at "claimed", "calling", "answered" and "recorded",
    so tests can stop an instance at each step. `stopping`, once set, makes a worker
    that waits for a send slot give its text back instead of sending it.
    """

    def __init__(self, db: Database, *, broker, tenants: TenantRepository, twilio_factory, pacer: Pacer,
                 notifier, clock, public_callback_url: str, lease_s: float = 60.0,
                 stopping: threading.Event | None = None, checkpoint: Callable[[str], None] = no_checkpoint,
                 rng: random.Random | None = None, initial_latency_s: float = INITIAL_LATENCY_S):
        self._db = db
        self._broker = broker
        self._tenants = tenants
        self._twilio_factory = twilio_factory
        self._pacer = pacer
        self._notifier = notifier
        self._clock = clock
        self._callback_base = public_callback_url.rstrip("/")
        self._lease = timedelta(seconds=lease_s)
        self._stopping = stopping
        self._checkpoint = checkpoint
        self._rng = rng or random.Random()
        self._progress = RunProgress(db, clock)
        self.latency = LatencyMeter(initial_latency_s)

    def handle(self, delivery) -> None:
        """Process one job; raise Reject for an invalid job and Retry to try again later."""
        job = _validate_job(delivery.body)
        with log_context(tenant_id=job["tenant_id"], campaign_id=job["campaign_id"],
                         run_id=job["run_id"], message_id=job["message_id"]):
            self._send(job, delivery.attempt)

    def route(self, delivery) -> None:
        """Move a job from the shared `tm.jobs` to its tenant's queue; raise Reject for an invalid job.

        Producers that publish to `tm.jobs` get the same per-tenant fairness as those
        that publish to the tenant's queue, at the cost of one more confirmed publish.
        A job routed twice after a crash is still one text, because the claim decides.
        """
        job = _validate_job(delivery.body)
        self._tenant(job)
        try:
            queue = tenant_jobs_queue(job["tenant_id"])
        except ValueError as error:
            raise Reject(str(error)) from None
        self._broker.publish(queue, job, message_id=job["message_id"])

    def _send(self, job: dict, attempt: int) -> None:
        tenant = self._tenant(job)
        run = self._db.runs.find_one({"_id": job["run_id"], "tenant_id": job["tenant_id"]}, {"status": 1})
        if run is None:
            raise Reject(f"run {job['run_id']} does not exist")

        claim = self._claim(job)
        if claim is None:
            return
        self._checkpoint("claimed")
        if not self._run_allows(job, claim, run["status"]):
            return
        if claim.unknown_outcome_since is not None and self._reconcile(job, claim, tenant, attempt):
            return
        self._slow_down_after_error(claim, tenant)

        usage_id = self._reserve_daily_allowance(tenant)
        if usage_id is None:
            self._park(job, claim, "deferred", reason="daily allowance used up",
                       deferred_until=self._next_midnight(tenant))
            return
        try:
            ready = self._wait_until_sendable(job, claim, tenant)
        except Retry:
            self._release_allowance(usage_id)
            raise
        if not ready:
            self._release_allowance(usage_id)
            return
        self._call_twilio(job, claim, tenant, usage_id, attempt)

    def _tenant(self, job: dict) -> Tenant:
        try:
            return self._tenants.get(job["tenant_id"])
        except TenantNotFound:
            raise Reject(f"unknown tenant {job['tenant_id']!r}") from None

    # Claiming

    def _claim(self, job: dict) -> Claim | None:
        """Claim the message; return None when it needs nothing more, raise Retry while another instance has it."""
        now = self._clock.now()
        token = uuid.uuid4().hex
        claim_fields = {"status": "sending", "claim_token": token, "claim_until": now + self._lease, "claimed_at": now}
        insert_fields = {key: job[key] for key in JOB_FIELDS if key != "message_id"}
        insert_fields["created_at"] = now
        try:
            previous = self._db.messages.find_one_and_update(
                {"_id": job["message_id"], "status": {"$in": list(PARKED_STATUSES)}},
                {"$set": claim_fields, "$setOnInsert": insert_fields, "$inc": {"attempts": 1},
                 "$unset": {"retry_at": ""}},
                upsert=True,
            )
            return Claim(token, previous)
        except DuplicateKeyError:
            return self._claim_existing(job, claim_fields, now)

    def _claim_existing(self, job: dict, claim_fields: dict, now: datetime) -> Claim | None:
        existing = self._db.messages.find_one({"_id": job["message_id"]})
        if existing is None or existing["status"] != "sending":
            logger.info("job already handled (message %s), acknowledging", existing and existing["status"])
            return None
        claim_until = existing["claim_until"].replace(tzinfo=now.tzinfo)
        if claim_until > now:
            raise Retry("another sender instance has claimed this text", delay_s=(claim_until - now).total_seconds())
        taken = self._db.messages.find_one_and_update(
            {"_id": job["message_id"], "status": "sending", "claim_token": existing["claim_token"]},
            {"$set": claim_fields, "$inc": {"attempts": 1}},
        )
        if taken is None:
            raise Retry("another sender instance took over this text", delay_s=1.0)
        claim = Claim(claim_fields["claim_token"], taken)
        if claim.unknown_outcome_since is not None:
            logger.warning("taking over a lapsed claim whose Twilio call may have gone through")
        return claim

    def _run_allows(self, job: dict, claim: Claim, run_status: str) -> bool:
        """Return True when the run is sending; otherwise set the text aside or cancel it."""
        if run_status in STOPPED_RUN_STATUSES:
            self._finish(job, claim, "cancelled", reason=f"run {run_status}")
            return False
        if run_status == "paused":
            self._park(job, claim, "paused", reason="campaign paused")
            self._republish_if_resumed(job)
            return False
        return True

    def _reconcile(self, job: dict, claim: Claim, tenant: Tenant, attempt: int) -> bool:
        """Record a text that Twilio already created in an attempt with an unknown outcome; return True if found."""
        try:
            created = find_created_message(self._twilio(tenant), tenant, job, claim.unknown_outcome_since,
                                           db=self._db)
        except (TwilioError, TwilioUnavailable) as error:
            self._retry_unknown(job, claim, attempt, f"cannot check Twilio for an earlier attempt: {error}")
            return True
        if created is not None:
            logger.info("an earlier attempt reached Twilio as %s; not sending again", created.sid)
            self._record_sent(job, claim, created.sid)
            return True
        logger.info("no earlier attempt reached Twilio; sending")
        return False

    # Pacing and the call

    def _slow_down_after_error(self, claim: Claim, tenant: Tenant) -> None:
        """Lower the number's rate for a while when this text comes back after a full queue at Twilio."""
        if claim.previous and claim.previous.get("status") == "retrying" \
                and claim.previous.get("error_code") in SLOW_DOWN_CODES:
            self._pacer.slow_down(_pacing_key(tenant), factor=SLOW_DOWN_FACTOR, duration_s=SLOW_DOWN_S)

    def _wait_until_sendable(self, job: dict, claim: Claim, tenant: Tenant) -> bool:
        """Wait for a send slot and prepare the call; return False when the text must not go now.

        A worker that gets going more than LATE_START_S after its slot (a busy CPU, a
        slow store) takes a later slot instead, at most MAX_SLOT_TRIES times. A text that
        left late would crowd the one-second window of the texts reserved after it.
        """
        for tries_left in range(MAX_SLOT_TRIES - 1, -1, -1):
            slot = self._wait_for_slot(job, claim, tenant)
            if not self._start_call(job, claim):
                return False
            late_s = self._clock.time() - slot
            if late_s <= LATE_START_S or not tries_left:
                return True
            logger.info("ready %.0f ms after the send slot; taking a later slot", late_s * 1000)
        return True

    def _wait_for_slot(self, job: dict, claim: Claim, tenant: Tenant) -> float:
        """Reserve the send slot, sleep until it and return it; raise Retry when the instance stops meanwhile."""
        slot = self._pacer.reserve(_pacing_key(tenant), job["segments"], tenant.sender_rate_sps)
        while (left := slot - self._clock.time()) > 0:
            if self._stopping is not None and self._stopping.is_set():
                self._park(job, claim, "retrying", reason="sender instance stopped before the send slot")
                raise Retry("sender instance stopping", delay_s=1.0)
            self._clock.sleep(min(left, STOP_CHECK_S))
        return slot

    def _start_call(self, job: dict, claim: Claim) -> bool:
        """Check the run again after the wait and renew the lease for the call; return False to not send."""
        run = self._db.runs.find_one({"_id": job["run_id"]}, {"status": 1})
        if not self._run_allows(job, claim, run["status"]):
            return False
        now = self._clock.now()
        renewed = self._db.messages.find_one_and_update(
            {"_id": job["message_id"], "claim_token": claim.token, "status": "sending"},
            {"$set": {"claim_until": now + self._lease, "call_started_at": now}, "$min": {"first_call_at": now}},
        )
        if renewed is None:
            logger.warning("lost the claim while waiting for the send slot; not sending")
            return False
        return True

    def _call_twilio(self, job: dict, claim: Claim, tenant: Tenant, usage_id: str, attempt: int) -> None:
        callback = f"{self._callback_base}/twilio/status/{job['tenant_id']}/{job['message_id']}"
        self._checkpoint("calling")
        started = self._clock.time()
        try:
            created = self._twilio(tenant).create_message(
                to=job["to"], from_=None if tenant.messaging_service_sid else tenant.sender_number,
                messaging_service_sid=tenant.messaging_service_sid or None,
                body=job["body"], status_callback=callback,
            )
        except TwilioUnavailable as error:
            # The call may have reached Twilio, so the allowance stays used and the claim stays:
            # when its lease lapses, the next attempt reconciles before sending.
            self._retry_unknown(job, claim, attempt, f"Twilio did not answer: {error}")
            return
        except TwilioError as error:
            self._release_allowance(usage_id)
            self._on_twilio_error(job, claim, tenant, error, attempt)
            return
        self.latency.observe(self._clock.time() - started)
        self._checkpoint("answered")
        self._record_sent(job, claim, created.sid)
        self._checkpoint("recorded")

    def _retry_unknown(self, job: dict, claim: Claim, attempt: int, reason: str) -> None:
        """Raise Retry to come back after the claim's lease lapsed, keeping the claim.

        On the broker's last attempt, record the text as failed instead and return.
        """
        if attempt < self._broker.max_attempts:
            raise Retry(reason, delay_s=self._lease.total_seconds())
        self._finish(job, claim, "failed", reason=f"{reason}; gave up after {attempt} attempts, "
                                                  "and the last one may have reached Twilio")

    # Recording

    def _record_sent(self, job: dict, claim: Claim, sid: str) -> None:
        now = self._clock.now()
        if record_sent(self._db, self._progress, job, claim.token, sid, at=now):
            self._publish_sent_text(job, now)

    def _publish_sent_text(self, job: dict, sent_at: datetime) -> None:
        """Ask the iMIS writer to log a text that is recorded as sent.

        A failed publish is not raised, because retrying the job would send the text
        again: the message records the iMIS log as missing instead. A crash between the
        record and the publish loses the event, and the message then shows no iMIS log.
        """
        publish_sent_text(self._broker, self._db, job, sent_at, clock=self._clock)

    def _on_twilio_error(self, job: dict, claim: Claim, tenant: Tenant, error: TwilioError, attempt: int) -> None:
        outcome = outcomes.classify(error.code, error.http_status, toll_free=tenant.sender_kind == "toll-free")
        logger.warning("Twilio returned error %s (HTTP %s): %s", error.code, error.http_status, outcome.action)
        if outcome.action == outcomes.OPT_OUT:
            self._record_opt_out(job, claim, error.code)
        elif outcome.action == outcomes.SKIP:
            self._finish(job, claim, "skipped", reason=outcome.reason, error_code=error.code)
        elif outcome.action == outcomes.PAUSE:
            self._park(job, claim, "paused", reason=outcome.reason, error_code=error.code)
            self._progress.pause(job["run_id"], outcome.reason, notifier=self._notifier)
            self._republish_if_resumed(job)
        elif outcome.action == outcomes.RETRY:
            self._retry_after_error(job, claim, tenant, outcome, error.code, attempt)
        else:
            self._finish(job, claim, "failed", reason=outcome.reason, error_code=error.code)

    def _retry_after_error(self, job: dict, claim: Claim, tenant: Tenant, outcome: outcomes.Outcome,
                           code: int | None, attempt: int) -> None:
        if outcome.slow_down:
            self._pacer.slow_down(_pacing_key(tenant), factor=SLOW_DOWN_FACTOR, duration_s=SLOW_DOWN_S)
        limit = min(outcome.max_attempts, self._broker.max_attempts)
        if attempt >= limit:
            self._finish(job, claim, "failed", reason=f"{outcome.reason}; gave up after {attempt} attempts",
                         error_code=code)
            return
        self._park(job, claim, "retrying", reason=outcome.reason, error_code=code)
        raise Retry(outcome.reason, delay_s=backoff_s(attempt, outcome.first_delay_s, rng=self._rng))

    def _record_opt_out(self, job: dict, claim: Claim, code: int | None) -> None:
        now = self._clock.now()
        self._db.optouts.update_one(
            {"_id": f"{job['tenant_id']}:{job['to']}"},
            {"$set": {"tenant_id": job["tenant_id"], "number": job["to"], "opted_out_at": now,
                      "source": f"twilio-{code}"},
             "$addToSet": {"member_ids": job["member_id"]}},
            upsert=True,
        )
        # Published before the message is final: a lost publish then leaves the claim to lapse
        # and the text to be tried again, and the iMIS writer skips an activity written twice.
        publish_imis_job(self._broker, {
            "kind": "textunsub", "tenant_id": job["tenant_id"], "number": job["to"],
            "member_ids": [job["member_id"]], "sent_at": now.isoformat(), "message_id": job["message_id"],
        }, message_id=f"textunsub:{job['message_id']}")
        self._finish(job, claim, "opted_out", reason="opted out (replied STOP)", error_code=code)

    def _finish(self, job: dict, claim: Claim, status: str, *, reason: str, error_code: int | None = None) -> bool:
        done = self._db.messages.find_one_and_update(
            {"_id": job["message_id"], "claim_token": claim.token},
            {"$set": {"status": status, "reason": reason, "error_code": error_code, "finished_at": self._clock.now()},
             "$unset": _unset(CLAIM_FIELDS)},
        )
        if done is not None:
            self._progress.count_final(job["run_id"], status)
        return done is not None

    def _park(self, job: dict, claim: Claim, status: str, **details) -> None:
        """Set a message aside (paused, deferred, retrying) with its job, to be sent later."""
        fields = {"status": status, "job": job}
        fields.update({key: value for key, value in details.items() if value is not None})
        self._db.messages.update_one(
            {"_id": job["message_id"], "claim_token": claim.token},
            {"$set": fields, "$unset": _unset(CLAIM_FIELDS)},
        )

    def _republish_if_resumed(self, job: dict) -> None:
        """Publish a parked job again when staff resumed the run while it was being parked."""
        run = self._db.runs.find_one({"_id": job["run_id"]}, {"status": 1})
        if run and run["status"] != "paused":
            parked = self._db.messages.find_one_and_update({"_id": job["message_id"], "status": "paused"},
                                                           {"$set": {"status": "retrying"}})
            if parked is not None:
                self._broker.publish(tenant_jobs_queue(job["tenant_id"]), job, message_id=job["message_id"])

    # Daily allowance

    def _reserve_daily_allowance(self, tenant: Tenant) -> str | None:
        """Take one text from today's allowance; return the usage document's id, or None when used up."""
        day = self._clock.now().astimezone(ZoneInfo(tenant.timezone)).date().isoformat()
        usage_id = f"{tenant.cloud_id}:{day}"
        query = {"_id": usage_id, "count": {"$lt": tenant.daily_limit}}
        increment = {"$inc": {"count": 1}}
        try:
            self._db.usage.find_one_and_update(
                query, {**increment, "$setOnInsert": {"tenant_id": tenant.cloud_id, "day": day}}, upsert=True)
            return usage_id
        except DuplicateKeyError:
            # Either the day's document is full, or another instance inserted it first.
            taken = self._db.usage.find_one_and_update(query, increment, return_document=ReturnDocument.AFTER)
            return usage_id if taken is not None else None

    def _release_allowance(self, usage_id: str) -> None:
        self._db.usage.update_one({"_id": usage_id, "count": {"$gt": 0}}, {"$inc": {"count": -1}})

    def _next_midnight(self, tenant: Tenant) -> datetime:
        local = self._clock.now().astimezone(ZoneInfo(tenant.timezone))
        tomorrow = datetime.combine(local.date() + timedelta(days=1), time(0, 0), tzinfo=local.tzinfo)
        return tomorrow.astimezone(timezone.utc)

    def _twilio(self, tenant: Tenant):
        return self._twilio_factory(tenant.twilio_account_sid, tenant.twilio_auth_token)


def _pacing_key(tenant: Tenant) -> str:
    return f"{tenant.cloud_id}:{tenant.sender_number}"


def _unset(names: tuple[str, ...]) -> dict:
    return {name: "" for name in names}


def _validate_job(body: object) -> dict:
    if not isinstance(body, dict):
        raise Reject("job is not a JSON object")
    missing = [key for key in JOB_FIELDS if key not in body]
    if missing:
        raise Reject(f"job lacks {', '.join(missing)}")
    if not isinstance(body["segments"], int) or body["segments"] < 1:
        raise Reject(f"job has an invalid segment count {body['segments']!r}")
    return body
