"""Apply Twilio status callbacks and inbound opt-out keywords; write opt-outs and sent texts to iMIS."""

from __future__ import annotations

import logging
from datetime import datetime

from pymongo.database import Database

from libs.common.broker import Reject, Retry
from libs.common.imis import ImisError, ImisUnavailable
from libs.common.imis_queue import EARLIER_ATTEMPT_HEADER, publish_imis_job
from libs.common.logs import log_context
from libs.common.phones import check_number, is_e164, mask_number
from libs.common.progress import CallbackOutcomes, RunProgress, apply_callback_status
from libs.common.tenants import TenantNotFound, TenantRepository
from services.feedback.text_log import SentTextLogger, SentTextNotFound

logger = logging.getLogger(__name__)

OPT_OUT_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
OPT_IN_KEYWORDS = frozenset({"START", "YES", "UNSTOP"})
OPT_OUT_ERROR_CODES = (21610,)
TOLL_FREE_BLOCKED = 30004
MAX_ERROR_CODE_DIGITS = 9
TEXTUNSUB = "TEXTUNSUB"
TEXTUNSUB_CATEGORY = "Text Manager"


def keyword_of(body: str, opt_out_type: str | None) -> str | None:
    """Return "STOP", "START" or None for an inbound text, as Twilio's default keywords read it."""
    if opt_out_type in ("STOP", "START"):
        return opt_out_type
    word = (body or "").strip().upper()
    if word in OPT_OUT_KEYWORDS:
        return "STOP"
    if word in OPT_IN_KEYWORDS:
        return "START"
    return None


class FeedbackService:
    """Store callbacks for the audit trail and move messages and opt-outs forward."""

    def __init__(self, db: Database, *, broker, tenants: TenantRepository, clock, notifier=None):
        self._db = db
        self._broker = broker
        self._tenants = tenants
        self._clock = clock
        self._progress = RunProgress(db, clock)
        self._outcomes = CallbackOutcomes(db, self._progress, broker=broker, notifier=notifier, clock=clock)

    def on_status_callback(self, tenant_id: str, message_id: str, form: dict) -> None:
        """Apply one verified status callback to its message."""
        now = self._clock.now()
        status = form.get("MessageStatus") or form.get("SmsStatus") or ""
        error_code = _int_or_none(form.get("ErrorCode"))
        self._db.callbacks.insert_one({"tenant_id": tenant_id, "message_id": message_id, "kind": "status",
                                       "received_at": now, "form": dict(form)})
        message = self._db.messages.find_one({"_id": message_id, "tenant_id": tenant_id})
        if message is None:
            logger.warning("status callback for an unknown message %s kept in the audit trail", message_id)
            return
        with log_context(tenant_id=tenant_id, campaign_id=message["campaign_id"], run_id=message["run_id"],
                         message_id=message_id):
            if form.get("MessageSid") and not message.get("sid"):
                self._db.messages.update_one({"_id": message_id, "sid": {"$exists": False},
                                              "previous_sids": {"$ne": form["MessageSid"]}},
                                             {"$set": {"sid": form["MessageSid"]}})
            if self._is_opt_out(tenant_id, error_code):
                self._opt_out_from_callback(message, now)
                return
            applied = self._outcomes.apply(tenant_id=tenant_id, message_id=message_id, sid=form.get("MessageSid"),
                                           status=status, error_code=error_code, at=now)
            logger.info("callback %s%s: %s", status, f" ({error_code})" if error_code else "",
                        "applied" if applied else "no change")

    def on_inbound(self, tenant_id: str, form: dict) -> str | None:
        """Record an inbound STOP or START at once; return the keyword acted on."""
        now = self._clock.now()
        self._db.callbacks.insert_one({"tenant_id": tenant_id, "kind": "inbound", "received_at": now,
                                       "form": {key: value for key, value in form.items() if key != "Body"}})
        keyword = keyword_of(form.get("Body", ""), form.get("OptOutType"))
        number = self._normalised(tenant_id, form.get("From", ""))
        if keyword is None or not number:
            return None
        member_ids = sorted({str(m) for m in self._db.messages.distinct("member_id", {"tenant_id": tenant_id, "to": number}) if m})
        if keyword == "STOP":
            self._record_opt_out(tenant_id, number, member_ids, source="inbound-stop", at=now)
        else:
            self._record_opt_in(tenant_id, number, at=now)
        return keyword

    def _normalised(self, tenant_id: str, raw: str) -> str:
        """Return an inbound number in E.164, as texts are stored, so a STOP matches the member's texts.

        Twilio sends E.164. A national number is read in the tenant's default country,
        and one that cannot be read is kept as it came.
        """
        number = raw.strip()
        if not number or is_e164(number):
            return number
        try:
            country = self._tenants.get(tenant_id).default_country
        except TenantNotFound:
            return number
        checked = check_number(number, country)
        if checked.e164 is None:
            logger.warning("inbound From %s is not a phone number (%s); keeping it as it came",
                           mask_number(number), checked.reason)
            return number
        return checked.e164

    def _is_opt_out(self, tenant_id: str, error_code: int | None) -> bool:
        if error_code in OPT_OUT_ERROR_CODES:
            return True
        if error_code == TOLL_FREE_BLOCKED:
            try:
                return self._tenants.get(tenant_id).sender_kind == "toll-free"
            except TenantNotFound:
                return False
        return False

    def _opt_out_from_callback(self, message: dict, now: datetime) -> None:
        applied = apply_callback_status(self._db, self._progress, tenant_id=message["tenant_id"],
                                        message_id=message["_id"], status="opted_out", error_code=21610, at=now)
        if applied:
            sent_at = message.get("sent_at") or now
            self._record_opt_out(message["tenant_id"], message["to"], [message["member_id"]],
                                 source="twilio-callback", at=sent_at)

    def _record_opt_out(self, tenant_id: str, number: str, member_ids: list[str], *, source: str, at: datetime) -> None:
        self._db.optouts.update_one(
            {"_id": f"{tenant_id}:{number}"},
            {"$set": {"tenant_id": tenant_id, "number": number, "opted_out_at": at, "source": source},
             "$addToSet": {"member_ids": {"$each": member_ids}}},
            upsert=True,
        )
        logger.info("opt-out recorded for %s member(s) (%s)", len(member_ids), source)
        if member_ids:
            publish_imis_job(self._broker, {"kind": "textunsub", "tenant_id": tenant_id, "number": number,
                                            "member_ids": member_ids, "sent_at": at.isoformat(), "message_id": None})

    def _record_opt_in(self, tenant_id: str, number: str, *, at: datetime) -> None:
        removed = self._db.optouts.find_one_and_delete({"_id": f"{tenant_id}:{number}"})
        if removed is None:
            return
        logger.info("resubscribe recorded; removing %s TEXTUNSUB activities", len(removed.get("activities", [])))
        if removed.get("activities"):
            publish_imis_job(self._broker, {"kind": "resubscribe", "tenant_id": tenant_id, "number": number,
                                            "member_ids": removed.get("member_ids", []),
                                            "activities": removed["activities"], "sent_at": at.isoformat(),
                                            "message_id": None})


class ImisWriter:
    """Writer of iMIS jobs: it logs sent texts, writes TEXTUNSUB activities, and deletes them on resubscribe.

    Each activity's SEQN is stored on the opt-out, because deleting by member id alone
    would remove all of a member's activities. Before writing, the member's existing
    TEXTUNSUB rows are read, so a write repeated after a crash does not duplicate one.
    A sent text ("sent") is logged by SentTextLogger, which stores the entry's key on
    the message.
    """

    KINDS = ("sent", "textunsub", "resubscribe")

    def __init__(self, db: Database, *, tenants: TenantRepository, imis_factory, clock, notifier=None):
        self._db = db
        self._tenants = tenants
        self._imis_factory = imis_factory
        self._clock = clock
        self._text_log = SentTextLogger(db, notifier=notifier, clock=clock)

    def handle(self, delivery) -> None:
        body = delivery.body
        if not isinstance(body, dict) or body.get("kind") not in self.KINDS:
            raise Reject(f"iMIS job needs a kind of {', '.join(self.KINDS)}")
        with log_context(tenant_id=body.get("tenant_id"), message_id=body.get("message_id")):
            try:
                tenant = self._tenants.get(body["tenant_id"])
            except (TenantNotFound, KeyError):
                raise Reject(f"unknown tenant {body.get('tenant_id')!r}") from None
            imis = self._imis_factory(tenant)
            try:
                if body["kind"] == "sent":
                    self._log_sent_text(tenant, imis, delivery)
                elif body["kind"] == "textunsub":
                    self._write_textunsub(imis, body)
                else:
                    self._delete_textunsub(imis, body)
            except ImisUnavailable as error:
                raise Retry(f"iMIS unavailable: {error.message}") from None
            except ImisError as error:
                raise Reject(f"iMIS rejected the {body['kind']} entry: {error.message}") from None

    def _log_sent_text(self, tenant, imis, delivery) -> None:
        message_id = delivery.body.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            raise Reject("a sent-text job needs the message_id of the text")
        repeated = delivery.redelivered or delivery.attempt > 1 or bool(delivery.headers.get(EARLIER_ATTEMPT_HEADER))
        try:
            self._text_log.log(tenant, imis, message_id, repeated=repeated)
        except SentTextNotFound as error:
            raise Reject(str(error)) from None

    def _write_textunsub(self, imis, body: dict) -> None:
        optout_id = f"{body['tenant_id']}:{body['number']}"
        optout = self._db.optouts.find_one({"_id": optout_id, "tenant_id": body["tenant_id"]})
        if optout is None:
            logger.info("the number resubscribed before the activity was written; nothing to do")
            return
        written = {entry["member_id"] for entry in optout.get("activities", [])}
        sent_at = datetime.fromisoformat(body["sent_at"])
        for member_id in body["member_ids"]:
            if member_id in written:
                continue
            seqn = self._existing_activity(imis, member_id, body["number"])
            if seqn is None:
                seqn = imis.create_activity(party_id=member_id, activity_type=TEXTUNSUB, transaction_date=sent_at,
                                            category=TEXTUNSUB_CATEGORY, uf_1=body["number"])
            self._db.optouts.update_one({"_id": optout_id},
                                        {"$push": {"activities": {"member_id": member_id, "seqn": seqn}}})
            logger.info("TEXTUNSUB activity %s written for member %s", seqn, member_id)

    @staticmethod
    def _existing_activity(imis, member_id: str, number: str) -> str | None:
        for activity in imis.find_activities(member_id, TEXTUNSUB):
            if activity.get("uf_1") == number:
                return activity["seqn"]
        return None

    def _delete_textunsub(self, imis, body: dict) -> None:
        for entry in body.get("activities", []):
            deleted = imis.delete_activity(entry["seqn"])
            logger.info("TEXTUNSUB activity %s for member %s %s", entry["seqn"], entry["member_id"],
                        "deleted" if deleted else "was already gone")


def _int_or_none(value: object) -> int | None:
    """Return a Twilio error code as an int, or None when it is missing or not a code.

    Twilio's codes have 5 digits. Longer digit strings are refused, because the store
    takes only 8-byte integers.
    """
    text = str(value).strip() if value is not None else ""
    if not text.isdigit() or not text.isascii() or len(text) > MAX_ERROR_CODE_DIGITS:
        return None
    return int(text)
