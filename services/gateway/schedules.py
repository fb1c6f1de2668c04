"""Recurring schedules of campaigns: set, read and stop them through the JSON API."""

from __future__ import annotations

import itertools
from datetime import date, datetime, timedelta

from flask import Blueprint, current_app, g
from marshmallow import Schema, fields, validate
from pymongo import ReturnDocument
from pymongo.database import Database

from libs.common.clock import as_utc
from libs.common.progress import ACTIVE_RUN_STATUSES
from services.gateway.api import load, requires_session
from services.gateway.errors import Conflict, InvalidInput, NotFound
from services.scheduler.recurrence import FREQUENCIES, WEEKDAY_NAMES, Rule, RuleError

schedules = Blueprint("schedules", __name__, url_prefix="/api")

UPCOMING_COUNT = 5
# A start date further back would only make the scheduler walk more days to the next
# occurrence, and dates further ahead are more likely typing mistakes than plans.
MAX_START_DAYS_BACK = 366
MAX_DAYS_AHEAD = 3660
NO_OCCURRENCE = "the schedule has no occurrence after now: move its end date later"
# The campaign status a stopped schedule leaves, by the status of the campaign's last run.
STATUS_OF_FINISHED_RUN = {"completed": "completed", "cancelled": "cancelled", "failed": "failed"}


class ScheduleIn(Schema):
    freq = fields.String(required=True, validate=validate.OneOf(FREQUENCIES))
    time = fields.String(required=True, validate=validate.Regexp(r"^\d{2}:\d{2}$", error="must be HH:MM, e.g. 09:30"))
    tz = fields.String(load_default=None, metadata={"description": "IANA time zone; the organisation's by default"})
    start = fields.Date(required=True)
    end = fields.Date(load_default=None)
    day = fields.Integer(load_default=None, validate=validate.Range(min=1, max=31))
    weekdays = fields.List(fields.String(validate=validate.OneOf(WEEKDAY_NAMES)), load_default=None)


class ScheduleOut(Schema):
    campaign_id = fields.String(attribute="_id")
    status = fields.String(metadata={"description": "the campaign's status after the change"})
    schedule = fields.Dict(allow_none=True)
    schedule_active = fields.Boolean(dump_default=False)
    next_occurrence = fields.DateTime(allow_none=True)
    upcoming = fields.List(fields.DateTime(), metadata={"description": (
        f"the next {UPCOMING_COUNT} occurrences, as UTC instants; empty once the schedule stopped")})
    missed_occurrences = fields.List(fields.DateTime(), dump_default=list)
    skipped_occurrences = fields.List(fields.Nested(lambda: SkippedOccurrenceOut()), dump_default=list, metadata={
        "description": "occurrences not sent because the run of an earlier one had not finished"})


class SkippedOccurrenceOut(Schema):
    at = fields.DateTime()
    reason = fields.String()


class CampaignSchedules:
    """Set, read and stop the recurring schedules of one tenant's campaigns."""

    def __init__(self, db: Database, clock, tenant_id: str):
        self._campaigns = db.campaigns
        self._runs = db.runs
        self._clock = clock
        self._tenant_id = tenant_id

    def set(self, campaign_id: str, rule_fields: dict) -> dict:
        """Store the rule and the first occurrence after now; raise InvalidInput, NotFound or Conflict.

        A campaign whose current run is due or under way is not changed, so a schedule
        never runs beside a run sent once.
        """
        following = _first_occurrence(rule_fields, self._clock.now())
        campaign = self._find(campaign_id)
        run = self._current_run(campaign)
        if run is not None and run["status"] in ACTIVE_RUN_STATUSES:
            raise Conflict(f"the campaign's current run is {run['status']}: wait until it finishes, or cancel it, "
                           "then set the schedule", {"run_id": run["_id"], "status": run["status"]})
        updated = self._campaigns.find_one_and_update(
            {"_id": campaign_id, "tenant_id": self._tenant_id, "current_run_id": campaign.get("current_run_id"),
             "status": {"$nin": ["sending", "paused"]}},
            {"$set": {"schedule": rule_fields, "schedule_active": True, "next_occurrence": following,
                      "status": "scheduled", "error": None, "updated_at": self._clock.now()}},
            return_document=ReturnDocument.AFTER,
        )
        if updated is None:
            raise Conflict("the campaign started sending while the schedule was being set: wait until it "
                           "finishes, or cancel it, then set the schedule")
        return self._with_upcoming(updated)

    def read(self, campaign_id: str) -> dict:
        """Return the campaign with its next occurrences; raise NotFound."""
        return self._with_upcoming(self._find(campaign_id))

    def stop(self, campaign_id: str) -> dict:
        """Stop future occurrences; raise NotFound, or Conflict when nothing repeats.

        A run under way goes on. Otherwise the campaign takes the status its last run
        left, or `draft` when it never ran, so stopping a schedule keeps a completed
        campaign completed. The rule, the runs and the missed occurrences are kept.
        """
        now = self._clock.now()
        campaign = self._campaigns.find_one_and_update(
            {"_id": campaign_id, "tenant_id": self._tenant_id, "schedule_active": True},
            {"$set": {"schedule_active": False, "next_occurrence": None, "schedule_stopped_at": now,
                      "updated_at": now}},
            return_document=ReturnDocument.AFTER,
        )
        if campaign is None:
            self._find(campaign_id)
            raise Conflict("the campaign has no recurring schedule to stop")
        run = self._current_run(campaign)
        if run is None or run["status"] not in ACTIVE_RUN_STATUSES:
            status = STATUS_OF_FINISHED_RUN.get(run["status"], "completed") if run else "draft"
            self._campaigns.update_one({"_id": campaign_id, "tenant_id": self._tenant_id, "status": "scheduled",
                                        "current_run_id": campaign.get("current_run_id")},
                                       {"$set": {"status": status}})
        return self.read(campaign_id)

    def _with_upcoming(self, campaign: dict) -> dict:
        upcoming = []
        if campaign.get("schedule_active") and campaign.get("next_occurrence"):
            try:
                occurrences = Rule.from_dict(campaign["schedule"]).occurrences()
            except RuleError:
                occurrences = iter(())
            later = (moment for moment in occurrences if moment >= as_utc(campaign["next_occurrence"]))
            upcoming = list(itertools.islice(later, UPCOMING_COUNT))
        return dict(campaign, upcoming=upcoming)

    def _current_run(self, campaign: dict) -> dict | None:
        if not campaign.get("current_run_id"):
            return None
        return self._runs.find_one({"_id": campaign["current_run_id"], "tenant_id": self._tenant_id})

    def _find(self, campaign_id: str) -> dict:
        campaign = self._campaigns.find_one({"_id": campaign_id, "tenant_id": self._tenant_id})
        if campaign is None:
            raise NotFound(f"no campaign {campaign_id} in this organisation")
        return campaign


def _first_occurrence(rule_fields: dict, now: datetime) -> datetime:
    """Return the rule's first occurrence after now; raise InvalidInput for a rule that cannot work."""
    _check_dates(rule_fields, now.date())
    try:
        following = Rule.from_dict(rule_fields).next_after(now)
    except RuleError as error:
        raise InvalidInput(str(error), {"fields": {"schedule": [str(error)]}}) from None
    if following is None:
        raise InvalidInput(NO_OCCURRENCE)
    return following


def _check_dates(rule_fields: dict, today: date) -> None:
    earliest, latest = today - timedelta(days=MAX_START_DAYS_BACK), today + timedelta(days=MAX_DAYS_AHEAD)
    if rule_fields.get("end") and date.fromisoformat(rule_fields["end"]) < today:
        raise InvalidInput(NO_OCCURRENCE)
    start = date.fromisoformat(rule_fields["start"])
    if not earliest <= start <= latest:
        message = f"start must be between {earliest.isoformat()} and {latest.isoformat()}"
        raise InvalidInput(f"{message}: pick a start date near today", {"fields": {"start": [message]}})
    if rule_fields.get("end") and date.fromisoformat(rule_fields["end"]) > latest:
        message = f"end must be on or before {latest.isoformat()}"
        raise InvalidInput(f"{message}: pick an earlier end date, or none", {"fields": {"end": [message]}})


def _context():
    return current_app.extensions["text_manager"]


def _schedules() -> CampaignSchedules:
    runtime = _context().runtime
    return CampaignSchedules(runtime.db, runtime.clock, g.tenant_id)


@schedules.put("/campaigns/<campaign_id>/schedule")
@requires_session
def set_schedule(campaign_id: str):
    """Make the campaign recur, in the organisation's time zone unless `tz` names another; 409 while a run is active."""
    data = load(ScheduleIn())
    rule_fields = {key: value for key, value in data.items() if value is not None}
    rule_fields["tz"] = data["tz"] or _context().runtime.tenants.get(g.tenant_id).timezone
    for key in ("start", "end"):
        if key in rule_fields:
            rule_fields[key] = rule_fields[key].isoformat()
    return ScheduleOut().dump(_schedules().set(campaign_id, rule_fields))


@schedules.get("/campaigns/<campaign_id>/schedule")
@requires_session
def read_schedule(campaign_id: str):
    """Return the campaign's schedule, its next occurrences and the missed ones."""
    return ScheduleOut().dump(_schedules().read(campaign_id))


@schedules.delete("/campaigns/<campaign_id>/schedule")
@requires_session
def stop_schedule(campaign_id: str):
    """Stop future occurrences; a run under way goes on, and the campaign keeps its last run's status."""
    return ScheduleOut().dump(_schedules().stop(campaign_id))
