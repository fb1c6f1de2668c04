"""Texts whose Twilio call has an unknown outcome: find them in Twilio's message list, record them sent.

The sender reconciles a lapsed claim before it sends again, and the scheduler's
dead-letter handler reconciles a text before it records it as failed.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from pymongo.database import Database

from libs.common.progress import RunProgress
from libs.common.tenants import Tenant
from libs.common.twilio_client import ListedMessage

logger = logging.getLogger(__name__)

# The fields of a sender's hold on a message; they go when the message is recorded or set aside.
CLAIM_FIELDS = ("claim_token", "claim_until", "call_started_at")
# Twilio's dates have whole seconds and clocks drift: the message list is read from this
# long before the first call whose outcome is unknown.
RECONCILE_MARGIN = timedelta(minutes=1)


def unknown_outcome_since(message: dict | None) -> datetime | None:
    """Return when the first Twilio call of a claimed message started, or None when no call started.

    A message still `sending` with `call_started_at` set may have reached Twilio: its
    call was made, but no response was recorded.
    """
    if not message or message.get("status") != "sending" or not message.get("call_started_at"):
        return None
    return message.get("first_call_at") or message["call_started_at"]


def find_created_message(twilio, tenant: Tenant, job: dict, since: datetime, *, db: Database) -> ListedMessage | None:
    """Return the message Twilio created for the job's text at or after `since`, or None.

    A listed message matches when it has the job's body and comes from the tenant's
    sender number (or from a messaging service, which lists no number). Its SID must
    also be on no message in the store, because a text of another run to the same
    member, or an earlier attempt of this one, is not this attempt. Raises TwilioError
    or TwilioUnavailable when the list cannot be read.
    """
    sent_after = since.replace(tzinfo=timezone.utc) - RECONCILE_MARGIN
    for message in twilio.list_messages(to=job["to"], sent_after=sent_after):
        if message.body != job["body"] or message.from_ not in (tenant.sender_number, None, ""):
            continue
        if _sid_recorded(db, job["tenant_id"], message.sid):
            logger.info("Twilio's %s is already recorded on a text, so it is not this attempt", message.sid)
            continue
        return message
    return None


def _sid_recorded(db: Database, tenant_id: str, sid: str) -> bool:
    return db.messages.find_one({"tenant_id": tenant_id, "$or": [{"sid": sid}, {"previous_sids": sid}]},
                                {"_id": 1}) is not None


def record_sent(db: Database, progress: RunProgress, job: dict, claim_token: str, sid: str, *,
                at: datetime) -> bool:
    """Record that Twilio accepted the claimed message as `sid` at `at`, and count it sent once.

    Returns True when this call counted the text as sent, and False when it had been
    counted before or the claim was lost, in which case nothing was recorded.
    """
    claimed = {"_id": job["message_id"], "tenant_id": job["tenant_id"], "claim_token": claim_token}
    unset_claim = {name: "" for name in CLAIM_FIELDS}
    before = db.messages.find_one_and_update(
        {**claimed, "status": "sending"},
        {"$set": {"status": "sent", "sid": sid, "sent_at": at}, "$unset": unset_claim},
    )
    if before is None:
        # A status callback got here first and moved the status on; keep its status.
        before = db.messages.find_one_and_update(claimed, {"$set": {"sid": sid, "sent_at": at},
                                                           "$unset": unset_claim})
    if before is None:
        logger.warning("claim lost before the send was recorded (sid %s); the next attempt reconciles", sid)
        return False
    logger.info("sent as %s", sid)
    if before.get("sent_at") is not None:
        return False
    progress.count(job["run_id"], sent=1)
    return True
