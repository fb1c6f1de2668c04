"""Staff sessions and CSRF checks of the gateway, on the in-process runtime (no iMIS call)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from services.gateway.app import create_app
from services.gateway.auth import COOKIE_NAME, CSRF_HEADER, SIGN_IN_REJECTED, SessionStore, check_credentials
from services.gateway.errors import SignInFailed

SESSION_SECRET = "unit-test-session-secret-0f9e8d7c6b5a"
LIFETIME_HOURS = 12.0


@pytest.fixture
def sessions(runtime) -> SessionStore:
    return SessionStore(runtime.db, session_secret=SESSION_SECRET, clock=runtime.clock,
                        lifetime_hours=LIFETIME_HOURS)


@pytest.fixture
def signed_in(runtime, tenant_factory):
    """(Flask test client with a session cookie for ACME, that session's CSRF token)."""
    tenant_factory()
    app = create_app(runtime)
    token, session = app.extensions["text_manager"].sessions.create("ACME", "alice")
    client = app.test_client()
    client.set_cookie(COOKIE_NAME, token)
    return client, session["csrf_token"]


def test_session_found_by_token(sessions):
    token, created = sessions.create("ACME", "alice")

    found = sessions.find(token)

    assert found["_id"] == created["_id"]
    assert found["tenant_id"] == "ACME"
    assert found["username"] == "alice"


def test_store_keeps_only_hmac(runtime, sessions):
    token, _ = sessions.create("ACME", "alice")

    stored = runtime.db.sessions.find_one({})

    assert stored["_id"] == hmac.new(SESSION_SECRET.encode(), token.encode(), hashlib.sha256).hexdigest()
    assert token not in repr(stored)


def test_session_expires(runtime, sessions):
    token, _ = sessions.create("ACME", "alice")

    runtime.clock.advance(LIFETIME_HOURS * 3600 - 1)
    before = sessions.find(token)
    runtime.clock.advance(2)
    after = sessions.find(token)

    assert before is not None
    assert after is None


@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_unknown_token(sessions, token):
    sessions.create("ACME", "alice")

    assert sessions.find(token) is None


def test_other_secret_cannot_read(runtime, sessions):
    token, _ = sessions.create("ACME", "alice")
    other = SessionStore(runtime.db, session_secret="another-secret", clock=runtime.clock,
                         lifetime_hours=LIFETIME_HOURS)

    assert other.find(token) is None


def test_delete(sessions):
    token, _ = sessions.create("ACME", "alice")

    sessions.delete(token)

    assert sessions.find(token) is None


def test_session_admin_flag_refreshed(runtime, sessions):
    token, created = sessions.create("ACME", "alice", is_admin=True)

    refreshed = sessions.refresh_admin(created, False)

    assert created["is_admin"] is True
    assert refreshed["is_admin"] is False
    assert sessions.find(token)["is_admin"] is False


def test_csrf_tokens_differ(sessions):
    _, first = sessions.create("ACME", "alice")
    _, second = sessions.create("ACME", "alice")

    assert first["csrf_token"] != second["csrf_token"]


def test_unknown_cloud_id_fails_before_imis(runtime):
    """An unknown Cloud ID is refused without a request to any iMIS, as a wrong password is."""
    with pytest.raises(SignInFailed) as raised:
        check_credentials(runtime.tenants, cloud_id="NOPE", username="alice", password="pw", timeout_s=1.0)

    assert raised.value.details == {"field": "password"}
    assert raised.value.message == SIGN_IN_REJECTED


def test_read_needs_no_csrf(signed_in):
    client, _ = signed_in

    assert client.get("/api/campaigns").status_code == 200


CAMPAIGN = {"name": "Renewals", "body": "Renew now", "iqa_path": "$/TextManager/Members"}


@pytest.mark.parametrize("headers", [{}, {CSRF_HEADER: ""}, {CSRF_HEADER: "wrong"}],
                         ids=["missing", "empty", "wrong"])
def test_change_needs_csrf(runtime, signed_in, headers):
    client, _ = signed_in

    response = client.post("/api/campaigns", json=CAMPAIGN, headers=headers)

    assert response.status_code == 403
    assert response.get_json()["error"] == "csrf_failed"
    assert runtime.db.campaigns.count_documents({}) == 0


def test_change_with_csrf(runtime, signed_in):
    client, csrf = signed_in

    response = client.post("/api/campaigns", json=CAMPAIGN, headers={CSRF_HEADER: csrf})

    assert response.status_code == 201
    assert runtime.db.campaigns.count_documents({"tenant_id": "ACME"}) == 1


def test_expired_session_refused(runtime, signed_in):
    client, _ = signed_in

    runtime.clock.advance(LIFETIME_HOURS * 3600 + 1)

    assert client.get("/api/campaigns").status_code == 401


def test_api_responses_not_cached(signed_in):
    client, _ = signed_in

    assert client.get("/api/session").headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("admins, expected", [
    (("alice",), True),
    (("ALICE", "bob"), True),
    (("bob",), False),
    ((), False),
], ids=["listed", "other-case", "not-listed", "no-admins"])
def test_session_reports_admin_from_store(runtime, tenant_factory, admins, expected):
    """GET /api/session reads the administrator list again, whatever the session held."""
    tenant_factory(admins=admins)
    app = create_app(runtime)
    token, _ = app.extensions["text_manager"].sessions.create("ACME", "alice", is_admin=not expected)
    client = app.test_client()
    client.set_cookie(COOKIE_NAME, token)

    body = client.get("/api/session").get_json()

    assert body["is_admin"] is expected
