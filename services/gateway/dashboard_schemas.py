"""marshmallow schemas for the dashboard, notice and archive endpoints."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from services.gateway.schemas import CampaignOut


class NoticesQuery(Schema):
    """Query string of `GET /api/notices`."""

    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0))


class NoticeOut(Schema):
    id = fields.Function(lambda notice: str(notice["_id"]))
    subject = fields.String()
    text = fields.String()
    to = fields.List(fields.String())
    created_at = fields.DateTime(allow_none=True)


class NoticesOut(Schema):
    notices = fields.List(fields.Nested(NoticeOut))
    total = fields.Integer()


class TextsSentOut(Schema):
    today = fields.Integer()
    this_month = fields.Integer()


class DailyLimitOut(Schema):
    limit = fields.Integer()
    used = fields.Integer()
    remaining = fields.Integer()


class LifetimeOut(Schema):
    """Every run's counters added up: the sums of the campaigns' cards."""

    sent = fields.Integer(metadata={"description": "texts Twilio accepted, each member's text counted once"})
    delivered = fields.Integer()
    failed = fields.Integer()
    undeliverable = fields.Integer(metadata={"description": "accepted, then reported undeliverable (30005, 30006)"})
    opted_out = fields.Integer()
    cancelled = fields.Integer()


class CampaignStagesOut(Schema):
    """Campaign counts by stage; an archived campaign counts only under `archived`."""

    draft = fields.Integer()
    scheduled = fields.Integer()
    in_process = fields.Integer()
    completed = fields.Integer()
    cancelled = fields.Integer()
    failed = fields.Integer()
    archived = fields.Integer()


class DashboardOut(Schema):
    performance_level = fields.String()
    timezone = fields.String()
    local_date = fields.Date()
    texts_sent = fields.Nested(TextsSentOut)
    daily_limit = fields.Nested(DailyLimitOut)
    lifetime = fields.Nested(LifetimeOut)
    campaigns = fields.Nested(CampaignStagesOut)
    recent_problems = fields.List(fields.Nested(NoticeOut))


class ArchivedCampaignOut(CampaignOut):
    archived = fields.Boolean(dump_default=False)
    archived_at = fields.DateTime(allow_none=True, dump_default=None)


class ArchiveOut(Schema):
    campaigns = fields.List(fields.Nested(ArchivedCampaignOut))
