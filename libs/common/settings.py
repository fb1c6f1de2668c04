"""Process settings, read once from the environment into a frozen object."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import Mapping

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Numeric settings that must be above zero: a zero or negative count, period or timeout
# would stop a service from working (no sender threads, a scheduler spinning without a
# pause, sessions that expire at once) instead of failing at start.
POSITIVE_SETTINGS = (
    "session_hours", "scheduler_poll_s", "sender_workers", "sender_claim_lease_s", "twilio_timeout_s",
    "imis_timeout_s", "sign_in_max_failures", "sign_in_address_max_failures", "sign_in_lockout_minutes",
)
# The widest pacing margin accepted: 200 ms already costs a sixth of every sender's rate.
MAX_PACING_MARGIN_MS = 200.0
# Numeric settings for which 0 is a meaningful value.
NON_NEGATIVE_SETTINGS = ("trusted_proxy_count", "sender_pacing_margin_ms")


class SettingsError(ValueError):
    """A setting is missing or has a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    """Every environment variable the services read, with its default.

    The defaults run the embedded default: in-process broker, mongomock store, local
    simulators. Production sets the URLs and secrets; `from_env` refuses to start a
    MongoDB-backed process without a secret key.
    """

    broker_url: str = "memory://"
    mongo_url: str = "mongomock://localhost/textmanager"
    secret_key: str = ""
    session_secret: str = ""
    public_callback_url: str = "http://127.0.0.1:8001"
    twilio_base_url: str = ""
    log_format: str = "text"
    log_level: str = "INFO"
    smtp_url: str = ""
    mail_from: str = "Text Manager <no-reply@localhost>"
    secure_cookies: bool = False
    session_hours: float = 12.0
    scheduler_poll_s: float = 1.0
    sender_workers: int = 4
    sender_health_port: int = 8002
    sender_claim_lease_s: float = 60.0
    # Milliseconds added to each one-second pacing window, to absorb the spread in time
    # from a send slot to Twilio's receipt of the create. A margin of m ms costs
    # m / (1000 + m) of the rate, about 0.1% per millisecond. docs/benchmarks.md gives
    # the spread measured against the simulator.
    sender_pacing_margin_ms: float = 15.0
    twilio_timeout_s: float = 15.0
    imis_timeout_s: float = 30.0
    # How many reverse proxies in front of the gateway append the client's address to
    # X-Forwarded-For. 0 ignores the header, because any client can send it.
    trusted_proxy_count: int = 0
    # Failed sign-ins per Cloud ID and user name, and per client address, within the
    # lockout period, after which sign-in stops for one lockout period. iMIS locks an
    # account after 5 failed logons by default (help.imis.com, "Users window"). 4 stays
    # below that, so failures here cannot lock staff out of iMIS unless iMIS counts
    # failures over a longer period than the lockout.
    sign_in_max_failures: int = 4
    sign_in_address_max_failures: int = 30
    sign_in_lockout_minutes: float = 15.0

    @property
    def uses_mongomock(self) -> bool:
        return self.mongo_url.startswith("mongomock://")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from `TM_*` variables; raise SettingsError naming a bad one."""
        environ = os.environ if environ is None else environ
        values = {}
        for field in fields(cls):
            name = "TM_" + field.name.upper()
            if name in environ and environ[name] != "":
                values[field.name] = _convert(name, environ[name], field.type)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise SettingsError when a combination of values cannot work."""
        if not self.uses_mongomock and not self.mongo_url.startswith(("mongodb://", "mongodb+srv://")):
            raise SettingsError(
                f"TM_MONGO_URL must start with mongodb://, mongodb+srv:// or mongomock://, got {self.mongo_url!r}"
            )
        if not self.broker_url.startswith(("memory://", "amqp://", "amqps://")):
            raise SettingsError(
                f"TM_BROKER_URL must start with amqp://, amqps:// or memory://, got {self.broker_url!r}"
            )
        if not self.uses_mongomock and not (self.secret_key and self.session_secret):
            raise SettingsError(
                "TM_SECRET_KEY and TM_SESSION_SECRET are required with MongoDB: set TM_SECRET_KEY to "
                "a Fernet key (python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())') and TM_SESSION_SECRET to a long random string"
            )
        if self.log_format not in ("text", "json"):
            raise SettingsError(f"TM_LOG_FORMAT must be text or json, got {self.log_format!r}")
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(f"TM_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        for name in POSITIVE_SETTINGS:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise SettingsError(f"TM_{name.upper()} must be a number above 0, got {value!r}")
        for name in NON_NEGATIVE_SETTINGS:
            if getattr(self, name) < 0:
                raise SettingsError(f"TM_{name.upper()} must be 0 or more, got {getattr(self, name)!r}")
        if not (math.isfinite(self.sender_pacing_margin_ms) and 0 <= self.sender_pacing_margin_ms <= MAX_PACING_MARGIN_MS):
            raise SettingsError(
                f"TM_SENDER_PACING_MARGIN_MS must be from 0 to {MAX_PACING_MARGIN_MS:g} milliseconds, "
                f"got {self.sender_pacing_margin_ms!r}; 15 suits a sender near Twilio, and 100 "
                "costs about a tenth of the rate"
            )
        if self.sender_claim_lease_s <= 2 * self.twilio_timeout_s:
            raise SettingsError(
                f"TM_SENDER_CLAIM_LEASE_S ({self.sender_claim_lease_s:g}) must be more than twice "
                f"TM_TWILIO_TIMEOUT_S ({self.twilio_timeout_s:g}): a claim that lapses while its Twilio call is "
                "still open lets another sender instance text the member again. Raise the lease or lower the timeout"
            )
        if not 1 <= self.sender_health_port <= 65535:
            raise SettingsError(f"TM_SENDER_HEALTH_PORT must be a TCP port from 1 to 65535, got {self.sender_health_port!r}")


def _convert(name: str, raw: str, kind: object) -> object:
    kind_name = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if kind_name == "bool":
            return _parse_bool(raw)
        if kind_name == "int":
            return int(raw)
        if kind_name == "float":
            return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a {kind_name}, got {raw!r}") from None
    return raw


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)
