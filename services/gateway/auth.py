"""Staff sessions: throttled sign-in against the tenant's iMIS, cookies and CSRF tokens."""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import secrets
from datetime import timedelta

from flask import g, request
from pymongo.database import Database

from libs.common.imis import ImisAuthError, ImisClient, ImisError, ImisUnavailable
from libs.common.tenants import Tenant, TenantNotFound, TenantRepository
from services.gateway.errors import CsrfFailed, NotSignedIn, SignInFailed, UpstreamUnavailable
from services.gateway.throttle import SignInThrottle

logger = logging.getLogger(__name__)

COOKIE_NAME = "tm_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
SIGN_IN_REJECTED = "the user name, password or Cloud ID is wrong: check them and try again"

# Sign-in is interactive, and gunicorn kills a request after 30 s: at most two
# attempts of at most 10 s each, where the iMIS client's defaults would keep staff
# waiting through five attempts and 7.5 s of backoff.
SIGN_IN_MAX_RETRIES = 1
SIGN_IN_TIMEOUT_S = 10.0


class SessionStore:
    """Server-side sessions; the store keeps only an HMAC of each cookie value."""

    def __init__(self, db: Database, *, session_secret: str, clock, lifetime_hours: float):
        self._sessions = db.sessions
        self._key = (session_secret or secrets.token_hex(32)).encode()
        self._clock = clock
        self._lifetime = timedelta(hours=lifetime_hours)

    def create(self, tenant_id: str, username: str, *, is_admin: bool = False) -> tuple[str, dict]:
        """Store a new session; return the cookie value and the session."""
        token = secrets.token_urlsafe(32)
        session = {"_id": self._digest(token), "tenant_id": tenant_id, "username": username, "is_admin": is_admin,
                   "csrf_token": secrets.token_urlsafe(32), "expires_at": self._clock.now() + self._lifetime}
        self._sessions.insert_one(session)
        return token, session

    def refresh_admin(self, session: dict, is_admin: bool) -> dict:
        """Store whether the session's user is an administrator, as read from the tenant; return the session."""
        if session.get("is_admin") != is_admin:
            self._sessions.update_one({"_id": session["_id"]}, {"$set": {"is_admin": is_admin}})
        return dict(session, is_admin=is_admin)

    def find(self, token: str | None) -> dict | None:
        if not token:
            return None
        session = self._sessions.find_one({"_id": self._digest(token)})
        if session is None or session["expires_at"].replace(tzinfo=self._clock.now().tzinfo) <= self._clock.now():
            return None
        return session

    def delete(self, token: str | None) -> None:
        if token:
            self._sessions.delete_one({"_id": self._digest(token)})

    def _digest(self, token: str) -> str:
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()


def sign_in(tenants: TenantRepository, throttle: SignInThrottle, *, cloud_id: str, username: str, password: str,
            address: str, timeout_s: float) -> Tenant:
    """Check the staff member's iMIS credentials, counting failures; return the tenant.

    The Cloud ID and user name are used without surrounding whitespace, for the
    throttle's counter as for iMIS, so "mallory " is counted as "mallory".
    Raises TooManySignIns, without asking iMIS, while the account or the client address
    is locked, and when this failure locks it. Otherwise raises SignInFailed or
    UpstreamUnavailable like `check_credentials`.
    """
    cloud_id, username = cloud_id.strip(), username.strip()
    attempt = throttle.begin(cloud_id, username, address)
    try:
        tenant = check_credentials(tenants, cloud_id=cloud_id, username=username, password=password,
                                   timeout_s=timeout_s)
    except SignInFailed:
        locked = attempt.failed()
        if locked is not None:
            raise locked from None
        raise
    except Exception:
        # iMIS could not check the password, so the attempt does not count as a failed sign-in.
        attempt.withdrawn()
        raise
    attempt.succeeded()
    return tenant


def check_credentials(tenants: TenantRepository, *, cloud_id: str, username: str, password: str,
                      timeout_s: float) -> Tenant:
    """Check the staff member's iMIS credentials; return the tenant, or raise SignInFailed or UpstreamUnavailable.

    An unknown Cloud ID gets the same SignInFailed as a wrong password, so the response
    does not reveal which Cloud IDs exist. The Cloud ID must match as stored, letter
    case included, because neither the iMIS API nor the product documentation says
    whether Cloud IDs ignore case, and the store keys tenants by the exact Cloud ID.
    """
    # NOTE: an unknown Cloud ID is rejected without the iMIS call, so a client that times
    # the responses can still tell it apart. The throttle bounds how many it can try.
    try:
        tenant = tenants.get(cloud_id)
    except TenantNotFound:
        # The Cloud ID typed is not logged: it may be a password typed into the wrong field.
        logger.info("sign-in rejected: unknown Cloud ID")
        raise SignInFailed(SIGN_IN_REJECTED, {"field": "password"}) from None
    try:
        with ImisClient(tenant.imis_base_url, timeout_s=min(timeout_s, SIGN_IN_TIMEOUT_S),
                        max_retries=SIGN_IN_MAX_RETRIES) as client:
            client.get_token(username, password)
    except ImisAuthError:
        raise SignInFailed(SIGN_IN_REJECTED, {"field": "password"}) from None
    except ImisUnavailable as error:
        # The address stays out of the response, which anyone may read before signing in.
        logger.warning("sign-in: iMIS at %s did not respond: %s", tenant.imis_base_url, error.message)
        raise UpstreamUnavailable("iMIS did not respond to the sign-in: try again later, or ask your "
                                  "administrator to check the iMIS address") from None
    except ImisError as error:
        logger.warning("sign-in: iMIS at %s failed: %s", tenant.imis_base_url, error.message)
        raise UpstreamUnavailable("iMIS failed to check the sign-in: try again later, or ask your administrator "
                                  "to check the iMIS address") from None
    return tenant


def login_required(sessions_getter):
    """Decorate a view: require a session, and the CSRF header on state-changing requests."""

    def decorator(view):
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            session = sessions_getter().find(request.cookies.get(COOKIE_NAME))
            if session is None:
                raise NotSignedIn("sign in first")
            if request.method not in SAFE_METHODS:
                sent = request.headers.get(CSRF_HEADER, "")
                if not hmac.compare_digest(sent, session["csrf_token"]):
                    raise CsrfFailed(f"missing or wrong {CSRF_HEADER} header: send the csrf_token from sign-in")
            g.session = session
            g.tenant_id = session["tenant_id"]
            return view(*args, **kwargs)

        return wrapped

    return decorator
