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


class InvalidInput(ApiError):
    status = 422
    code = "invalid_input"


class NotSignedIn(ApiError):
    status = 401
    code = "not_signed_in"


class SignInFailed(ApiError):
    status = 401
    code = "sign_in_failed"


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
