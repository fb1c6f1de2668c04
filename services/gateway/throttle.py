"""Sign-in throttling: failed sign-ins counted in the store per account and per client address."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from pymongo import ReturnDocument
from pymongo.database import Database

from services.gateway.errors import TooManySignIns

logger = logging.getLogger(__name__)

ACCOUNT = "account"
ADDRESS = "address"
RESET_ADVICE = "If you have forgotten your iMIS password, you can reset it in iMIS."


@dataclass(frozen=True)
class _Counter:
    """The failures of one account (Cloud ID and user name) or of one client address."""

    kind: str
    key: str
    limit: int
    label: str  # for the log, such as "to an account of Cloud ID ACME"


class SignInThrottle:
    """Count failed sign-ins in the store, so that every gunicorn worker shares the counts.

    A counter locks for `lockout_minutes` once it holds `max_failures` failures (per
    account) or `address_max_failures` (per address) from the last `lockout_minutes`.
    Each attempt is counted before iMIS is asked and withdrawn when it did not fail,
    so that concurrent attempts cannot pass the limit together. A counter is keyed by
    an HMAC of the Cloud ID and user name, or of the address, so a password typed into
    the user name field is not stored.
    """

    def __init__(self, db: Database, *, key: bytes, clock, max_failures: int, address_max_failures: int,
                 lockout_minutes: float):
        self._failures = db.sign_in_failures
        self._key = key
        self._clock = clock
        self._max_failures = max_failures
        self._address_max_failures = address_max_failures
        self._lockout = timedelta(minutes=lockout_minutes)

    def begin(self, cloud_id: str, username: str, address: str) -> SignInAttempt:
        """Count a new attempt and return it; raise TooManySignIns while the account or address is locked."""
        counters = (
            _Counter(ACCOUNT, self._digest(ACCOUNT, *account_key(cloud_id, username)), self._max_failures,
                     f"to an account of Cloud ID {cloud_id.strip()}"),
            _Counter(ADDRESS, self._digest(ADDRESS, address), self._address_max_failures, f"from {address}"),
        )
        attempt = SignInAttempt(self, counters, {"id": uuid.uuid4().hex, "at": self._clock.now()})
        counted = []
        for counter in counters:
            error = self._count(counter, attempt.stamp)
            if error is not None:
                for earlier in counted:
                    self._withdraw(earlier, attempt.stamp)
                raise error
            counted.append(counter)
        return attempt

    def _count(self, counter: _Counter, stamp: dict) -> TooManySignIns | None:
        """Add the attempt to the counter; withdraw it and return the 429 error when the counter is full."""
        now = stamp["at"]
        document = self._failures.find_one_and_update(
            {"_id": counter.key},
            {"$push": {"attempts": {"$each": [stamp], "$slice": -2 * counter.limit}},
             "$set": {"kind": counter.kind, "expires_at": now + 2 * self._lockout}},
            upsert=True, return_document=ReturnDocument.AFTER)

        locked_until = document.get("locked_until")
        recent = self._recent(document, now)
        if locked_until is not None and locked_until > now:
            retry_at = locked_until
        elif len(recent) > counter.limit:
            # Attempts still in flight fill the counter: the oldest one leaves it first.
            retry_at = min(entry["at"] for entry in recent) + self._lockout
        else:
            return None
        self._withdraw(counter, stamp)
        return locked_error(counter.kind, retry_at, now)

    def _record_failure(self, counter: _Counter, now: datetime) -> datetime | None:
        """Lock the counter when it is full; return until when it is locked, or None."""
        document = self._failures.find_one({"_id": counter.key})
        if document is None or len(self._recent(document, now)) < counter.limit:
            return None
        locked_until = now + self._lockout
        self._failures.update_one({"_id": counter.key}, {"$set": {
            "locked_until": locked_until, "attempts": [], "expires_at": locked_until + self._lockout}})
        logger.warning("sign-in %s locked until %s after %d failures", counter.label, locked_until.isoformat(),
                       counter.limit)
        return locked_until

    def _reset(self, counter: _Counter) -> None:
        self._failures.delete_one({"_id": counter.key})

    def _withdraw(self, counter: _Counter, stamp: dict) -> None:
        self._failures.update_one({"_id": counter.key}, {"$pull": {"attempts": {"id": stamp["id"]}}})

    def _recent(self, document: dict, now: datetime) -> list[dict]:
        return [entry for entry in document.get("attempts", []) if entry["at"] > now - self._lockout]

    def _digest(self, *parts: str) -> str:
        return hmac.new(self._key, json.dumps(parts).encode(), hashlib.sha256).hexdigest()


def account_key(cloud_id: str, username: str) -> tuple[str, str]:
    """Return the Cloud ID and user name as the account's counter is keyed.

    Both lose surrounding whitespace, as sign_in sends them to iMIS, and the user name
    loses its letter case too, because iMIS user names ignore case.
    """
    return cloud_id.strip(), username.strip().casefold()


class SignInAttempt:
    """One counted sign-in attempt. The caller reports its outcome with one of the three methods."""

    def __init__(self, throttle: SignInThrottle, counters: tuple[_Counter, _Counter], stamp: dict):
        self._throttle = throttle
        self._account, self._address = counters
        self.stamp = stamp

    def succeeded(self) -> None:
        """Clear the account's failures; the address keeps its failures but not this attempt."""
        self._throttle._reset(self._account)
        self._throttle._withdraw(self._address, self.stamp)

    def failed(self) -> TooManySignIns | None:
        """Keep the failure counted; return the lock error when this failure locked sign-in, else None."""
        now = self._throttle._clock.now()
        account_locked_until = self._throttle._record_failure(self._account, now)
        address_locked_until = self._throttle._record_failure(self._address, now)
        if account_locked_until is not None:
            return locked_error(ACCOUNT, account_locked_until, now)
        if address_locked_until is not None:
            return locked_error(ADDRESS, address_locked_until, now)
        return None

    def withdrawn(self) -> None:
        """Withdraw the attempt, for when iMIS could not check the password."""
        self._throttle._withdraw(self._account, self.stamp)
        self._throttle._withdraw(self._address, self.stamp)


def locked_error(kind: str, retry_at: datetime, now: datetime) -> TooManySignIns:
    """Return the 429 error with the time at which to try again."""
    retry_after_s = max(1, math.ceil((retry_at - now).total_seconds()))
    minutes = math.ceil(retry_after_s / 60)
    wait = f"{minutes} minute" if minutes == 1 else f"{minutes} minutes"
    # Rounded up to the minute, so that trying again at the time shown succeeds.
    retry_minute = now.astimezone(timezone.utc) + timedelta(seconds=retry_after_s + 59)
    scope = "with this user name and Cloud ID" if kind == ACCOUNT else "from your network address"
    message = (f"Too many failed sign-ins {scope}: try again in {wait}, after {retry_minute:%H:%M} UTC. "
               f"{RESET_ADVICE}")
    return TooManySignIns(message, retry_after_s, {"retry_after_s": retry_after_s, "locked": kind,
                                                   "locked_until": retry_at.isoformat()})
