"""The gateway's exceptions, each mapped to an HTTP status and an error code."""

from __future__ import annotations


class ApiError(Exception):
    """An error the API reports as `{"error": code, "message": text, "details": {...}}`."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_dict(self) -> dict:
        return {"error": self.code, "message": self.message, "details": self.details}

    def headers(self) -> dict[str, str]:
        """Return the HTTP headers the response carries besides its body."""
        return {}


class InvalidInput(ApiError):
    status = 422
    code = "invalid_input"


class NotSignedIn(ApiError):
    status = 401
    code = "not_signed_in"


class SignInFailed(ApiError):
    status = 401
    code = "sign_in_failed"


class TooManySignIns(ApiError):
    """Sign-in is locked after too many failures; `retry_after_s` is the wait in seconds."""

    status = 429
    code = "too_many_sign_ins"

    def __init__(self, message: str, retry_after_s: int, details: dict | None = None):
        super().__init__(message, details)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class CsrfFailed(ApiError):
    status = 403
    code = "csrf_failed"


class NotAdministrator(ApiError):
    status = 403
    code = "not_administrator"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class UpstreamUnavailable(ApiError):
    status = 502
    code = "upstream_unavailable"
