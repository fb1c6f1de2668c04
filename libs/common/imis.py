"""Client for the iMIS REST API: sign-in, IQA queries, the IQA picker, Activity rows and
communication log entries.

`ImisClient` speaks HTTP to one site: it gets tokens and retries 429 and 5xx responses
with bounded exponential backoff. `ImisSession` caches one token for one iMIS user and
makes the API calls. A call that gets 401 requests a new token and runs once more.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote, urlencode, urlsplit

import requests
from urllib3.exceptions import NewConnectionError

logger = logging.getLogger(__name__)

# Activity properties as this client names them, mapped to the iMIS property names.
# NOTE: taken from the vendor's REST documentation, not yet confirmed on a live site.
ACTIVITY_PROPERTIES = {
    "seqn": "SEQN",
    "party_id": "PartyId",
    "activity_type": "ACTIVITY_TYPE",
    "transaction_date": "TRANSACTION_DATE",
    "category": "CATEGORY",
    "uf_1": "UF_1",
    "note": "NOTE",
}
# Query-string filters of GET /api/Activity, by the same names.
ACTIVITY_FILTERS = {"party_id": "PartyId", "activity_type": "ACTIVITY_TYPE"}

# The communication log ("Interactions" in the staff site) over REST, on newer sites only.
# VERIFY: neither the entity name nor these property names are confirmed on a live
# site. They follow the fields that iMIS integration tools map for a communication log
# entry: recipient iMIS ID, subject, HTML body and message type. The entry's date is
# not here because iMIS sets it to the time of the write.
COMMUNICATION_LOG_ENTITY = "CommunicationLog"
COMMUNICATION_LOG_PROPERTIES = {
    "recipient_id": "RecipientId",
    "subject": "Subject",
    "html": "Html",
    "message_type": "MessageType",
}

MAX_PAGE_SIZE = 500
QUERY_ENDPOINT = "api/query"  # iMIS 20.3.77 and later: flat rows
IQA_ENDPOINT = "api/iqa"  # iMIS 2017: GenericEntityData rows
# /api/iqa numbers its rows in an extra property; /api/query rows have no such column.
IQA_ROW_NUMBER_PROPERTY = "ResultRow"

FOLDER_TYPE_CODE = "FOL"
QUERY_TYPE_CODE = "IQD"

_CONTRACTS = "Asi.Soa.Core.DataContracts"
_GENERIC_ENTITY_TYPE = f"{_CONTRACTS}.GenericEntityData, Asi.Contracts"
_PROPERTY_COLLECTION_TYPE = f"{_CONTRACTS}.GenericPropertyDataCollection, Asi.Contracts"
_PROPERTY_TYPE = f"{_CONTRACTS}.GenericPropertyData, Asi.Contracts"
_IDENTITY_TYPE = f"{_CONTRACTS}.IdentityData, Asi.Contracts"
_EXECUTE_REQUEST_TYPE = f"{_CONTRACTS}.GenericExecuteRequest, Asi.Contracts"
_STRING_COLLECTION_TYPE = (
    "System.Collections.ObjectModel.Collection`1[[System.String, mscorlib]], mscorlib"
)
_OBJECT_COLLECTION_TYPE = (
    "System.Collections.ObjectModel.Collection`1[[System.Object, mscorlib]], mscorlib"
)

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# A POST rejected with one of these statuses was turned away before processing (rate
# limit, application pool down), so sending it again is safe.
_NOT_PROCESSED_STATUSES = frozenset({429, 503})
_BACKOFF_FIRST_S = 0.5
_BACKOFF_MAX_S = 8.0
_RETRY_AFTER_MAX_S = 30.0


# ---------------------------------------------------------------- errors


class ImisError(Exception):
    """An iMIS call failed; `message` is the text for staff: what failed and what to do next."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ImisAuthError(ImisError):
    """iMIS rejected the user name, the password or the token."""


class ImisUnavailable(ImisError):
    """iMIS did not respond, returned 5xx or 429 after every retry, or returned non-JSON."""


class ImisOutcomeUnknown(ImisUnavailable):
    """A write failed in a way that leaves open whether iMIS stored it."""


class ImisNotFound(ImisError):
    """iMIS has no entity, document or query at the given key or path."""


class ImisQueryNotFound(ImisNotFound):
    """The IQA query does not exist, or iMIS hides it from REST callers."""


class ImisQueryNotAvailable(ImisError):
    """The IQA query exists but may not be run over REST by this user."""


class ImisForbidden(ImisError):
    """The iMIS user lacks the rights for the call."""


class ImisNotSupported(ImisError):
    """The site does not offer this entity over REST: it responded with 404 or 501."""


class ImisRequestError(ImisError):
    """iMIS rejected the request as invalid; `errors` contains its validation messages."""

    def __init__(self, message: str, errors: list[str] | None = None):
        super().__init__(message)
        self.errors = list(errors or [])


class ImisQueryError(ImisRequestError):
    """iMIS rejected the query request, for example because a required prompt is missing."""


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class QueryPage:
    """One page of IQA rows; `next_offset` is 0 on the last page."""

    offset: int
    next_offset: int
    rows: tuple[dict[str, object], ...]
    has_next: bool
    total_count: int


@dataclass(frozen=True)
class DocumentSummary:
    """A folder or query in the iMIS document system, as the IQA picker lists it."""

    document_id: str
    name: str
    path: str
    type_code: str
    is_folder: bool
    description: str


# ---------------------------------------------------------------- JSON shapes


def unwrap_value(value: object) -> object:
    """Return a JSON value without its Json.NET `$type` wrapper, recursively."""
    if isinstance(value, dict):
        if "$value" in value:
            return unwrap_value(value["$value"])
        if "$values" in value:
            return [unwrap_value(item) for item in value["$values"]]
        return {k: unwrap_value(v) for k, v in value.items() if k != "$type"}
    if isinstance(value, list):
        return [unwrap_value(item) for item in value]
    return value


def unwrap_entity(entity: dict) -> dict[str, object]:
    """Return the properties of a GenericEntityData as a flat dict.

    A property without a `Value` key is a null column and maps to None.
    """
    properties = entity.get("Properties") or {}
    flat: dict[str, object] = {}
    for prop in properties.get("$values") or []:
        flat[prop["Name"]] = unwrap_value(prop.get("Value"))
    return flat


def unwrap_row(row: dict) -> dict[str, object]:
    """Return one IQA row, flat or GenericEntityData, as a dict keyed by column alias."""
    if "Properties" in row:
        flat = unwrap_entity(row)
        flat.pop(IQA_ROW_NUMBER_PROPERTY, None)
        return flat
    return {key: unwrap_value(value) for key, value in row.items() if key != "$type"}


def _items(envelope: dict) -> list:
    items = envelope.get("Items")
    if isinstance(items, dict):
        return items.get("$values") or []
    return items or []


def _error_messages(response: requests.Response) -> list[str]:
    """Return the messages of an iMIS error body, or [] when it has none."""
    try:
        body = response.json()
    except ValueError:
        return []
    if not isinstance(body, dict):
        return [str(body)]

    errors = body.get("Errors") or (body.get("ValidationResults") or {}).get("Errors") or {}
    messages = [e.get("Message") for e in errors.get("$values") or [] if isinstance(e, dict)]
    messages = [m for m in messages if m]
    for key in ("error_description", "Message", "error"):
        if not messages and body.get(key):
            messages.append(str(body[key]))
    return messages


def _wrapped_string(value: str) -> dict:
    return {"$type": "System.String", "$value": value}


def _identity(entity_type: str, key: str) -> dict:
    return {
        "$type": _IDENTITY_TYPE,
        "EntityTypeName": entity_type,
        "IdentityElements": {"$type": _STRING_COLLECTION_TYPE, "$values": [key]},
    }


def _property(name: str, value: object) -> dict:
    return {"$type": _PROPERTY_TYPE, "Name": name, "Value": value}


def naive_utc_timestamp(moment: datetime) -> str:
    """Return a datetime as naive UTC `YYYY-MM-DDTHH:MM:SS`, dropping fractions of a second.

    A naive datetime is taken to be UTC already, as MongoDB returns stored datetimes.
    """
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.isoformat(timespec="seconds")


def build_activity_entity(
    party_id: str,
    activity_type: str,
    transaction_date: datetime,
    category: str,
    uf_1: str,
    note: str | None = None,
) -> dict:
    """Return the GenericEntityData body that creates one Activity row.

    The note property is sent only when `note` is given.
    """
    names = ACTIVITY_PROPERTIES
    timestamp = {"$type": "System.DateTime", "$value": naive_utc_timestamp(transaction_date)}
    properties = [
        _property(names["party_id"], party_id),
        _property(names["activity_type"], activity_type),
        _property(names["transaction_date"], timestamp),
        _property(names["category"], category),
        _property(names["uf_1"], uf_1),
    ]
    if note is not None:
        properties.append(_property(names["note"], note))
    return {
        "$type": _GENERIC_ENTITY_TYPE,
        "EntityTypeName": "Activity",
        "PrimaryParentEntityTypeName": "Party",
        "PrimaryParentIdentity": _identity("Party", party_id),
        "Properties": {"$type": _PROPERTY_COLLECTION_TYPE, "$values": properties},
    }


def activity_from_entity(entity: dict) -> dict[str, object]:
    """Return an Activity GenericEntityData as a dict keyed like ACTIVITY_PROPERTIES."""
    flat = unwrap_entity(entity)
    activity = {ours: flat.get(theirs) for ours, theirs in ACTIVITY_PROPERTIES.items()}

    identity = unwrap_value((entity.get("Identity") or {}).get("IdentityElements"))
    if isinstance(identity, list) and identity:
        activity["seqn"] = identity[0]
    if activity["seqn"] is not None:
        activity["seqn"] = str(activity["seqn"])
    return activity


def build_communication_log_entity(recipient_id: str, subject: str, html: str, message_type: int) -> dict:
    """Return the GenericEntityData body that creates one communication log entry."""
    names = COMMUNICATION_LOG_PROPERTIES
    properties = [
        _property(names["recipient_id"], recipient_id),
        _property(names["subject"], subject),
        _property(names["html"], html),
        _property(names["message_type"], {"$type": "System.Int32", "$value": message_type}),
    ]
    return {
        "$type": _GENERIC_ENTITY_TYPE,
        "EntityTypeName": COMMUNICATION_LOG_ENTITY,
        "Properties": {"$type": _PROPERTY_COLLECTION_TYPE, "$values": properties},
    }


def identity_key(entity: object) -> str | None:
    """Return the first identity element of a stored entity (its key), or None when it has none."""
    if not isinstance(entity, dict):
        return None
    identity = unwrap_value((entity.get("Identity") or {}).get("IdentityElements"))
    if isinstance(identity, list) and identity and identity[0] not in (None, ""):
        return str(identity[0])
    return None


def _document_from_json(data: dict) -> DocumentSummary:
    return DocumentSummary(
        document_id=str(data.get("DocumentId", "")),
        name=str(data.get("Name", "")),
        path=str(data.get("Path", "")),
        type_code=str(data.get("DocumentTypeId", "")),
        is_folder=bool(data.get("IsFolder")),
        description=str(data.get("Description") or ""),
    )


# ---------------------------------------------------------------- HTTP


def _never_sent(exc: requests.RequestException) -> bool:
    """Return whether the request failed before iMIS could have received it."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError)


def _retry_after_s(response: requests.Response) -> float:
    try:
        return min(float(response.headers.get("Retry-After", 0)), _RETRY_AFTER_MAX_S)
    except ValueError:
        return 0.0


class ImisClient:
    """HTTP access to one iMIS site: tokens, retries and the query endpoint in use.

    `base_url` is the site root, including any virtual directory. `sleep` is called
    with each backoff delay in seconds; tests pass a recorder.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 15.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_retries: int = 4,
    ):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"iMIS base URL must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self._sleep = sleep
        self._http = session or requests.Session()
        self._owns_http = session is None
        # Which of QUERY_ENDPOINT and IQA_ENDPOINT this site serves; None until known.
        self.query_endpoint: str | None = None

    def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> ImisClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def get_token(self, username: str, password: str) -> str:
        """Sign in with the password grant and return the access token.

        Raises ImisAuthError when iMIS rejects the credentials and ImisUnavailable when
        iMIS does not respond, returns 5xx, or returns something other than a token.
        """
        form = {"grant_type": "password", "username": username, "password": password}
        response = self.send("POST", "token", form=form)

        if response.status_code in (400, 401):
            raise self._sign_in_error(username, response)
        body = self.decode_json(response, "token")
        token = body.get("access_token") if isinstance(body, dict) else None
        if response.status_code != 200 or not token:
            raise ImisUnavailable(
                f"iMIS at {self.base_url} returned no access token (HTTP "
                f"{response.status_code}). Check the iMIS base URL in Settings."
            )
        return token

    def _sign_in_error(self, username: str, response: requests.Response) -> ImisAuthError:
        try:
            error = response.json().get("error")
        except (ValueError, AttributeError):
            error = None
        if error == "invalid_grant":
            return ImisAuthError(
                f"iMIS rejected the sign-in of user {username!r}. "
                "Check the iMIS user name and password."
            )
        detail = "; ".join(_error_messages(response)) or f"HTTP {response.status_code}"
        return ImisAuthError(f"iMIS at {self.base_url} rejected the sign-in request: {detail}.")

    def send(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        query: dict | list | None = None,
        json_body: dict | None = None,
        form: dict | None = None,
        idempotent: bool = True,
    ) -> requests.Response:
        """Send one request, retrying 429, 5xx and connection failures with backoff.

        `path` is relative to the base URL. A non-idempotent request is retried only
        when iMIS cannot have processed it. Returns the first response that is not
        retried. Raises ImisUnavailable when the retries run out and
        ImisOutcomeUnknown when a non-idempotent request may have been processed.
        """
        url = f"{self.base_url}/{path}"
        if query:
            url += "?" + urlencode(query, quote_via=quote, safe="$/")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"

        for attempt in range(self.max_retries + 1):
            response, failure = self._attempt(method, url, headers, json_body, form)
            if not self._should_retry(response, failure, idempotent, method, path):
                return response
            if attempt == self.max_retries:
                raise self._unavailable(path, response, failure)

            delay = self._backoff_s(attempt, response)
            logger.warning(
                "iMIS %s %s failed (%s); retry %s of %s in %.1f s",
                method, path, self._describe(response, failure), attempt + 1, self.max_retries, delay,
            )
            self._sleep(delay)
        raise AssertionError("unreachable")

    def _attempt(self, method, url, headers, json_body, form):
        try:
            response = self._http.request(
                method, url, headers=headers, json=json_body, data=form, timeout=self.timeout_s
            )
        except requests.RequestException as exc:
            return None, exc
        return response, None

    def _should_retry(self, response, failure, idempotent: bool, method: str, path: str) -> bool:
        """Return whether to retry; raise ImisOutcomeUnknown for an unsafe write retry."""
        if failure is None and response.status_code not in _RETRY_STATUSES:
            return False
        if idempotent:
            return True
        if failure is not None and _never_sent(failure):
            return True
        if failure is None and response.status_code in _NOT_PROCESSED_STATUSES:
            return True
        raise ImisOutcomeUnknown(
            f"iMIS at {self.base_url} failed during {method} {path} "
            f"({self._describe(response, failure)}), so the change may or may not be "
            "saved. Check in iMIS before trying again."
        )

    def _backoff_s(self, attempt: int, response: requests.Response | None) -> float:
        delay = min(_BACKOFF_FIRST_S * 2**attempt, _BACKOFF_MAX_S)
        if response is not None:
            delay = max(delay, _retry_after_s(response))
        return delay

    @staticmethod
    def _describe(response, failure) -> str:
        if failure is not None:
            return type(failure).__name__
        return f"HTTP {response.status_code}"

    def _unavailable(self, path, response, failure) -> ImisUnavailable:
        return ImisUnavailable(
            f"iMIS at {self.base_url} is unavailable ({self._describe(response, failure)} "
            f"on {path} after {self.max_retries + 1} attempts). Check that the iMIS base "
            "URL in Settings is right and that the site is up, then try again."
        )

    def decode_json(self, response: requests.Response, path: str) -> object:
        """Return the decoded body; raise ImisUnavailable when it is not JSON."""
        try:
            return response.json()
        except ValueError:
            raise ImisUnavailable(
                f"iMIS at {self.base_url} returned a non-JSON response to {path} (HTTP "
                f"{response.status_code}). Check that the iMIS base URL in Settings "
                "points at the site root."
            ) from None


# ---------------------------------------------------------------- API calls


class ImisSession:
    """API calls as one iMIS user, with one cached token renewed on 401.

    With a password, a call that gets 401 requests a new token and runs once more. A
    session built with `from_token` has no password, so a 401 raises ImisAuthError.
    Safe to share between threads, although the iMIS vendor requests serial calls, not
    parallel ones, from integrators.
    """

    def __init__(self, client: ImisClient, username: str, password: str | None):
        self.client = client
        self.username = username
        self._password = password
        self._token: str | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_token(cls, client: ImisClient, username: str, token: str) -> ImisSession:
        """Return a session that uses a token from an earlier sign-in and cannot renew it."""
        session = cls(client, username, None)
        session._token = token
        return session

    def __repr__(self) -> str:
        return f"ImisSession({self.client.base_url!r}, {self.username!r})"

    # -- token handling

    def token(self) -> str:
        """Return the cached token, signing in first when there is none."""
        with self._lock:
            if self._token is None:
                self._token = self._sign_in()
            return self._token

    def _renew(self, stale: str) -> str:
        with self._lock:
            if self._token == stale:
                self._token = self._sign_in()
            return self._token

    def _sign_in(self) -> str:
        if self._password is None:
            raise ImisAuthError(
                f"The iMIS session of user {self.username!r} has expired. Sign in again."
            )
        return self.client.get_token(self.username, self._password)

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        """Send a request with the token; on 401 renew the token once and send it again.

        Raises ImisAuthError when the new token is rejected too.
        """
        token = self.token()
        response = self.client.send(method, path, token=token, **kwargs)
        if response.status_code != 401:
            return response

        logger.info("iMIS rejected the token on %s %s (401); requesting a new one", method, path)
        response = self.client.send(method, path, token=self._renew(token), **kwargs)
        if response.status_code == 401:
            raise ImisAuthError(
                f"iMIS rejected a new token of user {self.username!r}. Check that the "
                "account is enabled and may use the REST API."
            )
        return response

    # -- IQA queries

    def iter_query_pages(
        self,
        query_path: str,
        *,
        prompts: dict[str, str] | None = None,
        page_size: int = MAX_PAGE_SIZE,
        start_offset: int = 0,
    ) -> Iterator[QueryPage]:
        """Yield the pages of an IQA query from `start_offset` until the last page.

        Rows may repeat across pages when the query does not sort on a unique key;
        callers de-duplicate. Raises ImisQueryNotFound, ImisQueryNotAvailable,
        ImisQueryError, ImisAuthError and ImisUnavailable.
        """
        limit = max(1, min(page_size, MAX_PAGE_SIZE))
        offset = start_offset
        while True:
            page = self._fetch_page(query_path, prompts or {}, limit, offset)
            yield page
            if not page.has_next or page.next_offset == 0:
                return
            if page.next_offset <= offset:
                raise ImisQueryError(
                    f"iMIS returned NextOffset {page.next_offset} after offset {offset} for "
                    f"query {query_path}, which would repeat pages forever."
                )
            offset = page.next_offset

    def query_columns(self, query_path: str, prompts: dict[str, str] | None = None) -> list[str]:
        """Return the column aliases of a query, read from its first row ([] if it has none)."""
        page = self._fetch_page(query_path, prompts or {}, 1, 0)
        return list(page.rows[0]) if page.rows else []

    def _fetch_page(self, query_path: str, prompts: dict[str, str], limit: int, offset: int) -> QueryPage:
        endpoint = self.client.query_endpoint or QUERY_ENDPOINT
        response = self._get_query(endpoint, query_path, prompts, limit, offset)

        if self.client.query_endpoint is None and response.status_code in (404, 501):
            fallback = self._get_query(IQA_ENDPOINT, query_path, prompts, limit, offset)
            if fallback.status_code == 200:
                logger.info(
                    "iMIS at %s has no /%s; using /%s",
                    self.client.base_url, QUERY_ENDPOINT, IQA_ENDPOINT,
                )
                self.client.query_endpoint = IQA_ENDPOINT
            response, endpoint = fallback, IQA_ENDPOINT
        elif self.client.query_endpoint is None and response.status_code == 200:
            self.client.query_endpoint = QUERY_ENDPOINT

        self._raise_for_query(response, query_path)
        return self._page_from(self.client.decode_json(response, endpoint), offset, limit)

    def _get_query(self, endpoint, query_path, prompts, limit, offset) -> requests.Response:
        params: list[tuple[str, object]] = [("QueryName", query_path)]
        if endpoint == IQA_ENDPOINT:
            params += [("Parameter", value) for value in prompts.values()]
        else:
            params += list(prompts.items())
        params += [("limit", limit), ("offset", offset)]
        return self.call("GET", endpoint, query=params)

    @staticmethod
    def _raise_for_query(response: requests.Response, query_path: str) -> None:
        status = response.status_code
        if status == 200:
            return
        messages = _error_messages(response)
        if status == 404:
            raise ImisQueryNotFound(
                f"iMIS found no query at {query_path}. Check the query path, and that the "
                'query is marked "Available via the REST API" in iMIS.'
            )
        if status == 403:
            raise ImisQueryNotAvailable(
                f"iMIS does not allow the query {query_path} over REST (HTTP 403). In iMIS, mark the "
                'query "Available via the REST API" and check that the user may run it.'
            )
        if status == 400:
            detail = "; ".join(messages) or "no reason given"
            raise ImisQueryError(f"iMIS rejected the query {query_path}: {detail}.", messages)
        raise ImisRequestError(
            f"iMIS returned HTTP {status} for the query {query_path}: "
            f"{'; '.join(messages) or 'no reason given'}.",
            messages,
        )

    @staticmethod
    def _page_from(body: object, offset: int, limit: int) -> QueryPage:
        if not isinstance(body, dict):
            raise ImisQueryError("iMIS returned a query response without a paging envelope.")

        rows = tuple(unwrap_row(row) for row in _items(body))
        served_limit = int(body.get("Limit") or limit)
        if served_limit < limit:
            logger.debug("iMIS served %s rows per page where %s were requested", served_limit, limit)

        total = int(body.get("TotalCount") or 0)
        has_next = bool(body.get("HasNext", offset + served_limit < total))
        next_offset = int(body.get("NextOffset") or 0) if "NextOffset" in body else offset + served_limit
        return QueryPage(
            offset=int(body.get("Offset", offset)),
            next_offset=next_offset if has_next else 0,
            rows=rows,
            has_next=has_next,
            total_count=total,
        )

    # -- IQA picker

    def find_document(self, path: str) -> DocumentSummary | None:
        """Return the folder or query at `path` (such as "$/TextManager"), or None."""
        result = self._execute_document_operation("FindByPath", [_wrapped_string(path)])
        return _document_from_json(result) if isinstance(result, dict) else None

    def list_folder(self, path: str) -> list[DocumentSummary]:
        """Return the folders and queries directly in the folder at `path`.

        Raises ImisNotFound when iMIS has no folder at that path.
        """
        folder = self.find_document(path)
        if folder is None or not folder.is_folder:
            raise ImisNotFound(f"iMIS has no folder at {path}. Check the path.")

        parameters = [
            _wrapped_string(folder.document_id),
            {"$type": "System.String[]", "$values": [FOLDER_TYPE_CODE, QUERY_TYPE_CODE]},
            {"$type": "System.Boolean", "$value": False},
        ]
        result = self._execute_document_operation("FindDocumentsInFolder", parameters)
        items = result.get("$values") if isinstance(result, dict) else None
        return [_document_from_json(item) for item in items or []]

    def _execute_document_operation(self, operation: str, parameters: list) -> object:
        body = {
            "$type": _EXECUTE_REQUEST_TYPE,
            "EntityTypeName": "DocumentSummary",
            "OperationName": operation,
            "Parameters": {"$type": _OBJECT_COLLECTION_TYPE, "$values": parameters},
        }
        response = self.call("POST", "api/DocumentSummary/_execute", json_body=body)
        self._raise_for_status(response, f"the document operation {operation}")
        answer = self.client.decode_json(response, "api/DocumentSummary/_execute")
        return answer.get("Result") if isinstance(answer, dict) else None

    # -- activities

    def create_activity(
        self,
        *,
        party_id: str,
        activity_type: str,
        transaction_date: datetime,
        category: str,
        uf_1: str,
        note: str | None = None,
    ) -> str:
        """Write one Activity row and return its SEQN, the key to delete it by.

        `transaction_date` is written as naive UTC; a naive value is taken as UTC. Raises
        ImisRequestError when iMIS rejects the row (for example an activity type that
        does not exist) and ImisOutcomeUnknown when the write may or may not be saved.
        """
        body = build_activity_entity(party_id, activity_type, transaction_date, category, uf_1, note)
        response = self.call("POST", "api/Activity", json_body=body, idempotent=False)
        if response.status_code == 400:
            raise self._activity_rejected(activity_type, response)
        self._raise_for_status(response, f"the {activity_type} activity")

        entity = self.client.decode_json(response, "api/Activity")
        seqn = activity_from_entity(entity)["seqn"] if isinstance(entity, dict) else None
        if not seqn:
            raise ImisRequestError("iMIS stored the activity but returned no SEQN for it.")
        return seqn

    def find_activities(self, party_id: str, activity_type: str) -> list[dict[str, object]]:
        """Return the member's activities of one type, as dicts keyed like ACTIVITY_PROPERTIES."""
        filters = [
            (ACTIVITY_FILTERS["party_id"], party_id),
            (ACTIVITY_FILTERS["activity_type"], activity_type),
        ]
        activities: list[dict[str, object]] = []
        offset = 0
        while True:
            query = [*filters, ("limit", MAX_PAGE_SIZE), ("offset", offset)]
            response = self.call("GET", "api/Activity", query=query)
            self._raise_for_status(response, "the activity search")
            body = self.client.decode_json(response, "api/Activity")
            if not isinstance(body, dict):
                raise ImisRequestError("iMIS returned an activity list without a paging envelope.")
            activities += [activity_from_entity(item) for item in _items(body)]
            if not body.get("HasNext") or not body.get("NextOffset"):
                return activities
            offset = int(body["NextOffset"])

    def delete_activity(self, seqn: str) -> bool:
        """Delete one Activity row by SEQN; return False when iMIS has no such row."""
        response = self.call("DELETE", f"api/Activity/{quote(str(seqn), safe='')}")
        if response.status_code == 404:
            return False
        self._raise_for_status(response, f"the deletion of activity {seqn}")
        return True

    # -- communication log

    def create_communication_log(self, *, recipient_id: str, subject: str, html: str, message_type: int) -> str | None:
        """Write one communication log entry and return its key, or None when iMIS returns none.

        iMIS dates the entry at the time of the write. Raises ImisNotSupported when the
        site responds with 404 or 501 (older sites have no communication log over REST),
        ImisRequestError when iMIS rejects the entry, and ImisOutcomeUnknown when the
        write may or may not be saved.
        """
        path = f"api/{COMMUNICATION_LOG_ENTITY}"
        body = build_communication_log_entity(recipient_id, subject, html, message_type)
        response = self.call("POST", path, json_body=body, idempotent=False)
        if response.status_code in (404, 501):
            raise ImisNotSupported(
                f"iMIS at {self.client.base_url} does not take communication log entries over REST "
                f"(HTTP {response.status_code} from /{path})."
            )
        self._raise_for_status(response, "the communication log entry")
        return identity_key(self.client.decode_json(response, path))

    @staticmethod
    def _activity_rejected(activity_type: str, response: requests.Response) -> ImisRequestError:
        messages = _error_messages(response)
        return ImisRequestError(
            f"iMIS rejected the {activity_type} activity: {'; '.join(messages) or 'no reason given'}. "
            f"Check that the activity type {activity_type} exists in iMIS "
            "(Settings > Contacts > Activity Types).",
            messages,
        )

    def _raise_for_status(self, response: requests.Response, action: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        messages = _error_messages(response)
        detail = "; ".join(messages) or "no reason given"
        if status == 403:
            raise ImisForbidden(
                f"The iMIS user {self.username!r} may not perform {action} ({detail}). "
                "Ask the iMIS administrator to grant the rights."
            )
        if status == 404:
            raise ImisNotFound(f"iMIS found nothing for {action}: {detail}.")
        raise ImisRequestError(f"iMIS returned HTTP {status} for {action}: {detail}.", messages)
