"""The JSON API staff use through the web UI: sessions, campaigns, settings, checks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from flask import Blueprint, current_app, g, jsonify, request
from marshmallow import Schema, ValidationError

from libs.common.phones import check_number
from libs.common.tenants import Tenant
from libs.common.texts import measure
from services.gateway import schemas
from services.gateway.auth import COOKIE_NAME, login_required, sign_in
from services.gateway.editing import CampaignEditor, preview_notes
from services.gateway.errors import InvalidInput
from services.gateway.json_body import read_json_object
from services.gateway.opt_outs import list_opt_outs
from services.gateway.preview import CampaignPreview
from services.gateway.tenant_settings import change_settings

api = Blueprint("api", __name__, url_prefix="/api")

# A one-time send can be scheduled up to a year ahead, a leap year included. A later
# time is almost always a typing slip, such as 2062 for 2026.
MAX_SEND_AHEAD = timedelta(days=366)


def _ctx():
    return current_app.extensions["text_manager"]


requires_session = login_required(lambda: _ctx().sessions)


def load(schema: Schema) -> dict:
    """Validate the JSON body with a schema; raise InvalidInput naming each bad field."""
    body = read_json_object()
    try:
        return schema.load(body)
    except ValidationError as error:
        raise InvalidInput("some fields are invalid: correct them and send again", {"fields": error.messages}) from None


def load_query(schema: Schema) -> dict:
    """Validate the query string with a schema; raise InvalidInput naming each bad parameter."""
    try:
        return schema.load(request.args.to_dict())
    except ValidationError as error:
        raise InvalidInput("some query parameters are invalid: correct them and send again",
                           {"fields": error.messages}) from None


@api.post("/session")
def create_session():
    """Sign in with iMIS user name, password and Cloud ID; set the session cookie."""
    data = load(schemas.SessionIn())
    ctx = _ctx()
    tenant = sign_in(ctx.runtime.tenants, ctx.throttle, cloud_id=data["cloud_id"], username=data["username"],
                     password=data["password"], address=request.remote_addr or "unknown",
                     timeout_s=ctx.runtime.settings.imis_timeout_s)
    token, session = ctx.sessions.create(data["cloud_id"], data["username"], is_admin=tenant.is_admin(data["username"]))
    response = jsonify(schemas.SessionOut().dump(session))
    response.set_cookie(COOKIE_NAME, token, httponly=True, samesite="Lax", secure=ctx.runtime.settings.secure_cookies,
                        max_age=int(ctx.runtime.settings.session_hours * 3600))
    return response, 201


@api.get("/session")
@requires_session
def read_session():
    """Return who is signed in, whether they are an administrator, and the CSRF token to send with changes."""
    _, session = _tenant_and_session()
    return schemas.SessionOut().dump(session)


@api.delete("/session")
@requires_session
def delete_session():
    """Sign out."""
    _ctx().sessions.delete(request.cookies.get(COOKIE_NAME))
    response = jsonify({})
    response.delete_cookie(COOKIE_NAME)
    return response


@api.get("/campaigns")
@requires_session
def list_campaigns():
    """List the organisation's campaigns, newest first."""
    return {"campaigns": schemas.CampaignOut(many=True).dump(_ctx().campaigns.list(g.tenant_id))}


@api.post("/campaigns")
@requires_session
def create_campaign():
    """Create a draft campaign; the response's `notes` list what only preview can check."""
    data = load(schemas.CampaignIn())
    campaign = _ctx().campaigns.create(g.tenant_id, data, g.session["username"])
    return schemas.CampaignSavedOut().dump(dict(campaign, notes=preview_notes(data))), 201


@api.put("/campaigns/<campaign_id>")
@requires_session
def update_campaign(campaign_id: str):
    """Replace a draft's fields, or those of a campaign not yet started (409 otherwise, saying why)."""
    data = load(schemas.CampaignEditIn())
    ctx = _ctx()
    editor = CampaignEditor(ctx.runtime.db, campaigns=ctx.campaigns, clock=ctx.runtime.clock)
    campaign = editor.update(g.tenant_id, campaign_id, data, g.session["username"])
    return schemas.CampaignSavedOut().dump(dict(campaign, notes=preview_notes(data)))


@api.get("/campaigns/<campaign_id>")
@requires_session
def read_campaign(campaign_id: str):
    """Return a campaign with its counts."""
    return schemas.CampaignOut().dump(_ctx().campaigns.get(g.tenant_id, campaign_id))


@api.get("/campaigns/<campaign_id>/preview")
@requires_session
def preview_campaign(campaign_id: str):
    """Return who would get a text and who not, the segments, the first texts and any warnings."""
    runtime = _ctx().runtime
    preview = CampaignPreview(runtime.db, tenants=runtime.tenants, imis_factory=runtime.imis, clock=runtime.clock)
    return schemas.PreviewOut().dump(preview.build(g.tenant_id, campaign_id))


@api.post("/campaigns/<campaign_id>/send")
@requires_session
def send_campaign(campaign_id: str):
    """Send now, or once at `send_at`."""
    data = load(schemas.SendIn()) if request.get_data() else {"send_at": None, "resend": False}
    if data["send_at"] is not None:
        _check_send_at(data["send_at"])
    campaign = _ctx().campaigns.send(g.tenant_id, campaign_id, data["send_at"], resend=data["resend"])
    return schemas.CampaignOut().dump(campaign), 202


@api.post("/campaigns/<campaign_id>/pause")
@requires_session
def pause_campaign(campaign_id: str):
    """Pause the campaign's current run between texts."""
    return schemas.CampaignOut().dump(_ctx().campaigns.pause(g.tenant_id, campaign_id))


@api.post("/campaigns/<campaign_id>/resume")
@requires_session
def resume_campaign(campaign_id: str):
    """Resume the campaign's current run where sending stopped."""
    return schemas.CampaignOut().dump(_ctx().campaigns.resume(g.tenant_id, campaign_id))


@api.post("/campaigns/<campaign_id>/cancel")
@requires_session
def cancel_campaign(campaign_id: str):
    """Cancel the campaign's current run for good."""
    return schemas.CampaignOut().dump(_ctx().campaigns.cancel(g.tenant_id, campaign_id))


@api.get("/runs/<run_id>")
@requires_session
def read_run(run_id: str):
    """Return a run's counts and the rows it skipped, with reasons (`offset`, `limit`)."""
    page = load_query(schemas.RunQuery())
    report = _ctx().campaigns.run_report(g.tenant_id, run_id, **page)
    return schemas.RunReportOut().dump(report)


@api.get("/runs/<run_id>/messages")
@requires_session
def list_run_messages(run_id: str):
    """Return a run's texts by number, with whether and how each was logged in iMIS (`offset`, `limit`)."""
    page = load_query(schemas.MessagesQuery())
    return schemas.MessagesOut().dump(_ctx().campaigns.run_messages(g.tenant_id, run_id, **page))


@api.get("/opt-outs")
@requires_session
def read_opt_outs():
    """Return the organisation's opted-out numbers, latest first, masked to their last 4 digits (`offset`, `limit`)."""
    page = load_query(schemas.OptOutsQuery())
    return schemas.OptOutsOut().dump(list_opt_outs(_ctx().runtime.db, g.tenant_id, **page))


@api.get("/settings")
@requires_session
def read_settings():
    """Return the organisation's settings, secrets only as whether they are set, and who may change them."""
    tenant, session = _tenant_and_session()
    return schemas.SettingsOut().dump(dict(tenant.public_view(), is_admin=session["is_admin"]))


@api.put("/settings")
@requires_session
def update_settings():
    """Change settings or the administrator list (administrators only); an omitted or empty secret keeps its value."""
    data = load(schemas.SettingsIn())
    tenant = change_settings(_ctx().runtime.tenants, g.tenant_id, g.session["username"], data)
    is_admin = tenant.is_admin(g.session["username"])
    _ctx().sessions.refresh_admin(g.session, is_admin)
    return schemas.SettingsOut().dump(dict(tenant.public_view(), is_admin=is_admin))


@api.post("/texts/measure")
@requires_session
def measure_text():
    """Return the encoding, segments and units of a text as the editor types it."""
    data = load(schemas.MeasureIn())
    return schemas.MeasureOut().dump(measure(data["body"]))


@api.post("/phone-numbers/check")
@requires_session
def check_phone_number():
    """Normalise a number and report whether it can take a text (the opt-out list is not read)."""
    data = load(schemas.PhoneCheckIn())
    country = data["country"] or _ctx().runtime.tenants.get(g.tenant_id).default_country
    number = "" if data["number"] is None else data["number"]
    return schemas.PhoneCheckOut().dump(check_number(number, country))


def _check_send_at(send_at: datetime) -> None:
    """Raise InvalidInput when `send_at` is further ahead than MAX_SEND_AHEAD; the service rejects past times."""
    latest = _ctx().runtime.clock.now() + MAX_SEND_AHEAD
    if send_at > latest:
        message = (f"send_at is more than {MAX_SEND_AHEAD.days} days ahead: pick a time before "
                   f"{latest.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC")
        raise InvalidInput(message, {"fields": {"send_at": [message]}})


def _tenant_and_session() -> tuple[Tenant, dict]:
    """Return the signed-in user's tenant and session, with the session's administrator flag read from the tenant."""
    tenant = _ctx().runtime.tenants.get(g.tenant_id)
    session = _ctx().sessions.refresh_admin(g.session, tenant.is_admin(g.session["username"]))
    return tenant, session
