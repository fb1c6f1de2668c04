"""The staff Home page's JSON endpoints: dashboard figures, notices and the campaign archive."""

from __future__ import annotations

import logging
from datetime import date
from zoneinfo import ZoneInfo

from flask import Blueprint, current_app, g, request
from marshmallow import ValidationError
from pymongo import ReturnDocument
from pymongo.database import Database

from libs.common.tenants import Tenant
from services.gateway import dashboard_schemas as schemas
from services.gateway.api import requires_session
from services.gateway.errors import Conflict, InvalidInput, NotFound

logger = logging.getLogger(__name__)

dashboard = Blueprint("dashboard", __name__, url_prefix="/api")

PERFORMANCE_LEVEL = "Flex-Pay per text usage"
ARCHIVABLE_STATUSES = ("completed", "cancelled", "failed", "draft")
RECENT_PROBLEM_COUNT = 5
STAGE_OF_STATUS = {
    "draft": "draft",
    "scheduled": "scheduled",
    "sending": "in_process",
    "paused": "in_process",
    "completed": "completed",
    "cancelled": "cancelled",
    "failed": "failed",
}
STAGES = ("draft", "scheduled", "in_process", "completed", "cancelled", "failed", "archived")
# Run counters summed over every run, so the lifetime figures add up the campaigns' cards.
LIFETIME_COUNTERS = ("sent", "delivered", "failed", "undeliverable", "opted_out", "cancelled")


class Dashboard:
    """The figures of one tenant's Home page, read from the store."""

    def __init__(self, db: Database, clock):
        self._db = db
        self._clock = clock

    def summary(self, tenant: Tenant) -> dict:
        """Return texts sent, the daily limit, lifetime totals, campaigns by stage and recent problems.

        Texts sent today and this month are the sender's daily usage counters. They
        count every text Twilio accepted, new attempts included, on the tenant's
        calendar days, and the daily limit is enforced on them. The lifetime figures are
        the run counters, which count each member's text once, so they are the sums of
        the campaigns' cards.
        """
        local_date = self._clock.now().astimezone(ZoneInfo(tenant.timezone)).date()
        sent_today = self._texts_sent(tenant.cloud_id, local_date, local_date)
        return {
            "performance_level": PERFORMANCE_LEVEL,
            "timezone": tenant.timezone,
            "local_date": local_date,
            "texts_sent": {
                "today": sent_today,
                "this_month": self._texts_sent(tenant.cloud_id, local_date.replace(day=1), local_date),
            },
            "daily_limit": {"limit": tenant.daily_limit, "used": sent_today,
                            "remaining": max(tenant.daily_limit - sent_today, 0)},
            "lifetime": self._lifetime(tenant.cloud_id),
            "campaigns": self._campaign_stages(tenant.cloud_id),
            # The product's dashboard leaves its fifth figure undefined ("TBD"); this
            # product fills it with the latest notices sent to the administrator.
            "recent_problems": self.notices(tenant.cloud_id, limit=RECENT_PROBLEM_COUNT)["notices"],
        }

    def notices(self, tenant_id: str, *, limit: int, offset: int = 0) -> dict:
        """Return a page of the tenant's notices, newest first, and how many there are."""
        query = {"tenant_id": tenant_id}
        found = self._db.notifications.find(query).sort([("created_at", -1), ("_id", -1)]).skip(offset).limit(limit)
        return {"notices": list(found), "total": self._db.notifications.count_documents(query)}

    def _texts_sent(self, tenant_id: str, first: date, last: date) -> int:
        """Sum the sender's usage counters of the days from `first` to `last`."""
        query = {"tenant_id": tenant_id, "day": {"$gte": first.isoformat(), "$lte": last.isoformat()}}
        return sum(day.get("count", 0) for day in self._db.usage.find(query, {"count": 1}))

    def _lifetime(self, tenant_id: str) -> dict:
        totals = dict.fromkeys(LIFETIME_COUNTERS, 0)
        for run in self._db.runs.find({"tenant_id": tenant_id}, {"counts": 1}):
            for name in LIFETIME_COUNTERS:
                totals[name] += run.get("counts", {}).get(name, 0)
        return totals

    def _campaign_stages(self, tenant_id: str) -> dict:
        stages = dict.fromkeys(STAGES, 0)
        for campaign in self._db.campaigns.find({"tenant_id": tenant_id}, {"status": 1, "archived": 1}):
            stages[stage_of(campaign)] += 1
        return stages


def stage_of(campaign: dict) -> str:
    """Return the dashboard stage of a campaign.

    A campaign sent again after it was archived counts under its active stage, so the
    dashboard never hides work in progress.
    """
    if campaign.get("archived") and campaign["status"] in ARCHIVABLE_STATUSES:
        return "archived"
    return STAGE_OF_STATUS.get(campaign["status"], "draft")


class CampaignArchive:
    """Set campaigns aside from the active list, and bring them back."""

    def __init__(self, db: Database, clock):
        self._campaigns = db.campaigns
        self._clock = clock

    def archive(self, tenant_id: str, campaign_id: str) -> None:
        """Mark a finished or draft campaign archived; raise NotFound or Conflict.

        The status stays as it was. Archiving an archived campaign changes nothing.
        """
        now = self._clock.now()
        archived = self._campaigns.find_one_and_update(
            {"_id": campaign_id, "tenant_id": tenant_id, "status": {"$in": list(ARCHIVABLE_STATUSES)},
             "archived": {"$ne": True}},
            {"$set": {"archived": True, "archived_at": now, "updated_at": now}},
            return_document=ReturnDocument.AFTER,
        )
        if archived is not None:
            logger.info("campaign %s archived", campaign_id)
            return
        campaign = self._find(tenant_id, campaign_id)
        if campaign["status"] not in ARCHIVABLE_STATUSES:
            raise Conflict(f"the campaign is {campaign['status']}, so it cannot be archived: wait until it "
                           "completes, or cancel it first", {"status": campaign["status"]})

    def unarchive(self, tenant_id: str, campaign_id: str) -> None:
        """Return an archived campaign to the active list; raise NotFound."""
        restored = self._campaigns.find_one_and_update(
            {"_id": campaign_id, "tenant_id": tenant_id, "archived": True},
            {"$set": {"archived": False, "updated_at": self._clock.now()}, "$unset": {"archived_at": ""}},
        )
        if restored is None:
            self._find(tenant_id, campaign_id)
        else:
            logger.info("campaign %s unarchived", campaign_id)

    def archived_ids(self, tenant_id: str) -> list[str]:
        """Return the ids of the tenant's archived campaigns, most recently archived first."""
        found = self._campaigns.find({"tenant_id": tenant_id, "archived": True}, {"_id": 1}).sort("archived_at", -1)
        return [campaign["_id"] for campaign in found]

    def _find(self, tenant_id: str, campaign_id: str) -> dict:
        campaign = self._campaigns.find_one({"_id": campaign_id, "tenant_id": tenant_id})
        if campaign is None:
            raise NotFound(f"no campaign {campaign_id} in this organisation")
        return campaign


def _context():
    return current_app.extensions["text_manager"]


def _archive() -> CampaignArchive:
    return CampaignArchive(_context().runtime.db, _context().runtime.clock)


def _dashboard() -> Dashboard:
    return Dashboard(_context().runtime.db, _context().runtime.clock)


def _archived_campaign(campaign_id: str) -> dict:
    return schemas.ArchivedCampaignOut().dump(_context().campaigns.get(g.tenant_id, campaign_id))


@dashboard.get("/dashboard")
@requires_session
def read_dashboard():
    """Return the Home page figures of the signed-in organisation."""
    tenant = _context().runtime.tenants.get(g.tenant_id)
    return schemas.DashboardOut().dump(_dashboard().summary(tenant))


@dashboard.get("/notices")
@requires_session
def list_notices():
    """List the notices sent to the organisation's administrator, newest first (`limit`, `offset`)."""
    try:
        page = schemas.NoticesQuery().load(request.args.to_dict())
    except ValidationError as error:
        raise InvalidInput("some query parameters are invalid: correct them and send again",
                           {"fields": error.messages}) from None
    return schemas.NoticesOut().dump(_dashboard().notices(g.tenant_id, **page))


@dashboard.get("/archive")
@requires_session
def list_archived():
    """List the archived campaigns with their counts, most recently archived first."""
    ids = _archive().archived_ids(g.tenant_id)
    campaigns = [_context().campaigns.get(g.tenant_id, campaign_id) for campaign_id in ids]
    return schemas.ArchiveOut().dump({"campaigns": campaigns})


@dashboard.post("/campaigns/<campaign_id>/archive")
@requires_session
def archive_campaign(campaign_id: str):
    """Archive a completed, cancelled, failed or draft campaign; 409 for any other."""
    _archive().archive(g.tenant_id, campaign_id)
    return _archived_campaign(campaign_id)


@dashboard.post("/campaigns/<campaign_id>/unarchive")
@requires_session
def unarchive_campaign(campaign_id: str):
    """Return an archived campaign to the active list."""
    _archive().unarchive(g.tenant_id, campaign_id)
    return _archived_campaign(campaign_id)
