"""iMIS REST API simulator: sign-in, IQA queries, the IQA picker, Activity rows and the
communication log.

It reproduces the request and response shapes that Text Manager relies on, plus
switches that inject the faults a real site shows (revoked tokens, 429 and 5xx responses,
unstable offset paging, an older site without `/api/query` or without the communication
log). It binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import secrets
import signal
import threading
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.serving import WSGIRequestHandler, make_server

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
TOKEN_LIFETIME_S = 1209599
# Page size for a request without `limit`; a guess, because iMIS does not document its own.
DEFAULT_PAGE_SIZE = 100
DEFAULT_ACTIVITY_TYPES = frozenset({"TEXTUNSUB", "TEXTMSG"})
REQUEST_LOG_SIZE = 10_000

# Type names that iMIS writes into "$type" (Json.NET type name handling).
CONTRACTS = "Asi.Soa.Core.DataContracts"
PAGED_RESULT_TYPE = f"{CONTRACTS}.PagedResult, Asi.Contracts"
OBJECT_LIST_TYPE = "System.Collections.Generic.List`1[[System.Object, mscorlib]], mscorlib"
GENERIC_ENTITY_TYPE = f"{CONTRACTS}.GenericEntityData, Asi.Contracts"
PROPERTY_COLLECTION_TYPE = f"{CONTRACTS}.GenericPropertyDataCollection, Asi.Contracts"
PROPERTY_TYPE = f"{CONTRACTS}.GenericPropertyData, Asi.Contracts"
IDENTITY_TYPE = f"{CONTRACTS}.IdentityData, Asi.Contracts"
STRING_COLLECTION_TYPE = (
    "System.Collections.ObjectModel.Collection`1[[System.String, mscorlib]], mscorlib"
)
VALIDATION_RESULTS_TYPE = f"{CONTRACTS}.ValidationResultsData, Asi.Contracts"
VALIDATION_LIST_TYPE = f"{CONTRACTS}.ValidationResultDataCollection, Asi.Contracts"
VALIDATION_RESULT_TYPE = f"{CONTRACTS}.ValidationResultData, Asi.Contracts"
SERVICE_RESPONSE_TYPE = f"{CONTRACTS}.ServiceResponse, Asi.Contracts"
DOCUMENT_SUMMARY_TYPE = f"{CONTRACTS}.DocumentSummaryData, Asi.Contracts"
DOCUMENT_LIST_TYPE = (
    f"System.Collections.Generic.List`1[[{DOCUMENT_SUMMARY_TYPE}]], mscorlib"
)

FOLDER_TYPE_CODE = "FOL"
QUERY_TYPE_CODE = "IQD"
_DOCUMENT_NAMESPACE = uuid.UUID("6f1c2a52-3c4e-4b8e-9a51-0d7f3b0c9e11")


# ---------------------------------------------------------------- JSON shapes


def _wrap(value: object) -> object:
    """Return a property value as Json.NET writes an object-typed one."""
    if isinstance(value, bool):
        return {"$type": "System.Boolean", "$value": value}
    if isinstance(value, int):
        type_name = "System.Int32" if -(2**31) <= value < 2**31 else "System.Int64"
        return {"$type": type_name, "$value": value}
    if isinstance(value, float):
        return {"$type": "System.Decimal", "$value": value}
    if isinstance(value, (datetime, date)):
        return {"$type": "System.DateTime", "$value": value.isoformat()}
    return value


def _plain(value: object) -> object:
    """Return a column value as `/api/query` writes it in a flat row."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value


def _property(name: str, value: object) -> dict:
    prop = {"$type": PROPERTY_TYPE, "Name": name}
    if value is not None:
        prop["Value"] = _wrap(value)
    return prop


def _identity(entity_type: str, key: str) -> dict:
    return {
        "$type": IDENTITY_TYPE,
        "EntityTypeName": entity_type,
        "IdentityElements": {"$type": STRING_COLLECTION_TYPE, "$values": [key]},
    }


def _generic_entity(entity_type: str, properties: list[tuple[str, object]], **extra) -> dict:
    entity = {"$type": GENERIC_ENTITY_TYPE, "EntityTypeName": entity_type, **extra}
    entity["Properties"] = {
        "$type": PROPERTY_COLLECTION_TYPE,
        "$values": [_property(name, value) for name, value in properties],
    }
    return entity


def _paged(items: list, offset: int, limit: int, total: int) -> dict:
    has_next = offset + limit < total
    return {
        "$type": PAGED_RESULT_TYPE,
        "Items": {"$type": OBJECT_LIST_TYPE, "$values": items},
        "Offset": offset,
        "Limit": limit,
        "Count": len(items),
        "TotalCount": total,
        "HasNext": has_next,
        "NextOffset": offset + limit if has_next else 0,
    }


def _validation_error(status: int, *messages: str) -> tuple[Response, int]:
    results = [
        {"$type": VALIDATION_RESULT_TYPE, "Message": message, "ResultType": "Error"}
        for message in messages
    ]
    body = {
        "$type": VALIDATION_RESULTS_TYPE,
        "Errors": {"$type": VALIDATION_LIST_TYPE, "$values": results},
    }
    return jsonify(body), status


def _message_error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"Message": message}), status


def _unwrap(value: object) -> object:
    if isinstance(value, dict):
        if "$value" in value:
            return value["$value"]
        if "$values" in value:
            return [_unwrap(item) for item in value["$values"]]
    return value


# ---------------------------------------------------------------- state


@dataclass
class _Query:
    """One IQA query: fixed rows or a row factory, its prompts and REST availability."""

    path: str
    columns: list[str]
    rows: list[dict] | None
    row_factory: Callable[[int], dict] | None
    total: int
    prompts: tuple[str, ...]
    rest_available: bool = True

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def row(self, index: int) -> dict:
        raw = self.rows[index] if self.rows is not None else self.row_factory(index)
        return {column: raw.get(column) for column in self.columns}

    def select(self, prompt_values: dict[str, str]) -> _RowView:
        """Return the rows that match every prompt named like a column."""
        filters = {k: v for k, v in prompt_values.items() if k in self.columns}
        if not filters:
            return _RowView(self.row, self.total)
        matches = [
            row
            for row in (self.row(i) for i in range(self.total))
            if all(str(row.get(k)) == v for k, v in filters.items())
        ]
        return _RowView(matches.__getitem__, len(matches))


@dataclass(frozen=True)
class _RowView:
    row: Callable[[int], dict]
    total: int


@dataclass
class _Activity:
    seqn: int
    party_id: str
    activity_type: str
    transaction_date: str
    category: str | None
    uf_1: str | None
    created_at: datetime
    note: str | None = None

    def to_dict(self) -> dict:
        return {
            "seqn": str(self.seqn),
            "party_id": self.party_id,
            "activity_type": self.activity_type,
            "transaction_date": self.transaction_date,
            "category": self.category,
            "uf_1": self.uf_1,
            "note": self.note,
            "created_at": self.created_at.isoformat(),
        }

    def to_entity(self) -> dict:
        properties = [
            ("SEQN", self.seqn),
            ("PartyId", self.party_id),
            ("ACTIVITY_TYPE", self.activity_type),
            ("TRANSACTION_DATE", datetime.fromisoformat(self.transaction_date)),
            ("CATEGORY", self.category),
            ("UF_1", self.uf_1),
            ("NOTE", self.note),
        ]
        return _generic_entity(
            "Activity",
            properties,
            PrimaryParentEntityTypeName="Party",
            PrimaryParentIdentity=_identity("Party", self.party_id),
            Identity=_identity("Activity", str(self.seqn)),
        )


@dataclass
class _CommunicationLogEntry:
    """One interaction. iMIS dates it at the time of the write and ignores any date in the request."""

    key: int
    recipient_id: str
    subject: str
    html: str | None
    message_type: int | None
    created_at: datetime

    def to_dict(self) -> dict:
        return {
            "key": str(self.key),
            "recipient_id": self.recipient_id,
            "subject": self.subject,
            "html": self.html,
            "message_type": self.message_type,
            "created_at": self.created_at.isoformat(),
        }

    def to_entity(self) -> dict:
        properties = [
            ("RecipientId", self.recipient_id),
            ("Subject", self.subject),
            ("Html", self.html),
            ("MessageType", self.message_type),
        ]
        return _generic_entity(
            "CommunicationLog", properties, Identity=_identity("CommunicationLog", str(self.key))
        )


@dataclass
class _Failure:
    path_prefix: str
    status: int
    remaining: int
    # Matching requests still to let through before the first failure.
    passes: int = 0


@dataclass
class _State:
    users: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    queries: dict[str, _Query] = field(default_factory=dict)
    activities: dict[int, _Activity] = field(default_factory=dict)
    communication_log: dict[int, _CommunicationLogEntry] = field(default_factory=dict)
    failures: list[_Failure] = field(default_factory=list)
    requests: deque = field(default_factory=lambda: deque(maxlen=REQUEST_LOG_SIZE))


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class _QuietRequestHandler(WSGIRequestHandler):
    """Request handler that does not log every request (a benchmark makes thousands)."""

    def log_request(self, code="-", size="-") -> None:
        pass


# ---------------------------------------------------------------- simulator


class ImisSimulator:
    """An iMIS site served over HTTP on 127.0.0.1, with switches for fault injection.

    `prefix` is a virtual directory such as "/imis"; every route then sits under it.
    These attributes may be changed while it runs:

    - `max_limit`: the largest page size served, whatever `limit` requests.
    - `query_endpoint_missing`: `/api/query` returns 404, as on iMIS 2017.
    - `repeat_rows_across_pages`: every page after the first also repeats that many
      rows from the end of the previous page.
    - `single_token_per_user`: a new token revokes the user's older tokens.
    - `activity_types`: the activity types that exist; POST /api/Activity rejects others.
    - `communication_log_missing`: `/api/CommunicationLog` returns 404, as on a site
      that does not take interactions over REST.
    """

    def __init__(
        self,
        users: dict[str, str] | None = None,
        max_limit: int = 500,
        *,
        prefix: str = "",
        clock: Callable[[], datetime] = _utc_now,
    ):
        self.max_limit = max_limit
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.query_endpoint_missing = False
        self.repeat_rows_across_pages = 0
        self.single_token_per_user = False
        self.activity_types = set(DEFAULT_ACTIVITY_TYPES)
        self.communication_log_missing = False
        self.url = ""
        self._clock = clock
        self._lock = threading.Lock()
        self._state = _State(users=dict(users or {}))
        self._seqns = itertools.count(1)
        self._communication_log_keys = itertools.count(1)
        self._server = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self, port: int = 0) -> str:
        """Start serving in a daemon thread and return the base URL (with the prefix)."""
        self._server = make_server(
            HOST, port, create_app(self), threaded=True, request_handler=_QuietRequestHandler
        )
        self.url = f"http://{HOST}:{self._server.server_port}{self.prefix}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="imis-simulator",
            daemon=True,
        )
        self._thread.start()
        logger.info("iMIS simulator started at %s", self.url)
        return self.url

    def stop(self) -> None:
        """Stop serving and close the listening socket; safe to call twice."""
        if self._server is None:
            return
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()
        self._server = None
        logger.info("iMIS simulator at %s stopped", self.url)

    def __enter__(self) -> ImisSimulator:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- users, queries and activities

    def add_user(self, username: str, password: str) -> None:
        with self._lock:
            self._state.users[username] = password

    def add_query(
        self,
        path: str,
        columns: list[str],
        rows: list[dict] | None = None,
        *,
        row_factory: Callable[[int], dict] | None = None,
        total: int | None = None,
        prompts: Sequence[str] = (),
    ) -> None:
        """Add or replace a query; give either `rows` or `row_factory` with `total`."""
        if (rows is None) == (row_factory is None):
            raise ValueError("give either rows or row_factory")
        if row_factory is not None and total is None:
            raise ValueError("row_factory needs total")
        query = _Query(
            path=path,
            columns=list(columns),
            rows=list(rows) if rows is not None else None,
            row_factory=row_factory,
            total=len(rows) if rows is not None else total,
            prompts=tuple(prompts),
        )
        with self._lock:
            self._state.queries[path] = query

    def set_rest_available(self, path: str, available: bool) -> None:
        """Mark a query as (not) available over REST; raise KeyError for an unknown path."""
        with self._lock:
            self._state.queries[path].rest_available = available

    def activities(self) -> list[dict]:
        """Return the stored activities in SEQN order."""
        with self._lock:
            stored = sorted(self._state.activities.values(), key=lambda a: a.seqn)
        return [activity.to_dict() for activity in stored]

    def reset_activities(self) -> None:
        with self._lock:
            self._state.activities.clear()

    def communication_log(self) -> list[dict]:
        """Return the stored communication log entries (interactions) in the order written."""
        with self._lock:
            stored = sorted(self._state.communication_log.values(), key=lambda entry: entry.key)
        return [entry.to_dict() for entry in stored]

    def reset_communication_log(self) -> None:
        with self._lock:
            self._state.communication_log.clear()

    def request_log(self) -> list[dict]:
        """Return the latest requests, oldest first: method, path, query args and status.

        Paths are below the virtual directory. Form bodies, and so passwords, are not kept.
        """
        with self._lock:
            return list(self._state.requests)

    # -- fault switches

    def revoke_tokens(self) -> None:
        """Revoke every issued token, as a site restart or cache purge does."""
        with self._lock:
            self._state.tokens.clear()

    def fail_next(self, path_prefix: str, status: int, count: int = 1, *, after: int = 0) -> None:
        """Respond to `count` requests under `path_prefix` with `status`, once `after` more have passed.

        The prefix is matched against the path below the virtual directory, such as
        "/api/query" or "/token". With `after`, the failures start in the middle of
        a series of calls, such as on the third page of a query.
        """
        with self._lock:
            self._state.failures.append(_Failure(path_prefix, status, count, passes=after))

    # -- used by the routes

    def _take_failure(self, path: str) -> int | None:
        with self._lock:
            for failure in self._state.failures:
                if not path.startswith(failure.path_prefix) or failure.remaining <= 0:
                    continue
                if failure.passes > 0:
                    failure.passes -= 1
                    continue
                failure.remaining -= 1
                return failure.status
            return None

    def _record_request(self, entry: dict) -> None:
        with self._lock:
            self._state.requests.append(entry)

    def _issue_token(self, username: str, password: str) -> str | None:
        with self._lock:
            if self._state.users.get(username) != password:
                return None
            if self.single_token_per_user:
                tokens = self._state.tokens
                for stale in [t for t, user in tokens.items() if user == username]:
                    del tokens[stale]
            token = secrets.token_urlsafe(32)
            self._state.tokens[token] = username
            return token

    def _user_of(self, token: str) -> str | None:
        with self._lock:
            return self._state.tokens.get(token)

    def _query(self, path: str) -> _Query | None:
        with self._lock:
            return self._state.queries.get(path)

    def _all_query_paths(self) -> list[str]:
        with self._lock:
            return sorted(self._state.queries)

    def _store_activity(self, fields: dict) -> _Activity:
        with self._lock:
            activity = _Activity(seqn=next(self._seqns), created_at=self._clock(), **fields)
            self._state.activities[activity.seqn] = activity
            return activity

    def _find_activities(self, party_id: str | None, activity_type: str | None) -> list[_Activity]:
        with self._lock:
            stored = sorted(self._state.activities.values(), key=lambda a: a.seqn)
        return [
            a
            for a in stored
            if (party_id is None or a.party_id == party_id)
            and (activity_type is None or a.activity_type == activity_type)
        ]

    def _delete_activity(self, seqn: int) -> bool:
        with self._lock:
            return self._state.activities.pop(seqn, None) is not None

    def _store_communication_log(self, fields: dict) -> _CommunicationLogEntry:
        with self._lock:
            entry = _CommunicationLogEntry(key=next(self._communication_log_keys), created_at=self._clock(), **fields)
            self._state.communication_log[entry.key] = entry
            return entry

    def _find_communication_log(self, recipient_id: str | None) -> list[_CommunicationLogEntry]:
        with self._lock:
            stored = sorted(self._state.communication_log.values(), key=lambda entry: entry.key)
        return [entry for entry in stored if recipient_id is None or entry.recipient_id == recipient_id]


# ---------------------------------------------------------------- HTTP routes


def create_app(sim: ImisSimulator) -> Flask:
    """Build the Flask app that serves the simulator's state."""
    app = Flask(__name__)
    app.json.sort_keys = False
    app.config["SIM"] = sim

    site = Blueprint("imis", __name__, url_prefix=sim.prefix or None)
    site.before_request(_inject_failure)
    site.after_request(_record_request)
    site.add_url_rule("/token", view_func=_token, methods=["POST"])
    site.add_url_rule("/api/query", view_func=_run_query, methods=["GET"])
    site.add_url_rule("/api/iqa", view_func=_run_iqa, methods=["GET"])
    site.add_url_rule("/api/DocumentSummary/_execute", view_func=_document_execute, methods=["POST"])
    site.add_url_rule("/api/Activity", view_func=_create_activity, methods=["POST"])
    site.add_url_rule("/api/Activity", view_func=_list_activities, methods=["GET"])
    site.add_url_rule("/api/Activity/<seqn>", view_func=_delete_activity, methods=["DELETE"])
    site.add_url_rule("/api/CommunicationLog", view_func=_create_communication_log, methods=["POST"])
    site.add_url_rule("/api/CommunicationLog", view_func=_list_communication_log, methods=["GET"])
    site.add_url_rule("/_sim/activities", view_func=_sim_activities, methods=["GET"])
    site.add_url_rule("/_sim/communication-log", view_func=_sim_communication_log, methods=["GET"])
    app.register_blueprint(site)
    return app


def _sim() -> ImisSimulator:
    return current_app.config["SIM"]


def _relative_path() -> str:
    return request.path[len(_sim().prefix):]


def _record_request(response: Response) -> Response:
    entry = {
        "method": request.method,
        "path": _relative_path(),
        "args": request.args.to_dict(flat=False),
        "status": response.status_code,
    }
    _sim()._record_request(entry)
    return response


def _inject_failure():
    status = _sim()._take_failure(_relative_path())
    if status is None:
        return None
    if status == 429:
        response, _ = _message_error(429, "Too many requests. Wait and send the request again.")
        response.headers["Retry-After"] = "1"
        return response, 429
    if status == 503:
        # IIS returns its 503 page as HTML, not JSON, while the application pool is stopped.
        html = "<html><body><h1>Service Unavailable</h1></body></html>"
        return Response(html, status=503, mimetype="text/html")
    return _message_error(status, "The server failed to process the request.")


def _require_token():
    """Return None when the request carries a valid token, else the 401 response."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    user = _sim()._user_of(token) if scheme.lower() == "bearer" else None
    if user is None:
        return _message_error(401, "The access token is missing, expired or revoked.")
    return None


def _token():
    form = request.form
    if form.get("grant_type") != "password":
        body = {"error": "unsupported_grant_type"}
        return jsonify(body), 400

    username = form.get("username", "")
    token = _sim()._issue_token(username, form.get("password", ""))
    if token is None:
        body = {
            "error": "invalid_grant",
            "error_description": "The user name or password is incorrect.",
        }
        return jsonify(body), 400

    return jsonify(
        access_token=token,
        token_type="bearer",
        expires_in=TOKEN_LIFETIME_S,
        userName=username,
    )


# -- queries


def _page_window(total: int) -> tuple[int, int, range]:
    """Read offset and limit; return them with the row indexes the page carries.

    With `repeat_rows_across_pages` set, a page after the first also starts with the
    last rows of the previous page, as offset paging over an unstable sort does.
    """
    sim = _sim()
    offset = max(request.args.get("offset", 0, type=int), 0)
    requested = request.args.get("limit", 0, type=int)
    limit = min(requested if requested > 0 else DEFAULT_PAGE_SIZE, sim.max_limit)

    if offset >= total:
        return offset, limit, range(0)
    start = max(offset - sim.repeat_rows_across_pages, 0) if offset > 0 else 0
    return offset, limit, range(start, min(offset + limit, total))


def _load_query(prompt_values: Callable[[_Query], dict[str, str] | None]):
    """Return (query, prompt values) or an error response for the requested QueryName."""
    path = request.args.get("QueryName", "")
    query = _sim()._query(path)
    if query is None:
        return None, _validation_error(404, f"Query '{path}' was not found.")
    if not query.rest_available:
        message = f"Query '{path}' is not available via the REST API."
        return None, _validation_error(403, message)

    values = prompt_values(query)
    missing = [name for name in query.prompts if name not in values]
    if missing:
        messages = [f"A value for the required prompt '{name}' is missing." for name in missing]
        return None, _validation_error(400, *messages)
    return (query, values), None


def _named_prompts(query: _Query) -> dict[str, str]:
    return {name: request.args[name] for name in query.prompts if name in request.args}


def _positional_prompts(query: _Query) -> dict[str, str]:
    values = request.args.getlist("Parameter")
    return dict(zip(query.prompts, values))


def _run_query():
    denied = _require_token()
    if denied:
        return denied
    if _sim().query_endpoint_missing:
        return _message_error(404, "No resource matches the request URI.")

    loaded, error = _load_query(_named_prompts)
    if error:
        return error
    query, values = loaded

    view = query.select(values)
    offset, limit, indexes = _page_window(view.total)
    items = [{k: _plain(v) for k, v in view.row(i).items()} for i in indexes]
    return jsonify(_paged(items, offset, limit, view.total))


def _run_iqa():
    denied = _require_token()
    if denied:
        return denied

    loaded, error = _load_query(_positional_prompts)
    if error:
        return error
    query, values = loaded

    view = query.select(values)
    offset, limit, indexes = _page_window(view.total)
    items = [_iqa_row(query, i, view.row(i)) for i in indexes]
    return jsonify(_paged(items, offset, limit, view.total))


def _iqa_row(query: _Query, index: int, row: dict) -> dict:
    properties = [("ResultRow", index + 1), *row.items()]
    return _generic_entity(query.name, properties)


# -- IQA picker


def _document_id(path: str) -> str:
    return str(uuid.uuid5(_DOCUMENT_NAMESPACE, path))


def _document_summary(path: str, is_folder: bool) -> dict:
    return {
        "$type": DOCUMENT_SUMMARY_TYPE,
        "DocumentId": _document_id(path),
        "DocumentTypeId": FOLDER_TYPE_CODE if is_folder else QUERY_TYPE_CODE,
        "Name": path.rsplit("/", 1)[-1],
        "Path": path,
        "Status": "Published",
        "IsFolder": is_folder,
        "Description": "",
    }


def _document_tree() -> dict[str, bool]:
    """Return every document path (queries and their folders) mapped to IsFolder."""
    documents: dict[str, bool] = {}
    for path in _sim()._all_query_paths():
        documents[path] = False
        parts = path.split("/")
        for depth in range(1, len(parts)):
            documents["/".join(parts[:depth])] = True
    return documents


def _find_by_path(parameters: list) -> object:
    path = str(parameters[0]).rstrip("/") if parameters else ""
    documents = _document_tree()
    if path not in documents:
        return None
    return _document_summary(path, documents[path])


def _find_documents_in_folder(parameters: list) -> object:
    folder_id = parameters[0] if parameters else ""
    type_codes = set(parameters[1]) if len(parameters) > 1 else {FOLDER_TYPE_CODE, QUERY_TYPE_CODE}
    documents = _document_tree()
    folders = {_document_id(path): path for path, is_folder in documents.items() if is_folder}
    folder = folders.get(folder_id)
    if folder is None:
        return {"$type": DOCUMENT_LIST_TYPE, "$values": []}

    children = []
    for path, is_folder in sorted(documents.items()):
        parent = path.rsplit("/", 1)[0] if "/" in path else None
        summary = _document_summary(path, is_folder)
        if parent == folder and summary["DocumentTypeId"] in type_codes:
            children.append(summary)
    return {"$type": DOCUMENT_LIST_TYPE, "$values": children}


_DOCUMENT_OPERATIONS = {
    "FindByPath": _find_by_path,
    "FindDocumentsInFolder": _find_documents_in_folder,
}


def _document_execute():
    denied = _require_token()
    if denied:
        return denied

    body = request.get_json(silent=True) or {}
    operation = _DOCUMENT_OPERATIONS.get(body.get("OperationName"))
    if operation is None:
        name = body.get("OperationName")
        return _validation_error(501, f"Operation '{name}' is not implemented for DocumentSummary.")

    parameters = [_unwrap(p) for p in (body.get("Parameters") or {}).get("$values", [])]
    result = operation(parameters)
    return jsonify({"$type": SERVICE_RESPONSE_TYPE, "Result": result, "IsSuccessStatusCode": True})


# -- activities


def _entity_properties(body: dict) -> dict[str, object]:
    values = (body.get("Properties") or {}).get("$values") or []
    return {p.get("Name"): _unwrap(p.get("Value")) for p in values if isinstance(p, dict)}


def _naive_timestamp(value: object) -> str | None:
    """Return the value as a naive YYYY-MM-DDTHH:MM:SS string, or None when invalid."""
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        return None
    return parsed.isoformat(timespec="seconds")


def _activity_errors(props: dict[str, object], transaction_date: str | None) -> list[str]:
    errors = []
    if not props.get("PartyId"):
        errors.append("PartyId is required.")
    activity_type = props.get("ACTIVITY_TYPE")
    if not activity_type:
        errors.append("ACTIVITY_TYPE is required.")
    elif activity_type not in _sim().activity_types:
        errors.append(f"Activity type '{activity_type}' does not exist.")
    if transaction_date is None:
        errors.append("TRANSACTION_DATE must be a date and time without a time zone.")
    return errors


def _create_activity():
    denied = _require_token()
    if denied:
        return denied

    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return _validation_error(400, "The request body must be a GenericEntityData object.")
    props = _entity_properties(body)
    transaction_date = _naive_timestamp(props.get("TRANSACTION_DATE"))
    errors = _activity_errors(props, transaction_date)
    if errors:
        return _validation_error(400, *errors)

    activity = _sim()._store_activity(
        {
            "party_id": str(props["PartyId"]),
            "activity_type": str(props["ACTIVITY_TYPE"]),
            "transaction_date": transaction_date,
            "category": props.get("CATEGORY"),
            "uf_1": props.get("UF_1"),
            "note": props.get("NOTE"),
        }
    )
    return jsonify(activity.to_entity()), 201


def _list_activities():
    denied = _require_token()
    if denied:
        return denied

    found = _sim()._find_activities(request.args.get("PartyId"), request.args.get("ACTIVITY_TYPE"))
    offset, limit, indexes = _page_window(len(found))
    items = [found[i].to_entity() for i in indexes]
    return jsonify(_paged(items, offset, limit, len(found)))


def _delete_activity(seqn: str):
    denied = _require_token()
    if denied:
        return denied

    if not seqn.isdigit() or not _sim()._delete_activity(int(seqn)):
        return _validation_error(404, f"Activity with SEQN '{seqn}' was not found.")
    return Response(status=200)


def _sim_activities():
    return jsonify(_sim().activities())


# -- communication log


def _communication_log_errors(props: dict[str, object]) -> list[str]:
    errors = []
    if not props.get("RecipientId"):
        errors.append("RecipientId is required.")
    if not props.get("Subject"):
        errors.append("Subject is required.")
    message_type = props.get("MessageType")
    if message_type is not None and (not isinstance(message_type, int) or isinstance(message_type, bool)):
        errors.append("MessageType must be a whole number.")
    return errors


def _create_communication_log():
    denied = _require_token()
    if denied:
        return denied
    if _sim().communication_log_missing:
        return _message_error(404, "No resource matches the request URI.")

    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return _validation_error(400, "The request body must be a GenericEntityData object.")
    props = _entity_properties(body)
    errors = _communication_log_errors(props)
    if errors:
        return _validation_error(400, *errors)

    entry = _sim()._store_communication_log(
        {
            "recipient_id": str(props["RecipientId"]),
            "subject": str(props["Subject"]),
            "html": props.get("Html"),
            "message_type": props.get("MessageType"),
        }
    )
    return jsonify(entry.to_entity()), 201


def _list_communication_log():
    denied = _require_token()
    if denied:
        return denied
    if _sim().communication_log_missing:
        return _message_error(404, "No resource matches the request URI.")

    found = _sim()._find_communication_log(request.args.get("RecipientId"))
    offset, limit, indexes = _page_window(len(found))
    items = [found[i].to_entity() for i in indexes]
    return jsonify(_paged(items, offset, limit, len(found)))


def _sim_communication_log():
    return jsonify(_sim().communication_log())


# ---------------------------------------------------------------- command line


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve a simulated iMIS site on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument("--prefix", default="", help="virtual directory, such as /imis")
    parser.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:PASSWORD",
        help="an extra iMIS user; may be repeated",
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=0,
        help="number of rows in the synthetic benchmark query (0 leaves it out)",
    )
    parser.add_argument("--max-limit", type=int, default=500, help="largest page size served")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the demo organisation (and the benchmark query) until SIGTERM or SIGINT."""
    from local import demo_data

    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    sim = ImisSimulator(max_limit=args.max_limit, prefix=args.prefix)
    demo_data.seed_imis(sim)
    if args.rows > 0:
        demo_data.seed_bench(sim, args.rows)
    for user in args.user:
        username, _, password = user.partition(":")
        sim.add_user(username, password)

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())

    url = sim.start(args.port)
    print(f"iMIS simulator listening on {url}", flush=True)
    stopping.wait()
    sim.stop()


if __name__ == "__main__":
    main()
