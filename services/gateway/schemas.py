"""marshmallow schemas for the JSON API: one for what comes in, one for what goes out."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates, validates_schema

from libs.common.imis_log import TEXT_LOG_MODES
from libs.common.phones import (
    SHOWN_DIGITS,
    is_sender_short_code,
    is_valid_country,
    mask_number,
    sender_number_problem,
)
from libs.common.texts import MAX_BODY_CHARS, Template, TemplateError, control_characters, is_blank, measure
from services.gateway.editing import EDIT_CLOSES_BEFORE_SEND, edit_refusal
from services.gateway.tenant_settings import clean_admins


class TrimmedString(fields.String):
    """A string loaded without surrounding whitespace, so that "x " and "x" are one value."""

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        return super()._deserialize(value, attr, data, **kwargs).strip()


class SessionIn(Schema):
    # The user name is sent to iMIS trimmed, and the sign-in throttle also ignores its case.
    username = TrimmedString(required=True, validate=validate.Length(min=1, max=200))
    password = fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=500))
    cloud_id = TrimmedString(required=True, validate=validate.Length(min=1, max=100))


class SessionOut(Schema):
    username = fields.String()
    cloud_id = fields.String(attribute="tenant_id")
    csrf_token = fields.String()
    is_admin = fields.Boolean(metadata={"description": "whether the user may change the organisation's settings"})


MAX_PROMPTS = 50
# Upper bounds keep settings inside what the store accepts (8-byte integers) and what a
# sender number can do; raise them here if a carrier ever allows more.
MAX_DAILY_LIMIT = 1_000_000
MAX_RUN_SEGMENT_LIMIT = 10_000_000
TEXT_LOG_DESCRIPTION = (
    "How each sent text is logged in iMIS: interaction (an SMS entry in the member's communication log, "
    "on newer sites; a site without it gets a TEXTMSG activity instead), activity (a TEXTMSG activity, "
    "whose activity type must exist in iMIS) or off (nothing is written)."
)


IQA_PATH_EXAMPLE = "$/TextManager/Members"
COLUMN_ERROR = "must name a column of the IQA, in 1 to {max} characters"


class CampaignIn(Schema):
    """A campaign as staff save it, new or changed.

    Whether the IQA exists and returns the columns the campaign uses is known only by
    running it. Preview and send check that, and the save response's notes name the columns.
    """

    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    body = fields.String(required=True)
    iqa_path = TrimmedString(required=True, validate=validate.Length(max=500))
    email = fields.Email(load_default="")
    phone_column = TrimmedString(load_default="Mobile", validate=validate.Length(min=1, max=100, error=COLUMN_ERROR))
    id_column = TrimmedString(load_default="ID", validate=validate.Length(min=1, max=100, error=COLUMN_ERROR))
    smart_encoding = fields.Boolean(load_default=False)
    prompts = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=100)),
                          values=fields.String(validate=validate.Length(max=1000)), load_default=dict,
                          validate=validate.Length(max=MAX_PROMPTS, error=f"at most {MAX_PROMPTS} prompts"))

    @validates("name")
    def check_name(self, value: str, **kwargs) -> None:
        if is_blank(value):
            raise ValidationError("the name is blank: give the campaign a name that staff will recognise")

    @validates("body")
    def check_body(self, value: str, **kwargs) -> None:
        if is_blank(value):
            raise ValidationError("the text is empty or only has invisible characters such as spaces or zero-width "
                                  "spaces: write the message to send")
        controls = control_characters(value)
        if controls:
            raise ValidationError(f"the text contains control characters that phones cannot show "
                                  f"({', '.join(controls)}): remove them")
        try:
            Template.parse(value)
        except TemplateError as error:
            raise ValidationError(str(error)) from None
        if measure(value).too_long:
            raise ValidationError(f"the text is longer than {MAX_BODY_CHARS:,} characters: shorten it")

    @validates("iqa_path")
    def check_iqa_path(self, value: str, **kwargs) -> None:
        if not value.startswith("$/"):
            raise ValidationError(f"must be an IQA path starting with $/, for example {IQA_PATH_EXAMPLE}")
        if any(is_blank(part) for part in value[2:].split("/")):
            raise ValidationError(f"has an empty folder or query name: write the path as $/Folder/Query Name, "
                                  f"for example {IQA_PATH_EXAMPLE}")


class CampaignEditIn(CampaignIn):
    """A change to a saved campaign, with the revision the editor started from."""

    revision = fields.Integer(load_default=None, validate=validate.Range(min=0), metadata={"description": (
        "the campaign's revision when the editor loaded it; a campaign changed since is refused with 409. "
        "Omit it to replace the campaign whatever changed")})


class CountsOut(Schema):
    recipients = fields.Integer()
    sent = fields.Integer()
    delivered = fields.Integer()
    failed = fields.Integer()
    opted_out = fields.Integer()
    skipped = fields.Integer(metadata={"description": (
        "not texted: IQA rows set aside before sending, and texts whose create call Twilio refused")})
    undeliverable = fields.Integer(metadata={"description": (
        "texts Twilio accepted and then reported undeliverable (errors 30005 and 30006); not failed")})
    cancelled = fields.Integer(metadata={"description": "texts a cancelled or failed run never sent"})


class RunOut(Schema):
    id = fields.String(attribute="_id")
    status = fields.String()
    due_at = fields.DateTime()
    counts = fields.Nested(CountsOut)
    skipped_by_reason = fields.Dict(keys=fields.String(), values=fields.Integer())
    # Texts sent with a merge field that had no value and no fallback, per field.
    blank_fields = fields.Dict(keys=fields.String(), values=fields.Integer())
    segments = fields.Integer()
    error = fields.String(allow_none=True)
    recurring = fields.Boolean(dump_default=False, metadata={"description": "an occurrence of a recurring schedule"})
    deferred = fields.Integer(metadata={"description": (
        "texts waiting for the daily limit; only on a campaign's current run while it is under way")})
    deferred_until = fields.DateTime(allow_none=True, metadata={"description": (
        "when the first of them goes out: the organisation's next midnight, or a past time once the limit grew")})


class RunReportOut(Schema):
    run = fields.Nested(RunOut)
    skipped = fields.List(fields.Dict(), metadata={"description": "IQA rows not texted, with the reason, one page"})
    skipped_total = fields.Integer()
    refused_by_reason = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata={
        "description": "texts Twilio refused to create, by reason"})
    undeliverable_by_reason = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata={
        "description": "texts Twilio accepted and then reported undeliverable, by reason"})


class CampaignOut(Schema):
    id = fields.String(attribute="_id")
    name = fields.String()
    body = fields.String()
    iqa_path = fields.String()
    email = fields.String()
    phone_column = fields.String()
    id_column = fields.String()
    smart_encoding = fields.Boolean()
    prompts = fields.Dict(keys=fields.String(), values=fields.String(), dump_default=dict)
    status = fields.String()
    error = fields.String(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    updated_by = fields.String()
    revision = fields.Integer(dump_default=0, metadata={"description": "how many times the campaign was edited"})
    counts = fields.Nested(CountsOut)
    current_run = fields.Nested(RunOut, allow_none=True)
    schedule = fields.Dict(allow_none=True, dump_default=None, metadata={"description": (
        "the recurring rule, as PUT /api/campaigns/{id}/schedule stored it; kept after the schedule stops")})
    schedule_active = fields.Boolean(dump_default=False)
    next_occurrence = fields.DateTime(allow_none=True, dump_default=None)
    editable = fields.Function(lambda campaign: edit_refusal(campaign) is None, metadata={"description": (
        "whether PUT /api/campaigns/{id} may change the campaign: a draft, a campaign scheduled to send once "
        f"whose run has not started (until {EDIT_CLOSES_BEFORE_SEND.total_seconds() / 60:g} minutes before its "
        "send time), or a failed or cancelled campaign that sent no text")})


class CampaignSavedOut(CampaignOut):
    """A campaign just created or changed, with what saving could not check."""

    notes = fields.List(fields.String(), metadata={
        "description": "checks left for preview, such as whether the IQA returns the columns the campaign uses"})


class SendIn(Schema):
    send_at = fields.AwareDateTime(load_default=None, allow_none=True)
    resend = fields.Boolean(load_default=False)


class MeasureIn(Schema):
    body = fields.String(required=True)


class MeasureOut(Schema):
    encoding = fields.String()
    segments = fields.Integer()
    units = fields.Integer()
    too_long = fields.Boolean()


class PhoneCheckIn(Schema):
    number = fields.Raw(required=True)
    country = fields.String(load_default=None, allow_none=True)

    @validates("country")
    def check_country(self, value: str | None, **kwargs) -> None:
        if value is not None and not is_valid_country(value):
            raise ValidationError("must be an ISO 3166 alpha-2 country code such as US")

    @validates("number")
    def check_number_type(self, value: object, **kwargs) -> None:
        if value is not None and not isinstance(value, (str, int)):
            raise ValidationError("must be a string")


class PhoneCheckOut(Schema):
    e164 = fields.String(allow_none=True)
    sendable = fields.Boolean()
    reason = fields.String(allow_none=True)


class AdminList(fields.List):
    """A list of administrators' iMIS user names, loaded without surrounding spaces."""

    def __init__(self, **kwargs):
        super().__init__(fields.String(), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs) -> tuple[str, ...]:
        try:
            return clean_admins(super()._deserialize(value, attr, data, **kwargs))
        except ValueError as error:
            raise ValidationError(str(error)) from None


class SettingsIn(Schema):
    name = fields.String(validate=validate.Length(min=1, max=200))
    imis_base_url = fields.Url(require_tld=False, schemes={"http", "https"})
    imis_username = fields.String(validate=validate.Length(min=1, max=200))
    imis_password = fields.String(load_only=True)
    twilio_account_sid = fields.String(validate=validate.Regexp(r"^AC[0-9a-fA-F]{32}$",
                                                                error="must be AC followed by 32 hex digits"))
    twilio_auth_token = fields.String(load_only=True)
    sender_number = TrimmedString(metadata={"description": (
        "the number texts are sent from: an E.164 mobile, toll-free or long-code number, or a short code of 5 or 6 "
        "digits")})
    messaging_service_sid = fields.String(validate=validate.Regexp(r"^(MG[0-9a-fA-F]{32})?$",
                                                                   error="must be MG followed by 32 hex digits"))
    sender_kind = fields.String(validate=validate.OneOf(["toll-free", "long-code", "short-code"]))
    sender_rate_sps = fields.Float(validate=validate.Range(min=0.1, max=1000))
    default_country = fields.String()
    default_email = fields.Email()
    timezone = fields.String()
    daily_limit = fields.Integer(strict=True, validate=validate.Range(min=0, max=MAX_DAILY_LIMIT))
    run_segment_limit = fields.Integer(strict=True, validate=validate.Range(min=1, max=MAX_RUN_SEGMENT_LIMIT))
    imis_text_log = fields.String(validate=validate.OneOf(TEXT_LOG_MODES, error="must be one of {choices}"),
                                  metadata={"description": TEXT_LOG_DESCRIPTION})
    admins = AdminList(metadata={"description": "the iMIS user names of the administrators, at least one"})

    @validates("sender_number")
    def check_sender_number(self, value: str, **kwargs) -> None:
        problem = sender_number_problem(value)
        if problem is not None:
            raise ValidationError(problem)

    @validates("default_country")
    def check_country(self, value: str, **kwargs) -> None:
        if not is_valid_country(value):
            raise ValidationError("must be an ISO 3166 alpha-2 country code such as US")

    @validates("timezone")
    def check_timezone(self, value: str, **kwargs) -> None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValidationError("must be an IANA time zone such as America/New_York") from None

    @validates_schema
    def check_not_empty(self, data: dict, **kwargs) -> None:
        if not data:
            raise ValidationError("send at least one setting to change")

    @validates_schema
    def check_sender_kind(self, data: dict, **kwargs) -> None:
        """Reject a short code given with another kind of sender, or a number given as a short code."""
        if "sender_number" not in data or "sender_kind" not in data:
            return
        short_code = is_sender_short_code(data["sender_number"])
        if short_code != (data["sender_kind"] == "short-code"):
            raise ValidationError("a short code of 5 or 6 digits goes with the sender kind short-code, and an E.164 "
                                  "number with toll-free or long-code: make the two match", "sender_kind")

    @validates_schema
    def check_secret_with_its_address(self, data: dict, **kwargs) -> None:
        """Require the secret again when the place or account it is sent to changes.

        Otherwise anyone signed in could point the iMIS address at their own server and
        receive the stored service-account password at the next query.
        """
        if ("imis_base_url" in data or "imis_username" in data) and not data.get("imis_password"):
            raise ValidationError("enter the iMIS service account password again to change the iMIS address or user",
                                  "imis_password")
        if "twilio_account_sid" in data and not data.get("twilio_auth_token"):
            raise ValidationError("enter the Twilio auth token again to change the account SID", "twilio_auth_token")


class SettingsOut(Schema):
    cloud_id = fields.String()
    name = fields.String()
    imis_base_url = fields.String()
    imis_username = fields.String()
    imis_password_set = fields.Boolean()
    twilio_account_sid = fields.String()
    twilio_auth_token_set = fields.Boolean()
    sender_number = fields.String()
    messaging_service_sid = fields.String()
    sender_kind = fields.String()
    sender_rate_sps = fields.Float()
    default_country = fields.String()
    default_email = fields.String()
    timezone = fields.String()
    daily_limit = fields.Integer()
    run_segment_limit = fields.Integer()
    imis_text_log = fields.String(metadata={"description": TEXT_LOG_DESCRIPTION})
    admins = fields.List(fields.String(), metadata={
        "description": "the iMIS user names of the staff who may change the settings; empty until an operator "
                       "names one"})
    is_admin = fields.Boolean(metadata={"description": "whether the signed-in user may change the settings"})


class PageQuery(Schema):
    """Query string of a paged list: `limit` items from `offset`."""

    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0))


class MessagesQuery(PageQuery):
    """Query string of `GET /api/runs/{run_id}/messages`."""


class RunQuery(PageQuery):
    """Query string of `GET /api/runs/{run_id}`, which pages the skipped rows."""


class OptOutsQuery(PageQuery):
    """Query string of `GET /api/opt-outs`."""


class OptOutOut(Schema):
    """One opted-out number. The number is masked here, so no view can return it whole."""

    number = fields.Function(lambda optout: mask_number(optout["number"]), metadata={
        "description": f"the number with all but its last {SHOWN_DIGITS} digits replaced by *"})
    opted_out_at = fields.DateTime()
    source = fields.String(metadata={"description": (
        "inbound-stop (the member replied STOP), twilio-callback (a status callback reported error 21610, or "
        "30004 on a toll-free sender) or twilio-<code> (Twilio refused a text with that error code)")})
    members = fields.Function(lambda optout: len(optout.get("member_ids", [])), metadata={
        "description": "how many iMIS members were texted at this number"})


class OptOutsOut(Schema):
    opt_outs = fields.List(fields.Nested(OptOutOut))
    total = fields.Integer()


class ImisLogOut(Schema):
    """Whether and how iMIS recorded a sent text."""

    status = fields.String(metadata={"description": (
        "written, pending (the iMIS writer has not written it yet), off (the setting was off), failed "
        "(iMIS rejected it) or missing (the sender could not hand it to the iMIS writer)")})
    kind = fields.String(allow_none=True, metadata={"description": "interaction or activity (TEXTMSG)"})
    key = fields.String(allow_none=True, metadata={"description": "the entry's key in iMIS (SEQN of an activity)"})
    fallback = fields.Boolean(metadata={"description": "an activity written because the site takes no interactions"})
    written_at = fields.DateTime(allow_none=True)
    error = fields.String(allow_none=True)
    reason = fields.String(allow_none=True)


class MessageOut(Schema):
    id = fields.String(attribute="_id")
    member_id = fields.String()
    to = fields.String()
    status = fields.String()
    sid = fields.String(allow_none=True, dump_default=None)
    sent_at = fields.DateTime(allow_none=True, dump_default=None)
    error_code = fields.Integer(allow_none=True, dump_default=None)
    reason = fields.String(allow_none=True, dump_default=None)
    imis_log = fields.Nested(ImisLogOut, allow_none=True, dump_default=None,
                             metadata={"description": "null for a text not sent"})


class MessagesOut(Schema):
    messages = fields.List(fields.Nested(MessageOut))
    total = fields.Integer()


class PreviewSampleOut(Schema):
    member_id = fields.String()
    to = fields.String()
    body = fields.String()
    segments = fields.Integer()
    encoding = fields.String()


class PreviewWarningOut(Schema):
    code = fields.String()
    message = fields.String()


class PreviewOut(Schema):
    rows = fields.Integer()
    recipients = fields.Integer()
    skipped = fields.Integer()
    skipped_by_reason = fields.Dict(keys=fields.String(), values=fields.Integer())
    segments = fields.Integer()
    encoding = fields.String(allow_none=True)
    encodings = fields.Dict(keys=fields.String(), values=fields.Integer())
    samples = fields.List(fields.Nested(PreviewSampleOut))
    daily_limit = fields.Integer()
    daily_used = fields.Integer()
    daily_remaining = fields.Integer()
    run_segment_limit = fields.Integer()
    warnings = fields.List(fields.Nested(PreviewWarningOut))
