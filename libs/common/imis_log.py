"""Record a sent text in iMIS, as an interaction in the communication log or as a TEXTMSG activity.

Each organisation chooses one of TEXT_LOG_MODES in its settings. The two writers share
one small interface, so the feedback service can fall back from one to the other.
Whatever records a text as sent calls `publish_sent_text`, and the feedback service's
iMIS writer consumes the event.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from pymongo.database import Database

from libs.common.broker import PublishError
from libs.common.imis import naive_utc_timestamp
from libs.common.imis_queue import publish_imis_job

logger = logging.getLogger(__name__)

INTERACTION = "interaction"
ACTIVITY = "activity"
OFF = "off"
TEXT_LOG_MODES = (INTERACTION, ACTIVITY, OFF)
DEFAULT_TEXT_LOG_MODE = INTERACTION

TEXTMSG = "TEXTMSG"
# The CATEGORY ("CEU type") that marks the rows Text Manager writes, as on TEXTUNSUB rows.
TEXT_MANAGER_CATEGORY = "Text Manager"
# The communication log's message type for a text message.
SMS_MESSAGE_TYPE = 1
# The `kind` of the `tm.imis` event that requests the iMIS log of a sent text.
SENT_TEXT_KIND = "sent"


@dataclass(frozen=True)
class SentText:
    """A text that Twilio accepted, with what iMIS needs to record it.

    `member_id` is the member's iMIS ID, `to` the number in E.164 form and `sent_at`
    the time the sender recorded the text as sent.
    """

    member_id: str
    to: str
    body: str
    sent_at: datetime
    subject: str


@dataclass(frozen=True)
class TextLogEntry:
    """The row iMIS stored for a sent text: its kind and its key (None when iMIS returned no key)."""

    kind: str
    key: str | None


class TextLogWriter(Protocol):
    """A writer that stores a sent text in iMIS in one form, named by `kind`: INTERACTION or ACTIVITY."""

    kind: str

    def write(self, imis, text: SentText) -> TextLogEntry:
        """Store the text in iMIS and return the stored row; raise ImisError subclasses."""

    def find(self, imis, text: SentText) -> TextLogEntry | None:
        """Return the row an earlier write stored for this text, or None when none is found."""


class CommunicationLogWriter:
    """Writer of sent texts as SMS interactions in the member's communication log.

    iMIS dates the entry at the time of the write, so the entry is written as soon as
    the text is sent. Older sites respond with 404 or 501, raised as ImisNotSupported.
    """

    kind = INTERACTION

    def write(self, imis, text: SentText) -> TextLogEntry:
        key = imis.create_communication_log(recipient_id=text.member_id, subject=text.subject,
                                            html=body_as_html(text.body), message_type=SMS_MESSAGE_TYPE)
        return TextLogEntry(INTERACTION, key)

    def find(self, imis, text: SentText) -> TextLogEntry | None:
        # NOTE: no way to search the communication log over REST is confirmed, so an entry
        # whose write had an unknown outcome is not found here and may be written twice.
        return None


class TextmsgActivityWriter:
    """Writer of sent texts as TEXTMSG activities dated the time of the send, in UTC.

    The row carries the member's iMIS ID, CATEGORY "Text Manager", the number in UF_1
    and the text in the note. The TEXTMSG activity type must exist in iMIS.
    """

    kind = ACTIVITY

    def write(self, imis, text: SentText) -> TextLogEntry:
        seqn = imis.create_activity(party_id=text.member_id, activity_type=TEXTMSG, transaction_date=text.sent_at,
                                    category=TEXT_MANAGER_CATEGORY, uf_1=text.to, note=text.body)
        return TextLogEntry(ACTIVITY, seqn)

    def find(self, imis, text: SentText) -> TextLogEntry | None:
        sent_at = naive_utc_timestamp(text.sent_at)
        for activity in imis.find_activities(text.member_id, TEXTMSG):
            same_time = str(activity.get("transaction_date") or "")[:len(sent_at)] == sent_at
            if activity.get("uf_1") == text.to and same_time:
                return TextLogEntry(ACTIVITY, activity["seqn"])
        return None


WRITERS: dict[str, TextLogWriter] = {INTERACTION: CommunicationLogWriter(), ACTIVITY: TextmsgActivityWriter()}


def publish_sent_text(broker, db: Database, job: dict, sent_at: datetime, *, clock) -> bool:
    """Publish the event that requests the iMIS log of a text recorded as sent; return whether it was published.

    Call it after the send is recorded, once per text. A failed publish must not send
    the text again, so it is not raised: it is logged, and the message records the
    iMIS log as missing.
    """
    event = {"kind": SENT_TEXT_KIND, "tenant_id": job["tenant_id"], "number": job["to"],
             "member_ids": [job["member_id"]], "sent_at": sent_at.isoformat(), "message_id": job["message_id"]}
    try:
        publish_imis_job(broker, event, message_id=f"{SENT_TEXT_KIND}:{job['message_id']}")
        return True
    except PublishError as error:
        logger.error("publishing the iMIS log of the sent text failed, so iMIS will not record it: %s", error)
        db.messages.update_one(
            {"_id": job["message_id"], "tenant_id": job["tenant_id"]},
            {"$set": {"imis_log": {"status": "missing", "reason": f"the event was not published: {error}",
                                   "at": clock.now()}}},
        )
        return False


def body_as_html(body: str) -> str:
    """Return a text as HTML for the communication log: escaped, with line breaks kept."""
    return html.escape(body.replace("\r\n", "\n")).replace("\n", "<br>")


