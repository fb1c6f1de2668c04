"""Exceptions of the scheduler's dead-letter handler."""

from __future__ import annotations


class DeadLetterError(Exception):
    """Base of the dead-letter handler's exceptions."""


class Unhandled(DeadLetterError):
    """The dead letter cannot be acted on, so it is kept as it is. The message gives the reason."""


class TryLater(DeadLetterError):
    """The dead letter cannot be settled yet, so it goes back to the dead queue. The message gives the reason.

    `wait_s` is how long it cannot be settled for, when that is known.
    """

    def __init__(self, message: str, *, wait_s: float = 0.0):
        super().__init__(message)
        self.wait_s = wait_s
