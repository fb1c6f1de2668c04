"""What the sender does with each Twilio answer, by error code."""

from __future__ import annotations

from dataclasses import dataclass

RETRY = "retry"
SKIP = "skip"
OPT_OUT = "opt_out"
PAUSE = "pause"
FAIL = "fail"


@dataclass(frozen=True)
class Outcome:
    """The action for one Twilio error, and the reason staff see."""

    action: str
    reason: str
    max_attempts: int = 5


# Codes returned by the create call or carried by a status callback, with the action a
# careful operator takes (Twilio's error dictionary, https://www.twilio.com/docs/api/errors).
OUTCOMES: dict[int, Outcome] = {
    20003: Outcome(PAUSE, "Twilio rejected the account credentials: check the Twilio settings"),
    20429: Outcome(RETRY, "Twilio is busy (too many requests)"),
    21211: Outcome(SKIP, "invalid number"),
    21408: Outcome(SKIP, "texts to this country are not enabled in the Twilio account"),
    21606: Outcome(PAUSE, "the sender number cannot send to this destination: check the sender number"),
    21610: Outcome(OPT_OUT, "opted out (replied STOP)"),
    21611: Outcome(RETRY, "the sender's queue at Twilio is full"),
    21612: Outcome(SKIP, "the number cannot receive texts"),
    21614: Outcome(SKIP, "not a mobile number"),
    21617: Outcome(SKIP, "text longer than 1,600 characters"),
    30001: Outcome(RETRY, "Twilio's queue overflowed"),
    30003: Outcome(RETRY, "the handset is unreachable", max_attempts=3),
    30005: Outcome(SKIP, "unknown handset"),
    30006: Outcome(SKIP, "landline or unreachable carrier"),
    30007: Outcome(FAIL, "filtered by the carrier as spam"),
    30008: Outcome(RETRY, "unknown delivery error", max_attempts=3),
    30032: Outcome(PAUSE, "the toll-free sender number is not verified"),
    30036: Outcome(RETRY, "the validity period expired in Twilio's queue"),
    30410: Outcome(RETRY, "the carrier timed out"),
}

TOLL_FREE_BLOCKED = 30004
TRANSIENT_HTTP_STATUSES = (429, 500, 502, 503, 504)


def classify(code: int | None, http_status: int | None, *, toll_free: bool) -> Outcome:
    """Return the action for a Twilio error code or, with no code, its HTTP status."""
    if code == TOLL_FREE_BLOCKED:
        if toll_free:
            return Outcome(OPT_OUT, "opted out (blocked at the carrier after STOP)")
        return Outcome(FAIL, "blocked by the recipient or carrier")
    if code in OUTCOMES:
        return OUTCOMES[code]
    if http_status in TRANSIENT_HTTP_STATUSES or http_status is None:
        return Outcome(RETRY, f"Twilio was unavailable (HTTP {http_status})" if http_status else "Twilio did not answer")
    return Outcome(FAIL, f"Twilio error {code} (HTTP {http_status})")
