"""Twilio Messages client shared by the services, built on the twilio library."""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Mapping

import requests
from twilio.base import values
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http import HttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from libs.common.phones import mask_number, mask_number_in

logger = logging.getLogger(__name__)

# Bounds the reconciliation read: one recipient rarely has more texts than this.
MAX_LISTED_MESSAGES = 200
LIST_PAGE_SIZE = 50


class TwilioError(Exception):
    """Twilio rejected a request.

    `http_status` is the HTTP status, `code` the Twilio error code (None when the response
    had none) and `message` Twilio's text.
    """

    def __init__(self, http_status: int, code: int | None, message: str):
        super().__init__(f"Twilio error {code} (HTTP {http_status}): {message}")
        self.http_status = http_status
        self.code = code
        self.message = message


class TwilioUnavailable(Exception):
    """Twilio could not be reached or did not respond in time, so the outcome is unknown."""


@dataclass(frozen=True)
class CreatedMessage:
    """Twilio's response to a successful create."""

    sid: str
    status: str
    num_segments: int
    date_created: dt.datetime | None


@dataclass(frozen=True)
class ListedMessage:
    """One message from Twilio's message list."""

    sid: str
    to: str
    from_: str | None
    body: str | None
    status: str
    date_created: dt.datetime | None


class TwilioGateway:
    """Sends texts and reads the message list of one Twilio account.

    With `base_url` (for example a simulator's URL) every request goes there, and the
    TWILIO_EDGE and TWILIO_REGION variables are ignored because they rewrite host names.
    `timeout_s` bounds each HTTP request; an `http_client` given instead brings its own.
    """

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        base_url: str | None = None,
        timeout_s: float = 10.0,
        http_client: HttpClient | None = None,
    ):
        self.account_sid = account_sid
        http_client = http_client or TwilioHttpClient(timeout=timeout_s)
        self._client = Client(account_sid, auth_token, http_client=http_client)
        if base_url is not None:
            self._client.api.base_url = base_url.rstrip("/")
            self._client.edge = None
            self._client.region = None

    def create_message(
        self,
        *,
        to: str,
        from_: str | None = None,
        messaging_service_sid: str | None = None,
        body: str,
        status_callback: str | None = None,
        smart_encoded: bool = False,
    ) -> CreatedMessage:
        """Create (send) one text from a number or a Messaging Service.

        Raises TwilioError when Twilio rejects it, and TwilioUnavailable when the call
        timed out or the connection failed, so the text may or may not have been created.
        """
        try:
            message = self._client.messages.create(
                to=to,
                from_=from_ or values.unset,
                messaging_service_sid=messaging_service_sid or values.unset,
                body=body,
                status_callback=status_callback or values.unset,
                smart_encoded=True if smart_encoded else values.unset,
            )
        except (TwilioException, requests.RequestException, json.JSONDecodeError) as error:
            raise _translate(error, "create a message", to) from error

        logger.info("Twilio accepted message %s to %s with status %s", message.sid, mask_number(to), message.status)
        return CreatedMessage(
            sid=message.sid,
            status=message.status,
            num_segments=int(message.num_segments or 0),
            date_created=message.date_created,
        )

    def list_messages(self, *, to: str, sent_after: dt.datetime) -> list[ListedMessage]:
        """Return the messages to `to` created at or after `sent_after`, newest first.

        Used to learn whether a create whose outcome is unknown reached Twilio. The list
        is filtered on `to` alone and then on date_created here, because a text still
        queued has no date_sent, so a DateSent filter would miss it. Twilio's dates have
        whole seconds, so `sent_after` is rounded down to the second; callers subtract
        their own margin for clock skew. At most MAX_LISTED_MESSAGES are read.
        Raises TwilioError or TwilioUnavailable, and ValueError for a naive `sent_after`.
        """
        if sent_after.tzinfo is None:
            raise ValueError("sent_after must be timezone-aware")
        cutoff = sent_after.replace(microsecond=0)
        try:
            found = self._client.messages.stream(to=to, limit=MAX_LISTED_MESSAGES, page_size=LIST_PAGE_SIZE)
            listed = [_listed(message) for message in found]
        except (TwilioException, requests.RequestException, json.JSONDecodeError) as error:
            raise _translate(error, "list messages", to) from error
        return [m for m in listed if m.date_created is not None and m.date_created >= cutoff]


def verify_signature(auth_token: str, url: str, params: Mapping[str, str], signature: str | None) -> bool:
    """Return whether `signature` (the X-Twilio-Signature header) signs this request.

    `url` must be the full public URL Twilio called, query string included, and
    `params` every POST parameter received. A missing signature is invalid.
    """
    if not signature:
        return False
    return RequestValidator(auth_token).validate(url, dict(params), signature)


def _listed(message) -> ListedMessage:
    return ListedMessage(
        sid=message.sid,
        to=message.to,
        from_=message.from_,
        body=message.body,
        status=message.status,
        date_created=message.date_created,
    )


def _translate(error: Exception, action: str, to: str) -> TwilioError | TwilioUnavailable:
    """Map an exception from the twilio library or requests to TwilioError or TwilioUnavailable.

    An unreadable response counts as unavailable, because the request may have been carried out.
    The number `to` is masked in the returned error's text, because callers log that
    text and pass it on in retry reasons. Twilio's messages can contain the number
    (21211 reads "The 'To' number +1... is not a valid phone number."), and so does the
    list URL in a connection error.
    """
    if isinstance(error, TwilioRestException):
        translated = TwilioError(error.status, _twilio_code(error.code),
                                 mask_number_in(_strip_library_prefix(error.msg), to))
    elif isinstance(error, TwilioServiceException):
        translated = TwilioError(error.status, _twilio_code(error.code),
                                 mask_number_in(error.detail or error.title, to))
    elif isinstance(error, TwilioException) and len(error.args) > 1 and hasattr(error.args[1], "status_code"):
        translated = _from_page_error(error.args[1], to)
    else:
        described = f"Twilio did not respond to a request to {action}: {error!r}"
        translated = TwilioUnavailable(mask_number_in(described, to))

    logger.warning("failed to %s for %s: %s", action, mask_number(to), translated)
    return translated


def _from_page_error(response, to: str) -> TwilioError:
    """Build a TwilioError from a list page response whose status was not 200, with `to` masked."""
    try:
        payload = json.loads(response.text)
    except ValueError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    code = _twilio_code(payload.get("code"))
    message = str(payload.get("message", "unable to fetch page"))
    return TwilioError(response.status_code, code, mask_number_in(message, to))


def _strip_library_prefix(message: str) -> str:
    """Drop the "Unable to create record: " style prefix the twilio library adds."""
    prefix, separator, rest = message.partition(": ")
    return rest if separator and prefix.startswith("Unable to ") else message


def _twilio_code(value: object) -> int | None:
    """Return the Twilio error code, or None for a missing one.

    Twilio codes have five digits. For an error body without a code the twilio library
    puts the HTTP status in `code`, which is not a Twilio code and so becomes None.
    """
    try:
        code = int(value)
    except (TypeError, ValueError):
        return None
    return code if code >= 10000 else None

