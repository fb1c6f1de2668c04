"""Recurring schedules of campaigns: set, read and stop them through the JSON API."""

from __future__ import annotations

from flask import Blueprint, current_app, g
from marshmallow import Schema, fields, validate

from services.gateway.api import load, requires_session
from services.gateway.errors import Conflict, InvalidInput, NotFound
from services.scheduler.recurrence import FREQUENCIES, WEEKDAY_NAMES, Rule, RuleError

schedules = Blueprint("schedules", __name__, url_prefix="/api")


class ScheduleIn(Schema):
    freq = fields.String(required=True, validate=validate.OneOf(FREQUENCIES))
    time = fields.String(required=True, validate=validate.Regexp(r"^\d{2}:\d{2}$", error="must be HH:MM, e.g. 09:30"))
    tz = fields.String(load_default=None)
    start = fields.Date(required=True)
    end = fields.Date(load_default=None)
    day = fields.Integer(load_default=None, validate=validate.Range(min=1, max=31))
    weekdays = fields.List(fields.String(validate=validate.OneOf(WEEKDAY_NAMES)), load_default=None)


class ScheduleOut(Schema):
    campaign_id = fields.String(attribute="_id")
    schedule = fields.Dict()
    schedule_active = fields.Boolean()
    next_occurrence = fields.DateTime(allow_none=True)
    missed_occurrences = fields.List(fields.DateTime())


def _context():
    return current_app.extensions["text_manager"]


@schedules.put("/campaigns/<campaign_id>/schedule")
@requires_session
def set_schedule(campaign_id: str):
    """Make the campaign recur; the first run is the first occurrence from now on."""
    data = load(ScheduleIn())
    runtime = _context().runtime
    rule_fields = {key: value for key, value in data.items() if value is not None}
    rule_fields["tz"] = data["tz"] or runtime.tenants.get(g.tenant_id).timezone
    for key in ("start", "end"):
        if key in rule_fields:
            rule_fields[key] = rule_fields[key].isoformat()
    try:
        following = Rule.from_dict(rule_fields).next_after(runtime.clock.now())
    except RuleError as error:
        raise InvalidInput(str(error), {"fields": {"schedule": [str(error)]}}) from None
    if following is None:
        raise InvalidInput("the schedule has no occurrence after now: move its end date later")
    updated = runtime.db.campaigns.find_one_and_update(
        {"_id": campaign_id, "tenant_id": g.tenant_id, "status": {"$nin": ["sending", "paused"]}},
        {"$set": {"schedule": rule_fields, "schedule_active": True, "next_occurrence": following,
                  "status": "scheduled", "updated_at": runtime.clock.now()}},
        return_document=True,
    )
    if updated is None:
        _raise_missing_or_busy(campaign_id)
    return ScheduleOut().dump(runtime.db.campaigns.find_one({"_id": campaign_id, "tenant_id": g.tenant_id}))


@schedules.get("/campaigns/<campaign_id>/schedule")
@requires_session
def read_schedule(campaign_id: str):
    """Return the campaign's schedule, next occurrence and missed occurrences."""
    campaign = _context().runtime.db.campaigns.find_one({"_id": campaign_id, "tenant_id": g.tenant_id})
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id} in this organisation")
    return ScheduleOut().dump(campaign)


@schedules.delete("/campaigns/<campaign_id>/schedule")
@requires_session
def stop_schedule(campaign_id: str):
    """Stop future occurrences; a run already under way goes on."""
    runtime = _context().runtime
    campaign = runtime.db.campaigns.find_one_and_update(
        {"_id": campaign_id, "tenant_id": g.tenant_id, "schedule_active": True},
        {"$set": {"schedule_active": False, "next_occurrence": None, "updated_at": runtime.clock.now()}},
    )
    if campaign is None:
        if runtime.db.campaigns.find_one({"_id": campaign_id, "tenant_id": g.tenant_id}) is None:
            raise NotFound(f"no campaign {campaign_id} in this organisation")
        raise Conflict("the campaign has no recurring schedule to stop")
    runtime.db.campaigns.update_one({"_id": campaign_id, "tenant_id": g.tenant_id, "status": "scheduled"},
                                    {"$set": {"status": "draft"}})
    return ScheduleOut().dump(runtime.db.campaigns.find_one({"_id": campaign_id, "tenant_id": g.tenant_id}))


def _raise_missing_or_busy(campaign_id: str) -> None:
    campaign = _context().runtime.db.campaigns.find_one({"_id": campaign_id, "tenant_id": g.tenant_id})
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id} in this organisation")
    raise Conflict(f"the campaign is {campaign['status']}: wait until it finishes, or cancel it, then schedule it")
