"""The OpenAPI 3 description of the gateway's JSON API, built from its schemas."""

from __future__ import annotations

import functools

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from services.gateway import dashboard_schemas, schedules, schemas

SCHEMA_MODULES = (schemas, dashboard_schemas, schedules)

# (method, path, summary, request schema, response status, response schema)
OPERATIONS = [
    ("post", "/api/session", "Sign in with iMIS credentials and a Cloud ID", "SessionIn", 201, "SessionOut"),
    ("get", "/api/session", "Who is signed in, and the CSRF token", None, 200, "SessionOut"),
    ("delete", "/api/session", "Sign out", None, 200, None),
    ("get", "/api/campaigns", "List campaigns", None, 200, None),
    ("post", "/api/campaigns", "Create a draft campaign", "CampaignIn", 201, "CampaignSavedOut"),
    ("get", "/api/campaigns/{campaign_id}", "A campaign with its counts", None, 200, "CampaignOut"),
    ("put", "/api/campaigns/{campaign_id}", "Change a draft, or a campaign that has not started sending",
     "CampaignEditIn", 200, "CampaignSavedOut"),
    ("post", "/api/campaigns/{campaign_id}/send", "Send now or at send_at", "SendIn", 202, "CampaignOut"),
    ("post", "/api/campaigns/{campaign_id}/pause", "Pause between texts", None, 200, "CampaignOut"),
    ("post", "/api/campaigns/{campaign_id}/resume", "Resume where sending stopped", None, 200, "CampaignOut"),
    ("post", "/api/campaigns/{campaign_id}/cancel", "Cancel the current run", None, 200, "CampaignOut"),
    ("get", "/api/runs/{run_id}", "A run's counts and skipped rows", None, 200, "RunReportOut"),
    ("get", "/api/runs/{run_id}/messages", "A run's texts, with whether and how each was logged in iMIS", None,
     200, "MessagesOut"),
    ("get", "/api/opt-outs", "Opted-out numbers, latest first, masked to their last 4 digits", None, 200,
     "OptOutsOut"),
    ("get", "/api/settings", "The organisation's settings", None, 200, "SettingsOut"),
    ("put", "/api/settings", "Change settings or the administrator list (administrators only)", "SettingsIn", 200,
     "SettingsOut"),
    ("post", "/api/texts/measure", "Encoding and segments of a text", "MeasureIn", 200, "MeasureOut"),
    ("post", "/api/phone-numbers/check", "Normalise and check a number", "PhoneCheckIn", 200, "PhoneCheckOut"),
    ("get", "/api/openapi.json", "This OpenAPI description", None, 200, None),
    ("get", "/api/dashboard", "Texts sent, the daily allowance and campaigns by stage", None, 200, "DashboardOut"),
    ("get", "/api/notices", "E-mail notices sent to the administrator", None, 200, "NoticesOut"),
    ("get", "/api/archive", "Archived campaigns", None, 200, "ArchiveOut"),
    ("post", "/api/campaigns/{campaign_id}/archive", "Archive a finished campaign", None, 200, "ArchivedCampaignOut"),
    ("post", "/api/campaigns/{campaign_id}/unarchive", "Bring back an archived campaign", None, 200,
     "ArchivedCampaignOut"),
    ("put", "/api/campaigns/{campaign_id}/schedule", "Make a campaign recur", "ScheduleIn", 200, "ScheduleOut"),
    ("get", "/api/campaigns/{campaign_id}/schedule", "A campaign's recurring schedule", None, 200, "ScheduleOut"),
    ("delete", "/api/campaigns/{campaign_id}/schedule", "Stop a recurring schedule", None, 200, "ScheduleOut"),
    ("get", "/api/campaigns/{campaign_id}/preview", "Who would get a text, segments, first texts, warnings", None,
     200, "PreviewOut"),
]

# Operations that need no session: signing in, and reading this description.
PUBLIC_OPERATIONS = {("post", "/api/session"), ("get", "/api/openapi.json")}

# Error responses of one operation, besides the 401 and 422 that every operation lists.
OPERATION_ERRORS = {
    ("post", "/api/session"): {"429": "too many failed sign-ins: wait the seconds in the Retry-After header"},
    ("put", "/api/settings"): {"403": "not an administrator: the message names the organisation's administrators"},
    ("put", "/api/campaigns/{campaign_id}"): {"409": "the campaign cannot change now: the message says why"},
}
# Query strings of the paged operations, described by their schemas.
QUERY_SCHEMAS = {
    ("get", "/api/runs/{run_id}"): "RunQuery",
    ("get", "/api/runs/{run_id}/messages"): "MessagesQuery",
    ("get", "/api/opt-outs"): "OptOutsQuery",
    ("get", "/api/notices"): "NoticesQuery",
}
RETRY_AFTER_HEADER = {"Retry-After": {"description": "seconds until sign-in is possible again",
                                      "schema": {"type": "integer"}}}

SCHEMA_NAMES = sorted({name for op in OPERATIONS for name in (op[3], op[5]) if name})


@functools.lru_cache(maxsize=1)
def build_spec() -> dict:
    """Return the OpenAPI document as a dict."""
    spec = APISpec(title="Text Manager API", version="1.0.0", openapi_version="3.0.3", plugins=[MarshmallowPlugin()])
    spec.components.schema("Error", {"type": "object", "required": ["error", "message", "details"], "properties": {
        "error": {"type": "string"}, "message": {"type": "string"}, "details": {"type": "object"}}})
    spec.components.security_scheme("session", {"type": "apiKey", "in": "cookie", "name": "tm_session"})
    for name in SCHEMA_NAMES:
        if name not in spec.components.schemas:  # a nested schema may already be registered by its parent
            spec.components.schema(name, schema=_schema_class(name))
    paths: dict[str, dict] = {}
    for method, path, summary, request_schema, status, response_schema in OPERATIONS:
        operation = _operation(path, summary, request_schema, status, response_schema)
        if (method, path) in QUERY_SCHEMAS:
            query = {"in": "query", "schema": _schema_class(QUERY_SCHEMAS[(method, path)])}
            operation["parameters"] = [*operation.get("parameters", []), query]
        if (method, path) not in PUBLIC_OPERATIONS:
            operation["security"] = [{"session": []}]
        for status_code, description in OPERATION_ERRORS.get((method, path), {}).items():
            operation["responses"][status_code] = _error_response(description)
            if status_code == "429":
                operation["responses"][status_code]["headers"] = RETRY_AFTER_HEADER
        paths.setdefault(path, {})[method] = operation
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()


def _schema_class(name: str) -> type:
    for module in SCHEMA_MODULES:
        if hasattr(module, name):
            return getattr(module, name)
    raise LookupError(f"no schema named {name} in the gateway's schema modules")


def _operation(path: str, summary: str, request_schema: str | None, status: int, response_schema: str | None) -> dict:
    operation = {"summary": summary, "responses": {
        str(status): {"description": "success"},
        "401": _error_response("not signed in"),
        "422": _error_response("invalid input"),
    }}
    if response_schema:
        operation["responses"][str(status)]["content"] = {"application/json": {"schema": response_schema}}
    if request_schema:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": request_schema}}}
    parameters = [part.strip("{}") for part in path.split("/") if part.startswith("{")]
    if parameters:
        operation["parameters"] = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                                   for name in parameters]
    return operation


def _error_response(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
