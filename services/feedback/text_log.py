"""Log each sent text in iMIS in the form the organisation's setting selects, and record the outcome on the message.

The message's `imis_log` field records the outcome:
- `{"status": "written", "kind", "key", "written_at", "fallback"}`: iMIS stored the
  text as an interaction or a TEXTMSG activity under `key`. `fallback` is true when an
  interaction was asked for but the site does not take interactions.
- `{"status": "off", "at"}`: the organisation logs no texts in iMIS.
- `{"status": "failed", "error", "at"}`: iMIS rejected the entry.
- `{"status": "missing", "reason", "at"}`: written by the sender when it could not
  publish the event, so no entry will be written.
A sent text without the field is still waiting for the iMIS writer.
"""

from __future__ import annotations

import logging

from pymongo.database import Database

from libs.common.imis import ImisError, ImisNotSupported, ImisUnavailable
from libs.common.clock import as_utc
from libs.common.imis_log import ACTIVITY, INTERACTION, OFF, WRITERS, SentText, TextLogEntry
from libs.common.tenants import Tenant

logger = logging.getLogger(__name__)

# After a site responds that it has no communication log, texts go straight to TEXTMSG
# activities for this long before the communication log is tried again. It saves one
# failing call per text, and a site upgrade is noticed within the hour.
NO_INTERACTIONS_RECHECK_S = 3600.0
SUBJECT_PREFIX = "Text Manager"


class SentTextNotFound(LookupError):
    """The event names a message that this tenant does not have."""


class SentTextLogger:
    """Writer of one iMIS entry per sent text, so an event delivered again writes nothing more.

    The entry's key is stored on the message, and a message already logged is skipped.
    When an event comes back after a failed attempt, the TEXTMSG activities are searched
    first, because that attempt may have stored one before it failed.
    """

    def __init__(self, db: Database, *, notifier, clock):
        self._db = db
        self._notifier = notifier
        self._clock = clock
        # (tenant id, iMIS base URL) -> clock time when the site responded that it has no communication log.
        self._no_interactions_since: dict[tuple[str, str], float] = {}

    def log(self, tenant: Tenant, imis, message_id: str, *, repeated: bool) -> TextLogEntry | None:
        """Write the text's iMIS entry unless it exists or the setting is off; return the entry.

        `repeated` means that an earlier attempt of this event may have reached iMIS.
        Raises SentTextNotFound for an unknown message, ImisUnavailable to try again
        later, and other ImisError subclasses when iMIS rejects the entry. A rejection
        is recorded on the message, and the administrator gets one notice about it.
        """
        message = self._db.messages.find_one({"_id": message_id, "tenant_id": tenant.cloud_id})
        if message is None or not message.get("sent_at"):
            raise SentTextNotFound(f"no sent text {message_id} for tenant {tenant.cloud_id}")
        if (message.get("imis_log") or {}).get("status") == "written":
            logger.info("the text is already logged in iMIS as %s %s", message["imis_log"].get("kind"),
                        message["imis_log"].get("key"))
            return None
        if tenant.imis_text_log == OFF:
            self._record(message, {"status": "off", "at": self._clock.now()})
            return None

        text = self._sent_text(tenant, message)
        try:
            entry, fallback = self._write(tenant, imis, text, repeated=repeated)
        except ImisUnavailable:
            raise
        except ImisError as error:
            self._record_failure(tenant, message, error)
            raise
        self._record(message, {"status": "written", "kind": entry.kind, "key": entry.key,
                               "written_at": self._clock.now(), "fallback": fallback})
        logger.info("text logged in iMIS as %s %s%s", entry.kind, entry.key, " (fallback)" if fallback else "")
        return entry

    def _write(self, tenant: Tenant, imis, text: SentText, *, repeated: bool) -> tuple[TextLogEntry, bool]:
        """Write the entry the setting selects, or a TEXTMSG activity where the site has no interactions.

        Returns the entry and whether it is a fallback activity.
        """
        if repeated:
            earlier = WRITERS[ACTIVITY].find(imis, text)
            if earlier is not None:
                logger.info("an earlier attempt stored TEXTMSG activity %s; not writing again", earlier.key)
                return earlier, tenant.imis_text_log == INTERACTION

        if tenant.imis_text_log == INTERACTION and not self._site_lacks_interactions(tenant):
            try:
                return WRITERS[INTERACTION].write(imis, text), False
            except ImisNotSupported as error:
                self._on_no_interactions(tenant, error)
        return WRITERS[ACTIVITY].write(imis, text), tenant.imis_text_log == INTERACTION

    def _site_lacks_interactions(self, tenant: Tenant) -> bool:
        since = self._no_interactions_since.get((tenant.cloud_id, tenant.imis_base_url))
        return since is not None and self._clock.time() - since < NO_INTERACTIONS_RECHECK_S

    def _on_no_interactions(self, tenant: Tenant, error: ImisNotSupported) -> None:
        """Remember that the site has no communication log, and tell staff the first time."""
        self._no_interactions_since[(tenant.cloud_id, tenant.imis_base_url)] = self._clock.time()
        first = self._notify(
            tenant, f"no-interactions:{tenant.imis_base_url}",
            "Texts are logged in iMIS as TEXTMSG activities, not interactions",
            f"{error.message} Text Manager logs each sent text as a TEXTMSG activity instead. "
            "To keep doing so without this notice, choose \"TEXTMSG activity\" for the iMIS log in "
            "Settings, and check that the TEXTMSG activity type exists in iMIS "
            "(Settings > Contacts > Activity Types).",
        )
        if first:
            logger.warning("iMIS at %s does not take interactions; logging texts as TEXTMSG activities",
                           tenant.imis_base_url)

    def _record_failure(self, tenant: Tenant, message: dict, error: ImisError) -> None:
        reason = error.message
        self._record(message, {"status": "failed", "error": reason, "at": self._clock.now()})
        self._notify(
            tenant, f"text-log-failed:{tenant.imis_text_log}", "Sent texts are not being logged in iMIS",
            f"iMIS rejected the log entry of a sent text: {reason} Texts are still sent. Correct the "
            "problem in iMIS, or choose another iMIS log setting in Settings.",
        )

    def _notify(self, tenant: Tenant, key: str, subject: str, text: str) -> bool:
        if self._notifier is None:
            return True
        return self._notifier.notify(tenant_id=tenant.cloud_id, recipients=[tenant.default_email],
                                     subject=subject, text=text, dedupe_key=key)

    def _sent_text(self, tenant: Tenant, message: dict) -> SentText:
        campaign = self._db.campaigns.find_one({"_id": message.get("campaign_id"), "tenant_id": tenant.cloud_id},
                                               {"name": 1})
        subject = f"{SUBJECT_PREFIX}: {campaign['name']}" if campaign and campaign.get("name") else SUBJECT_PREFIX
        return SentText(member_id=str(message["member_id"]), to=message["to"], body=message.get("body") or "",
                        sent_at=as_utc(message["sent_at"]), subject=subject)

    def _record(self, message: dict, outcome: dict) -> None:
        """Store the outcome on the message, unless an entry is already recorded there."""
        self._db.messages.update_one(
            {"_id": message["_id"], "tenant_id": message["tenant_id"], "imis_log.status": {"$ne": "written"}},
            {"$set": {"imis_log": outcome}},
        )
