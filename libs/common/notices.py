"""E-mail notices to a tenant's administrator when sending goes wrong."""

from __future__ import annotations

import logging
import smtplib
from email.message import EmailMessage
from urllib.parse import urlparse

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

logger = logging.getLogger(__name__)


class Notifier:
    """Record each notice in the store and send it by SMTP when a server is configured.

    Every notice is kept in `notifications`, so the dashboard shows it even where no
    SMTP server is set (the embedded default). A `dedupe_key` sends a notice only once.
    """

    def __init__(self, db: Database, *, smtp_url: str = "", mail_from: str = "", clock=None):
        self._collection = db.notifications
        self._smtp_url = smtp_url
        self._mail_from = mail_from
        self._clock = clock

    def notify(self, *, tenant_id: str, recipients: list[str], subject: str, text: str,
               dedupe_key: str | None = None) -> bool:
        """Store and send a notice; return False when one with this key was already sent."""
        addresses = sorted({address for address in recipients if address})
        document = {
            "tenant_id": tenant_id,
            "to": addresses,
            "subject": subject,
            "text": text,
            "created_at": self._clock.now() if self._clock else None,
        }
        if dedupe_key:
            document["_id"] = f"{tenant_id}:{dedupe_key}"
        try:
            self._collection.insert_one(document)
        except DuplicateKeyError:
            return False
        logger.warning("notice to %s: %s", ", ".join(addresses) or "(no address set)", subject)
        if self._smtp_url and addresses:
            self._send(addresses, subject, text)
        return True

    def _send(self, addresses: list[str], subject: str, text: str) -> None:
        message = EmailMessage()
        message["From"] = self._mail_from
        message["To"] = ", ".join(addresses)
        message["Subject"] = subject
        message.set_content(text)
        target = urlparse(self._smtp_url)
        try:
            smtp_class = smtplib.SMTP_SSL if target.scheme == "smtps" else smtplib.SMTP
            with smtp_class(target.hostname or "localhost", target.port or 25, timeout=10) as smtp:
                if target.username:
                    smtp.login(target.username, target.password or "")
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException):
            logger.exception("sending the notice %r by SMTP failed; it stays in the dashboard", subject)


def notify_run_failed(notifier: Notifier, *, run: dict, campaign: dict, admin_email: str, reason: str) -> bool:
    """Send the tenant's administrator and the campaign's address the notice that a run failed.

    The notice is sent once per run, whichever service failed it. Returns False when
    it was sent before.
    """
    return notifier.notify(
        tenant_id=run["tenant_id"], recipients=[admin_email, campaign.get("email", "")],
        subject=f"Text Manager could not send the campaign {campaign.get('name', run['campaign_id'])!r}",
        text=f"{reason}\n\nNo more texts of this run will be sent. {_how_to_send_again(run)}",
        dedupe_key=f"run-failed:{run['_id']}",
    )


def _how_to_send_again(run: dict) -> str:
    """Return what staff do after a failed run, as the campaign's page in the web UI offers it."""
    steps = ("Fix the cause, then open the campaign in Text Manager and use Send now or Schedule under "
             "Send again.")
    sent = run.get("counts", {}).get("sent", 0)
    if not sent:
        return steps
    return (f"{steps} This run had already sent {sent:,} texts, and sending again texts everyone in the "
            "campaign's query, those members included, so Text Manager asks you to confirm first.")
