"""Changing a saved campaign: which campaigns may change, and the change itself."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from pymongo.database import Database

from libs.common.texts import Template
from services.gateway.errors import Conflict

logger = logging.getLogger(__name__)

# A campaign scheduled to send once can change until this long before its send time.
# The scheduler claims a run only once it is due, so with this margin no run is being
# expanded while its campaign changes, unless the scheduler's clock runs 2 minutes ahead.
EDIT_CLOSES_BEFORE_SEND = timedelta(minutes=2)


def edit_refusal(campaign: dict) -> str | None:
    """Return why the campaign cannot be edited, or None when it can.

    `campaign` is as CampaignService.get returns it, with `counts` and `current_run`.
    Drafts can change, and so can campaigns scheduled to send once whose run has not
    started, and failed or cancelled campaigns that have sent no text. For a scheduled
    campaign, CampaignEditor.update also checks the time left before the send.
    """
    status = campaign.get("status")
    run = campaign.get("current_run")
    if campaign.get("schedule_active"):
        return "this campaign recurs: stop its schedule, edit the campaign, then set the schedule again"
    if status == "draft":
        return None
    if status == "scheduled":
        if run is not None and run.get("status") == "due" and not run.get("recurring"):
            return None
        return "the campaign has started sending, so it can no longer change: wait until it finishes, or cancel it"
    if status in ("sending", "paused"):
        return (f"the campaign is {status}, and the texts already sent used the saved text, so it cannot change "
                "now: wait until it finishes, or cancel it")
    sent = campaign.get("counts", {}).get("sent", 0)
    if status in ("failed", "cancelled") and sent == 0:
        return None
    return (f"the campaign is {status} after sending {sent} texts, and its page keeps the text they had: "
            "create a new campaign for a changed text")


def preview_notes(fields: dict) -> list[str]:
    """Return what saving could not check, because only running the IQA shows it."""
    columns: dict[str, str] = {}
    for column in (fields["phone_column"], fields["id_column"], *Template.parse(fields["body"]).fields):
        columns.setdefault(column.casefold(), column)  # IQA aliases ignore case
    return [f"Columns are checked at preview: the IQA {fields['iqa_path']} must exist, be available via the REST "
            f"API, and return the columns {', '.join(columns.values())}."]


class CampaignEditor:
    """Replace the fields of a saved campaign, when its state allows it."""

    def __init__(self, db: Database, *, campaigns, clock):
        self._db = db
        self._campaigns = campaigns
        self._clock = clock

    def update(self, tenant_id: str, campaign_id: str, fields: dict, username: str) -> dict:
        """Replace the campaign's fields with `fields` and return the campaign.

        Raises NotFound, or Conflict saying why the campaign cannot change. The write
        happens only while the campaign's status and run are as checked, so a send,
        schedule or cancel that lands first makes it raise Conflict instead. With a
        `revision` in `fields`, a campaign edited since that revision raises Conflict
        too, so two staff editing one draft do not silently overwrite each other.
        """
        fields = dict(fields)
        revision = fields.pop("revision", None)
        campaign = self._campaigns.get(tenant_id, campaign_id)
        if revision is not None and campaign.get("revision", 0) != revision:
            raise _changed_since(campaign)
        refusal = edit_refusal(campaign)
        if refusal is not None:
            raise Conflict(refusal, {"status": campaign["status"]})
        now = self._clock.now()
        if campaign["status"] == "scheduled":
            _check_time_left(campaign["current_run"]["due_at"], now)

        selector = {"_id": campaign_id, "tenant_id": tenant_id, "status": campaign["status"],
                    "current_run_id": campaign.get("current_run_id"), "schedule_active": {"$ne": True}}
        if revision is not None:
            selector["revision"] = revision if revision else {"$in": [0, None]}
        changes = dict(fields, updated_at=now, updated_by=username)
        if self._db.campaigns.find_one_and_update(selector, {"$set": changes, "$inc": {"revision": 1}}) is None:
            latest = self._campaigns.get(tenant_id, campaign_id)
            if revision is not None and latest.get("revision", 0) != revision:
                raise _changed_since(latest)
            raise Conflict("the campaign was sent, scheduled or cancelled while the change was saved: reload it, "
                           "then edit it again if it can still change")
        logger.info("campaign %s edited", campaign_id)
        return self._campaigns.get(tenant_id, campaign_id)


def _changed_since(campaign: dict) -> Conflict:
    who = campaign.get("updated_by") or "someone"
    when = campaign.get("updated_at")
    at = f" at {when:%Y-%m-%d %H:%M} UTC" if when else ""
    return Conflict(f"{who} changed this campaign{at} after you opened it: reload it to see their change, "
                    "then make yours again", {"revision": campaign.get("revision", 0)})


def _check_time_left(due_at: datetime, now: datetime) -> None:
    if due_at - now > EDIT_CLOSES_BEFORE_SEND:
        return
    minutes = int(EDIT_CLOSES_BEFORE_SEND.total_seconds() // 60)
    due = due_at.astimezone(timezone.utc)
    raise Conflict(f"the campaign sends at {due:%Y-%m-%d %H:%M} UTC, less than {minutes} minutes from now, so it can "
                   "no longer change: cancel it, edit it, then schedule it again", {"due_at": due_at.isoformat()})
