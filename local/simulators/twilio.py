"""Local stand-in for Twilio's Messages API, status callbacks and inbound webhook."""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import heapq
import itertools
import logging
import re
import signal
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import format_datetime
from typing import Callable, Iterable
from urllib.parse import urlencode

import requests
from flask import Flask, Response, jsonify, request
from twilio.request_validator import RequestValidator
from werkzeug.exceptions import HTTPException
from werkzeug.serving import WSGIRequestHandler, make_server

logger = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
MESSAGES_PATH = "/2010-04-01/Accounts/{account_sid}/Messages"
SERVICE_SENDER = "+12025550100"
MAX_BODY_CHARS = 1600
MAX_VALIDITY_PERIOD_S = 36000
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
CALLBACK_TIMEOUT_S = 10.0
CALLBACK_CONNECT_ATTEMPTS = 3
CALLBACK_WORKERS = 8

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
MESSAGING_SERVICE_SID = re.compile(r"^MG[0-9a-fA-F]{32}$")

OPT_OUT_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
OPT_IN_KEYWORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_KEYWORDS = frozenset({"HELP", "INFO"})

# Message templates for the error codes the simulator returns. Placeholders such as {to}
# and {from_} are filled in per request, and missing ones are left empty.
ERROR_MESSAGES = {
    20001: "Invalid value for {parameter}: {value}",
    20003: "Authentication failed: the Account SID or auth token is wrong.",
    20004: "Method not allowed on {path}",
    20404: "The requested resource {path} was not found",
    20429: "Too many concurrent requests",
    20500: "Internal server error",
    21211: "The 'To' number {to} is not a valid phone number.",
    21408: "Permission to send an SMS has not been enabled for the region of the 'To' number: {to}.",
    21602: "Message body is required.",
    21603: "A 'From' phone number or a 'MessagingServiceSid' is required.",
    21604: "A 'To' phone number is required.",
    21606: "The 'From' phone number {from_} cannot send messages to {to}.",
    21610: "Attempt to send to unsubscribed recipient {to}.",
    21611: "The 'From' number {from_} has exceeded the maximum number of queued messages.",
    21612: "The 'To' phone number {to} is not reachable by SMS from the 'From' phone number.",
    21614: "The 'To' number {to} is not a valid mobile number.",
    21617: "The concatenated message body exceeds the 1600 character limit.",
    21701: "The Messaging Service Sid {service} is invalid.",
    30001: "Queue overflow",
    30003: "Unreachable destination handset",
    30004: "Message blocked",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered",
    30008: "Unknown error",
    30032: "Toll-free number has not been verified",
    30036: "Validity period expired",
    30410: "Provider timeout error",
    90007: "The ValidityPeriod {value} is outside the range 1-36000 seconds.",
    90014: "The ValidityPeriod {value} is not a positive integer.",
}

# GSM 03.38 default alphabet (one septet each) and its extension table (two septets each).
GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = "\f^{}\\[~]|€"
GSM7_SEPTETS = {**{char: 1 for char in GSM7_BASIC}, **{char: 2 for char in GSM7_EXTENSION}}

# Look-alikes that Smart Encoding replaces with GSM-7 characters before counting.
SMART_REPLACEMENTS = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"',
    "\u2013": "-", "\u2014": "-", "\u2026": "...", "\u00a0": " ", "\u2009": " ",
}


class SimulatorError(Exception):
    """Twilio error response with its HTTP status, Twilio code and message."""

    def __init__(self, code: int, http_status: int = 400, **fields: object):
        self.code = code
        self.http_status = http_status
        template = ERROR_MESSAGES.get(code, "Error {code}")
        self.message = template.format_map(_BlankWhenMissing(fields, code=code))
        super().__init__(self.message)

    def to_dict(self) -> dict:
        """Return the body Twilio sends for this error."""
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.http_status,
        }


class _BlankWhenMissing(dict):
    """Format arguments that leave a placeholder without a value empty."""

    def __missing__(self, key: str) -> str:
        return ""


def _count_segments(body: str, *, smart_encoded: bool = False) -> int:
    """Return the number of SMS segments Twilio bills for the body."""
    if smart_encoded:
        body = "".join(SMART_REPLACEMENTS.get(char, char) for char in body)
    if all(char in GSM7_SEPTETS for char in body):
        units = [GSM7_SEPTETS[char] for char in body]
        return _pack_segments(units, single=160, concatenated=153)
    units = [2 if ord(char) > 0xFFFF else 1 for char in body]
    return _pack_segments(units, single=70, concatenated=67)


def _pack_segments(units: list[int], *, single: int, concatenated: int) -> int:
    """Return the segment count, filling greedily without splitting an escape or surrogate pair."""
    if sum(units) <= single:
        return 1
    segments, used = 1, 0
    for size in units:
        if used + size > concatenated:
            segments, used = segments + 1, 0
        used += size
    return segments


def _keyword_type(body: str) -> str | None:
    """Return STOP, START or HELP when the whole body is a default Twilio keyword."""
    word = body.strip().upper()
    if word in OPT_OUT_KEYWORDS:
        return "STOP"
    if word in OPT_IN_KEYWORDS:
        return "START"
    if word in HELP_KEYWORDS:
        return "HELP"
    return None


def _rfc2822(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    return format_datetime(dt.datetime.fromtimestamp(epoch_s, dt.timezone.utc))


def _new_sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


@dataclass
class _DeliveryError:
    """A delivery error a number's texts end with: for `remaining` more texts, or all when None."""

    status: str
    code: int
    remaining: int | None

    def take(self) -> bool:
        """Return True when the next text to the number fails, counting it."""
        if self.remaining is None:
            return True
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


@dataclass
class _Lifecycle:
    """The statuses a message still has to go through, posted one after another."""

    sid: str
    steps: list[tuple[str, int | None]]
    status_callback: str | None


@dataclass(order=True)
class _Timer:
    due: float
    seq: int
    lifecycle: _Lifecycle = field(compare=False)


class _LifecycleRunner:
    """Advances message statuses after a delay and posts each status callback in turn.

    A message's next step is scheduled only after its previous callback was posted, so
    the callbacks of one message arrive in order. Delays run on the monotonic clock.
    """

    def __init__(self, apply_step: Callable[[_Lifecycle], None], delay_s: float):
        self._apply_step = apply_step
        self.delay_s = delay_s
        self._timers: list[_Timer] = []
        self._seq = itertools.count()
        self._wakeup = threading.Condition()
        self._stopping = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._dispatcher: threading.Thread | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._pool = ThreadPoolExecutor(max_workers=CALLBACK_WORKERS, thread_name_prefix="twilio-sim-callback")
        self._dispatcher = threading.Thread(target=self._dispatch, name="twilio-sim-timers", daemon=True)
        self._dispatcher.start()

    def stop(self) -> None:
        """Stop posting; steps still waiting are dropped."""
        self._stopping.set()
        with self._wakeup:
            self._timers.clear()
            self._wakeup.notify_all()
        if self._dispatcher is not None:
            self._dispatcher.join(timeout=5)
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._dispatcher = self._pool = None

    @property
    def stopping(self) -> threading.Event:
        return self._stopping

    def schedule(self, lifecycle: _Lifecycle) -> None:
        with self._wakeup:
            if self._stopping.is_set():
                return
            due = time.monotonic() + self.delay_s
            heapq.heappush(self._timers, _Timer(due, next(self._seq), lifecycle))
            self._wakeup.notify()

    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            lifecycle = self._next_due()
            if lifecycle is not None:
                self._pool.submit(self._run_step, lifecycle)

    def _next_due(self) -> _Lifecycle | None:
        with self._wakeup:
            if not self._timers:
                self._wakeup.wait(timeout=0.5)
                return None
            wait_s = self._timers[0].due - time.monotonic()
            if wait_s > 0:
                self._wakeup.wait(timeout=wait_s)
                return None
            return heapq.heappop(self._timers).lifecycle

    def _run_step(self, lifecycle: _Lifecycle) -> None:
        try:
            self._apply_step(lifecycle)
        except Exception:
            logger.exception("status step for %s failed, so its later statuses are dropped", lifecycle.sid)
            return
        lifecycle.steps.pop(0)
        if lifecycle.steps and not self._stopping.is_set():
            self.schedule(lifecycle)


# Python's GIL switch interval for the simulator process, in seconds (Python's default is 0.005).
ARRIVAL_SWITCH_INTERVAL_S = 0.0005
# WSGI environ key: time.perf_counter() when the server had read a request's headers.
ARRIVED_AT_KEY = "textmanager.arrived_at"


class _QuietRequestHandler(WSGIRequestHandler):
    """Request handler without an access log line per request.

    It keeps HTTP/1.0 (one connection per request) so that no kept-alive connection
    goes on serving requests after stop().
    """

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def make_environ(self) -> dict:
        # Called as soon as the request line and headers are read: the moment a create
        # is received, before Flask routes it and parses its form.
        environ = super().make_environ()
        environ[ARRIVED_AT_KEY] = time.perf_counter()
        return environ


class TwilioSimulator:
    """An HTTP server on 127.0.0.1 that responds like Twilio's Messages API.

    Switches (opted-out numbers, delivery failures, create errors, latency) decide each
    outcome when a create arrives, so a run is deterministic. The injected clock gives
    every timestamp the simulator reports; delays and latency are real time.
    """

    def __init__(
        self,
        accounts: dict[str, str] | None = None,
        latency_s: float = 0.0,
        callback_delay_s: float = 0.05,
        clock: Callable[[], float] = time.time,
    ):
        self.latency_s = latency_s
        self.service_sender = SERVICE_SENDER
        self.url: str | None = None
        self._clock = clock
        self._lock = threading.Lock()
        self._accounts = dict(accounts or {})
        self._inbound: dict[str, tuple[str, str | None]] = {}
        self._runner = _LifecycleRunner(self._apply_step, callback_delay_s)
        self._server = None
        self._thread: threading.Thread | None = None
        self._clear_state()

    def _clear_state(self) -> None:
        self._records: list[dict] = []
        self._resources: dict[str, dict] = {}
        self._order = itertools.count()
        self._opted_out: set[str] = set()
        self._undelivered: dict[str, int] = {}
        self._delivery_errors: dict[str, _DeliveryError] = {}
        self._create_errors: dict[str, tuple[int, int]] = {}
        self._fail_next_count = 0
        self._fail_next_error = (0, 0)
        self._slow_next_count = 0
        self._slow_next_s = 0.0

    # --- lifecycle -----------------------------------------------------------------

    def start(self, port: int = 0) -> str:
        """Start serving on 127.0.0.1 (port 0 picks a free port) and return the base URL."""
        self._server = make_server(
            "127.0.0.1", port, build_app(self), threaded=True, request_handler=_QuietRequestHandler
        )
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="twilio-sim-http", daemon=True
        )
        self._thread.start()
        self._runner.start()
        logger.info("Twilio simulator listening on %s", self.url)
        return self.url

    def stop(self) -> None:
        """Stop the HTTP server and drop status callbacks not yet posted.

        Recorded creates, stored messages and switches stay, so start() may follow,
        for example with the same port to bring a stopped Twilio back.
        """
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None
        self._runner.stop()
        logger.info("Twilio simulator on %s stopped", self.url)

    def __enter__(self) -> TwilioSimulator:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- switches ------------------------------------------------------------------

    @property
    def callback_delay_s(self) -> float:
        return self._runner.delay_s

    @callback_delay_s.setter
    def callback_delay_s(self, value: float) -> None:
        self._runner.delay_s = value

    def add_account(self, sid: str, token: str) -> None:
        with self._lock:
            self._accounts[sid] = token

    def set_opted_out(self, numbers: Iterable[str]) -> None:
        with self._lock:
            self._opted_out = set(numbers)

    def add_opted_out(self, number: str) -> None:
        with self._lock:
            self._opted_out.add(number)

    def remove_opted_out(self, number: str) -> None:
        with self._lock:
            self._opted_out.discard(number)

    def opted_out(self) -> set[str]:
        """Return a copy of the numbers that Twilio blocks as opted out."""
        with self._lock:
            return set(self._opted_out)

    def set_undelivered(self, numbers: dict[str, int]) -> None:
        """Make texts to these numbers end `undelivered` with the given ErrorCode."""
        with self._lock:
            self._undelivered = dict(numbers)

    def set_delivery_error(self, number: str, code: int, *, status: str = "undelivered",
                           times: int | None = None) -> None:
        """Make texts to this number end `undelivered` or `failed` with ErrorCode `code`.

        With `times`, only that many texts fail and later ones are delivered, as when a
        retry after a temporary delivery error goes through.
        """
        if status not in ("undelivered", "failed"):
            raise ValueError(f"status must be undelivered or failed, got {status!r}")
        with self._lock:
            self._delivery_errors[number] = _DeliveryError(status, code, times)

    def slow_next(self, count: int, seconds: float) -> None:
        """Make the next `count` creates respond `seconds` late, each stored as usual.

        A client that times out meanwhile does not learn that its text was created.
        """
        with self._lock:
            self._slow_next_count = count
            self._slow_next_s = seconds

    def set_create_error(self, number: str, code: int, http_status: int = 400) -> None:
        """Make every create to this number fail with the given error."""
        with self._lock:
            self._create_errors[number] = (code, http_status)

    def fail_next(self, count: int, code: int, http_status: int) -> None:
        """Make the next `count` creates fail with this error, whatever the number."""
        with self._lock:
            self._fail_next_count = count
            self._fail_next_error = (code, http_status)

    def set_inbound_url(self, number: str, url: str, account_sid: str | None = None) -> None:
        """Send inbound texts to `number` to `url`, signed with the account's token.

        Without account_sid the first account added signs the webhook.
        """
        with self._lock:
            self._inbound[number] = (url, account_sid)

    def reset(self) -> None:
        """Forget recorded creates, stored messages and every switch.

        Accounts, inbound URLs, latency and callback delay stay as they are.
        """
        with self._lock:
            self._clear_state()

    def messages(self) -> list[dict]:
        """Return every create received, in order of arrival."""
        with self._lock:
            return [dict(record) for record in self._records]

    # --- create --------------------------------------------------------------------

    def create_message(self, account_sid: str, auth: tuple[str, str] | None, form: dict,
                       *, waited_s: float = 0.0) -> tuple[int, dict]:
        """Handle one create request and return (HTTP status, JSON body).

        `waited_s` is the time since the request arrived. The record's `arrived_at` is
        the clock less that wait, so pacing measured by arrival leaves out the time this
        process spent routing and parsing. Every other timestamp is the clock's.
        """
        received_at = self._clock()
        lifecycle = None
        with self._lock:
            record = self._new_record(form, received_at, arrived_at=received_at - waited_s)
            try:
                resource, lifecycle = self._accept(account_sid, auth, form, received_at)
            except SimulatorError as error:
                record.update(status="rejected", error_code=error.code)
                answer = (error.http_status, error.to_dict())
            else:
                record.update(sid=resource["sid"], status=resource["status"])
                answer = (201, _public(resource))
        # Statuses advance from acceptance on, so a long latency lets callbacks overtake the response.
        if lifecycle is not None:
            self._runner.schedule(lifecycle)
        delay_s = self.latency_s + self._take_slow_delay()
        if delay_s > 0:
            time.sleep(delay_s)
        return answer

    def _take_slow_delay(self) -> float:
        with self._lock:
            if self._slow_next_count <= 0:
                return 0.0
            self._slow_next_count -= 1
            return self._slow_next_s

    def _new_record(self, form: dict, received_at: float, *, arrived_at: float) -> dict:
        record = {
            "to": form.get("To"),
            "from": form.get("From"),
            "body": form.get("Body"),
            "sid": None,
            "status": None,
            "error_code": None,
            "received_at": received_at,
            "arrived_at": arrived_at,
            "status_callback": form.get("StatusCallback"),
            "messaging_service_sid": form.get("MessagingServiceSid"),
        }
        self._records.append(record)
        return record

    def _accept(self, account_sid: str, auth, form: dict, now: float) -> tuple[dict, _Lifecycle]:
        """Decide the outcome of a create, under the lock, and store the message."""
        self._authenticate(account_sid, auth)
        self._consume_fail_next()
        to, from_, service = form.get("To"), form.get("From"), form.get("MessagingServiceSid")
        _validate_create(form)
        if to in self._create_errors:
            code, http_status = self._create_errors[to]
            raise SimulatorError(code, http_status, to=to, from_=from_ or "")
        if to in self._opted_out and not service:
            raise SimulatorError(21610, 400, to=to)

        resource = self._build_resource(account_sid, form, now)
        self._resources[resource["sid"]] = resource
        lifecycle = _Lifecycle(resource["sid"], self._planned_steps(to, service), form.get("StatusCallback"))
        return resource, lifecycle

    def _authenticate(self, account_sid: str, auth) -> None:
        token = self._accounts.get(account_sid)
        if token is None or auth is None or auth != (account_sid, token):
            raise SimulatorError(20003, 401)

    def _consume_fail_next(self) -> None:
        if self._fail_next_count > 0:
            self._fail_next_count -= 1
            raise SimulatorError(*self._fail_next_error)

    def _planned_steps(self, to: str, service: str | None) -> list[tuple[str, int | None]]:
        if service and to in self._opted_out:
            return [("failed", 21610)]
        failure = self._delivery_errors.get(to)
        if failure is not None and failure.take():
            if failure.status == "failed":
                return [("failed", failure.code)]
            return [("sent", None), ("undelivered", failure.code)]
        if to in self._undelivered:
            return [("sent", None), ("undelivered", self._undelivered[to])]
        return [("sent", None), ("delivered", None)]

    def _build_resource(self, account_sid: str, form: dict, now: float) -> dict:
        sid = _new_sid("SM")
        service = form.get("MessagingServiceSid")
        body = form["Body"]
        smart = form.get("SmartEncoded", "").lower() == "true"
        uri = MESSAGES_PATH.format(account_sid=account_sid) + f"/{sid}"
        return {
            "account_sid": account_sid,
            "api_version": API_VERSION,
            "body": body,
            "date_created": _rfc2822(now),
            "date_sent": None,
            "date_updated": _rfc2822(now),
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": form.get("From"),
            "messaging_service_sid": service,
            "num_media": "0",
            "num_segments": "0" if service else str(_count_segments(body, smart_encoded=smart)),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if service else "queued",
            "subresource_uris": {"media": f"{uri}/Media.json", "feedback": f"{uri}/Feedback.json"},
            "to": form["To"],
            "uri": f"{uri}.json",
            "_order": next(self._order),
            "_created_at": now,
            "_sent_at": None,
            "_smart": smart,
        }

    # --- status steps --------------------------------------------------------------

    def _apply_step(self, lifecycle: _Lifecycle) -> None:
        """Move the message to its next status, then post the status callback."""
        status, error_code = lifecycle.steps[0]
        with self._lock:
            resource = self._resources.get(lifecycle.sid)
            if resource is None:
                return
            self._advance(resource, status, error_code)
            params = _callback_params(resource)
            token = self._accounts.get(resource["account_sid"])
        if lifecycle.status_callback and token is not None:
            self._post_callback(lifecycle.status_callback, params, token)

    def _advance(self, resource: dict, status: str, error_code: int | None) -> None:
        now = self._clock()
        if resource["from"] is None:
            resource["from"] = self.service_sender
        if resource["num_segments"] == "0":
            resource["num_segments"] = str(_count_segments(resource["body"], smart_encoded=resource["_smart"]))
        if status == "sent":
            resource["date_sent"], resource["_sent_at"] = _rfc2822(now), now
        if error_code is not None:
            resource["error_code"] = error_code
            resource["error_message"] = ERROR_MESSAGES.get(error_code, "Error")
        resource["status"] = status
        resource["date_updated"] = _rfc2822(now)

    def _post_callback(self, url: str, params: dict[str, str], token: str) -> None:
        """Post one signed status callback, retrying only when the connection fails."""
        headers = {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, params)}
        for attempt in range(1, CALLBACK_CONNECT_ATTEMPTS + 1):
            try:
                response = requests.post(url, data=params, headers=headers, timeout=CALLBACK_TIMEOUT_S)
            except requests.ConnectionError as error:
                if attempt == CALLBACK_CONNECT_ATTEMPTS or self._runner.stopping.wait(0.05 * attempt):
                    logger.warning(
                        "status callback %s for %s dropped after %d connection attempts: %s",
                        params["MessageStatus"], params["MessageSid"], attempt, error,
                    )
                    return
                continue
            except requests.RequestException as error:
                logger.warning("status callback %s for %s failed: %s", params["MessageStatus"], params["MessageSid"], error)
                return
            if response.status_code >= 300:
                logger.warning(
                    "status callback %s for %s got HTTP %s and is dropped, because Twilio retries only failed connections",
                    params["MessageStatus"], params["MessageSid"], response.status_code,
                )
            return

    # --- list and fetch ------------------------------------------------------------

    def fetch_message(self, account_sid: str, auth, sid: str) -> tuple[int, dict]:
        """Return (HTTP status, JSON body) for one stored message."""
        with self._lock:
            try:
                self._authenticate(account_sid, auth)
                resource = self._resources.get(sid)
                if resource is None or resource["account_sid"] != account_sid:
                    raise SimulatorError(20404, 404, path=MESSAGES_PATH.format(account_sid=account_sid) + f"/{sid}.json")
            except SimulatorError as error:
                return error.http_status, error.to_dict()
            return 200, _public(resource)

    def list_messages(self, account_sid: str, auth, args: dict[str, str]) -> tuple[int, dict]:
        """Return (HTTP status, JSON page) of stored messages, newest first."""
        with self._lock:
            try:
                self._authenticate(account_sid, auth)
                query = _ListQuery.parse(args)
            except SimulatorError as error:
                return error.http_status, error.to_dict()
            matches = [r for r in self._resources.values() if r["account_sid"] == account_sid and query.matches(r)]
            matches.sort(key=lambda resource: resource["_order"], reverse=True)
            return 200, query.page_envelope(account_sid, matches)

    # --- inbound -------------------------------------------------------------------

    def simulate_inbound(self, from_: str, to: str, body: str) -> int | None:
        """Deliver an inbound text as Twilio would: apply its opt-out keyword, then
        post the signed webhook to the URL set for `to`.

        Returns the webhook's HTTP status, or None when no inbound URL is set for `to`.
        Raises requests.RequestException when the webhook cannot be reached.
        """
        opt_out_type = _keyword_type(body)
        with self._lock:
            self._apply_keyword(from_, opt_out_type)
            url, account_sid = self._inbound.get(to, (None, None))
            account_sid = account_sid or next(iter(self._accounts), "")
            resource = self._store_inbound(account_sid, from_, to, body)
            token = self._accounts.get(account_sid)
        if url is None or token is None:
            logger.info("inbound text to %s not posted because no webhook URL is set for that number", to)
            return None

        params = _inbound_params(resource, opt_out_type)
        params["AccountSid"] = account_sid
        signature = RequestValidator(token).compute_signature(url, params)
        response = requests.post(url, data=params, headers={"X-Twilio-Signature": signature}, timeout=CALLBACK_TIMEOUT_S)
        return response.status_code

    def _apply_keyword(self, number: str, opt_out_type: str | None) -> None:
        if opt_out_type == "STOP":
            self._opted_out.add(number)
        elif opt_out_type == "START":
            self._opted_out.discard(number)

    def _store_inbound(self, account_sid: str, from_: str, to: str, body: str) -> dict:
        now = self._clock()
        resource = self._build_resource(account_sid, {"To": to, "From": from_, "Body": body}, now)
        resource.update(direction="inbound", status="received", date_sent=_rfc2822(now), _sent_at=now)
        self._resources[resource["sid"]] = resource
        return resource


def _validate_create(form: dict) -> None:
    """Raise SimulatorError for the request checks Twilio makes before accepting."""
    to, from_, service, body = (form.get(name) for name in ("To", "From", "MessagingServiceSid", "Body"))
    if not to:
        raise SimulatorError(21604)
    if not E164.match(to):
        raise SimulatorError(21211, to=to)
    if not from_ and not service:
        raise SimulatorError(21603)
    if service and not MESSAGING_SERVICE_SID.match(service):
        raise SimulatorError(21701, service=service)
    if not body:
        raise SimulatorError(21602)
    if len(body) > MAX_BODY_CHARS:
        raise SimulatorError(21617)
    _validate_validity_period(form.get("ValidityPeriod"))


def _validate_validity_period(value: str | None) -> None:
    if value is None:
        return
    try:
        seconds = int(value)
    except ValueError:
        raise SimulatorError(90014, value=value) from None
    if not 1 <= seconds <= MAX_VALIDITY_PERIOD_S:
        raise SimulatorError(90007, value=value)


def _public(resource: dict) -> dict:
    return {key: value for key, value in resource.items() if not key.startswith("_")}


def _callback_params(resource: dict) -> dict[str, str]:
    params = {
        "MessageSid": resource["sid"],
        "SmsSid": resource["sid"],
        "MessageStatus": resource["status"],
        "SmsStatus": resource["status"],
        "To": resource["to"],
        "From": resource["from"],
        "AccountSid": resource["account_sid"],
        "ApiVersion": API_VERSION,
    }
    if resource["messaging_service_sid"]:
        params["MessagingServiceSid"] = resource["messaging_service_sid"]
    if resource["status"] in ("failed", "undelivered") and resource["error_code"] is not None:
        params["ErrorCode"] = str(resource["error_code"])
    return params


def _inbound_params(resource: dict, opt_out_type: str | None) -> dict[str, str]:
    params = {
        "MessageSid": resource["sid"],
        "SmsSid": resource["sid"],
        "SmsMessageSid": resource["sid"],
        "From": resource["from"],
        "To": resource["to"],
        "Body": resource["body"],
        "NumSegments": resource["num_segments"],
        "NumMedia": "0",
        "SmsStatus": "received",
        "ApiVersion": API_VERSION,
    }
    if opt_out_type is not None:
        params["OptOutType"] = opt_out_type
    return params


@dataclass
class _ListQuery:
    """Filters and paging of a message list request."""

    to: str | None
    from_: str | None
    sent_on: object
    sent_after: object
    sent_before: object
    page_size: int
    page: int

    @classmethod
    def parse(cls, args: dict[str, str]) -> _ListQuery:
        return cls(
            to=args.get("To"),
            from_=args.get("From"),
            sent_on=_parse_date_filter("DateSent", args.get("DateSent")),
            sent_after=_parse_date_filter("DateSent>", args.get("DateSent>")),
            sent_before=_parse_date_filter("DateSent<", args.get("DateSent<")),
            page_size=_parse_int("PageSize", args.get("PageSize"), DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE),
            page=_parse_int("Page", args.get("Page"), 0, 0, sys.maxsize),
        )

    def matches(self, resource: dict) -> bool:
        if self.to is not None and resource["to"] != self.to:
            return False
        if self.from_ is not None and resource["from"] != self.from_:
            return False
        if self.sent_on is None and self.sent_after is None and self.sent_before is None:
            return True
        if resource["_sent_at"] is None:
            return False
        sent = dt.datetime.fromtimestamp(resource["_sent_at"], dt.timezone.utc)
        return _on_day(sent, self.sent_on) and _not_before(sent, self.sent_after) and _not_after(sent, self.sent_before)

    def page_envelope(self, account_sid: str, matches: list[dict]) -> dict:
        start = self.page * self.page_size
        items = matches[start:start + self.page_size]
        has_next = start + self.page_size < len(matches)
        return {
            "messages": [_public(resource) for resource in items],
            "page": self.page,
            "page_size": self.page_size,
            "start": start,
            "end": start + max(len(items) - 1, 0),
            "uri": self._page_uri(account_sid, self.page),
            "first_page_uri": self._page_uri(account_sid, 0),
            "next_page_uri": self._page_uri(account_sid, self.page + 1, items[-1]["sid"]) if has_next else None,
            "previous_page_uri": self._page_uri(account_sid, self.page - 1) if self.page > 0 else None,
        }

    def _page_uri(self, account_sid: str, page: int, token_sid: str | None = None) -> str:
        query = {"To": self.to, "From": self.from_}
        query |= {"DateSent": self.sent_on, "DateSent>": self.sent_after, "DateSent<": self.sent_before}
        query = {key: _format_date_filter(value) for key, value in query.items() if value is not None}
        query |= {"PageSize": self.page_size, "Page": page}
        if token_sid is not None:
            query["PageToken"] = "PA" + token_sid
        return MESSAGES_PATH.format(account_sid=account_sid) + ".json?" + urlencode(query)


def _parse_date_filter(name: str, value: str | None) -> dt.date | dt.datetime | None:
    """Parse YYYY-MM-DD as a UTC day, or an ISO 8601 timestamp as an instant."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            return dt.date.fromisoformat(value)
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise SimulatorError(20001, parameter=name, value=value) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _format_date_filter(value: object) -> str:
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


def _on_day(sent: dt.datetime, day: dt.date | dt.datetime | None) -> bool:
    if day is None:
        return True
    if isinstance(day, dt.datetime):
        day = day.astimezone(dt.timezone.utc).date()
    return sent.date() == day


def _not_before(sent: dt.datetime, bound: dt.date | dt.datetime | None) -> bool:
    if bound is None:
        return True
    if isinstance(bound, dt.datetime):
        return sent >= bound
    return sent.date() >= bound


def _not_after(sent: dt.datetime, bound: dt.date | dt.datetime | None) -> bool:
    if bound is None:
        return True
    if isinstance(bound, dt.datetime):
        return sent <= bound
    return sent.date() <= bound


def _parse_int(name: str, value: str | None, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise SimulatorError(20001, parameter=name, value=value) from None
    if not low <= number <= high:
        raise SimulatorError(20001, parameter=name, value=value)
    return number


# --- HTTP ----------------------------------------------------------------------------


def _basic_auth() -> tuple[str, str] | None:
    """Return (user, password) from the Authorization header, or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, password


def _json(status: int, body: dict) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


def build_app(simulator: TwilioSimulator) -> Flask:
    """Build the Flask app that serves the simulator's HTTP interface."""
    app = Flask(__name__)
    messages = "/2010-04-01/Accounts/<account_sid>/Messages"

    @app.post(f"{messages}.json")
    def create_message(account_sid: str) -> Response:
        """Create a message (form-encoded, HTTP Basic auth)."""
        arrived_at = request.environ.get(ARRIVED_AT_KEY)
        form = request.form.to_dict()
        waited_s = time.perf_counter() - arrived_at if arrived_at is not None else 0.0
        return _json(*simulator.create_message(account_sid, _basic_auth(), form, waited_s=waited_s))

    @app.get(f"{messages}.json")
    def list_messages(account_sid: str) -> Response:
        """List messages, newest first, filtered by To, From and DateSent."""
        return _json(*simulator.list_messages(account_sid, _basic_auth(), request.args.to_dict()))

    @app.get(f"{messages}/<sid>.json")
    def fetch_message(account_sid: str, sid: str) -> Response:
        """Fetch one message by its SID."""
        return _json(*simulator.fetch_message(account_sid, _basic_auth(), sid))

    @app.get("/_sim/messages")
    def recorded_messages() -> Response:
        """Return every create received, in order of arrival."""
        return jsonify(simulator.messages())

    @app.post("/_sim/inbound")
    def inbound() -> Response:
        """Deliver an inbound text given as JSON {from, to, body}."""
        return _simulate_inbound(simulator, request.get_json(silent=True))

    @app.errorhandler(HTTPException)
    def on_http_error(error: HTTPException) -> Response:
        """Return routing errors in Twilio's error shape."""
        code = {404: 20404, 405: 20004}.get(error.code, 20001)
        answer = SimulatorError(code, error.code, path=request.path, parameter="request", value=error.name)
        return _json(error.code, answer.to_dict())

    return app


def _simulate_inbound(simulator: TwilioSimulator, payload: object) -> Response:
    if not isinstance(payload, dict) or not all(isinstance(payload.get(key), str) for key in ("from", "to", "body")):
        return _json(400, {"message": "expected JSON with string fields from, to and body"})
    try:
        status = simulator.simulate_inbound(payload["from"], payload["to"], payload["body"])
    except requests.RequestException as error:
        return _json(502, {"message": f"inbound webhook failed: {error}"})
    return _json(200, {"webhook_status": status})


# --- command line --------------------------------------------------------------------


def _parse_account(value: str) -> tuple[str, str]:
    sid, separator, token = value.partition(":")
    if not separator or not sid or not token:
        raise argparse.ArgumentTypeError(f"invalid account {value!r}: expected SID:TOKEN")
    return sid, token


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m local.simulators.twilio", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1, or 0 for a free port")
    parser.add_argument("--account", type=_parse_account, action="append", required=True,
                        help="an account as SID:TOKEN; repeat for more accounts")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds each create waits before responding")
    parser.add_argument("--callback-delay", type=float, default=0.05, help="seconds between status steps")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Stamping each create as it arrives is the point of this process, so a thread that
    # has read a request waits at most this long for another thread to give up the GIL.
    sys.setswitchinterval(ARRIVAL_SWITCH_INTERVAL_S)

    simulator = TwilioSimulator(dict(args.account), latency_s=args.latency, callback_delay_s=args.callback_delay)
    stop_requested = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop_requested.set())
    url = simulator.start(args.port)
    print(f"Twilio simulator listening on {url}", flush=True)
    stop_requested.wait()
    simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
