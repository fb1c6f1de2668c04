"""What the sender does with each error the Twilio create call returns, by error code.

Delivery errors (30001 and up) arrive later in status callbacks; their table and
actions are in `libs.common.progress`, because the feedback service applies them.
"""

from __future__ import annotations

from dataclasses import dataclass

RETRY = "retry"
SKIP = "skip"
OPT_OUT = "opt_out"
PAUSE = "pause"
FAIL = "fail"


@dataclass(frozen=True)
class Outcome:
    """The action for one Twilio error, and the reason staff see.

    For RETRY: at most `max_attempts` tries in all, waiting about `first_delay_s`
    before the first retry and twice as long before each later one; `slow_down` also
    lowers the sender number's rate for a while.
    """

    action: str
    reason: str
    max_attempts: int = 5
    first_delay_s: float = 1.0
    slow_down: bool = False


# Codes returned by the create call, with the action a careful operator takes
# (Twilio's error dictionary, https://www.twilio.com/docs/api/errors).
OUTCOMES: dict[int, Outcome] = {
    20003: Outcome(PAUSE, "Twilio rejected the account credentials: check the Twilio settings"),
    20429: Outcome(RETRY, "Twilio is busy (too many concurrent requests)"),
    21211: Outcome(SKIP, "invalid number"),
    21408: Outcome(SKIP, "texts to this country are not enabled: allow the country in the Twilio "
                         "account's geographic permissions"),
    21606: Outcome(PAUSE, "the sender number cannot send to this destination: check the sender number"),
    21610: Outcome(OPT_OUT, "opted out (replied STOP)"),
    21611: Outcome(RETRY, "the sender's queue at Twilio is full", max_attempts=3, first_delay_s=120,
                   slow_down=True),
    21612: Outcome(SKIP, "the number cannot receive texts"),
    21614: Outcome(SKIP, "not a mobile number"),
    21617: Outcome(SKIP, "text longer than 1,600 characters"),
}

TOLL_FREE_BLOCKED = 30004
TOO_MANY_REQUESTS = 429
SERVER_ERROR_FIRST_DELAY_S = 5.0


def classify(code: int | None, http_status: int | None, *, toll_free: bool) -> Outcome:
    """Return the action for a Twilio error code or, for an unknown code, its HTTP status.

    429 and 5xx responses are retried; any other unknown error fails the text.
    """
    if code == TOLL_FREE_BLOCKED:
        if toll_free:
            return Outcome(OPT_OUT, "opted out (blocked at the carrier after STOP)")
        return Outcome(FAIL, "blocked by the recipient or carrier")
    if code in OUTCOMES:
        return OUTCOMES[code]
    if http_status == TOO_MANY_REQUESTS:
        return OUTCOMES[20429]
    if http_status is not None and 500 <= http_status < 600:
        return Outcome(RETRY, f"Twilio was unavailable (HTTP {http_status})", first_delay_s=SERVER_ERROR_FIRST_DELAY_S)
    return Outcome(FAIL, f"Twilio error {code} (HTTP {http_status})")
