"""Exceptions of the recipients service; each message is written for staff."""

from __future__ import annotations


class ExpansionError(Exception):
    """Base of the recipients service's exceptions."""


class CampaignSetupError(ExpansionError):
    """The campaign cannot be sent as set up. The message explains to staff what to change."""


class RunFailed(ExpansionError):
    """The run cannot go ahead. The message explains to staff why and what to change.

    `run_fields` are stored on the failed run beside the message, such as the
    segment count of a run over its limit.
    """

    def __init__(self, message: str, **run_fields: object):
        super().__init__(message)
        self.run_fields = run_fields


class ExpansionSuperseded(ExpansionError):
    """Another expander took the run over, or staff cancelled it; this one stops."""
