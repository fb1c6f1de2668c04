"""The staff JSON API: sign-in, CSRF, tenant isolation, secrets, validation, runs, OpenAPI.

Most tests use `gateway_world`: the gateway's Flask test client, signing in against a
live iMIS simulator, with the scheduler and recipients service run by the test. The
log test runs a whole Stack, because it follows a campaign through every service.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta, timezone

import pytest

from local import demo_data
from local.stack import DEMO_CLOUD_ID, DEMO_TWILIO_TOKEN
from tests.conftest import wait_until
from services.gateway import admin as admin_command
from tests.integration.conftest import (
    EMPTY_QUERY_PATH,
    UNREACHABLE_CLOUD_ID,
    WORLD_NON_ADMINS,
    WORLD_TENANTS,
    StaffApi,
    StaffUser,
    world_tenant,
)

ERROR_KEYS = {"error", "message", "details"}
STATE_CHANGING_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
MISSING_QUERY_PATH = "$/TextManager/No Such Query"
CAMPAIGN_EMAIL = "campaign-owner@alpha.example"


def _campaign_fields(**overrides) -> dict:
    fields = {"name": "Spring renewals", "body": "Hello {FirstName|member}, renew by Friday.",
              "iqa_path": demo_data.DEMO_QUERY_PATH, "email": CAMPAIGN_EMAIL}
    fields.update(overrides)
    return fields


def _create_campaign(client, csrf: str, **overrides) -> dict:
    response = client.post("/api/campaigns", json=_campaign_fields(**overrides), headers={"X-CSRF-Token": csrf})
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def _send(client, csrf: str, campaign_id: str, json: dict | None = None):
    return client.post(f"/api/campaigns/{campaign_id}/send", json=json, headers={"X-CSRF-Token": csrf})


@pytest.fixture
def alpha(gateway_world):
    """(client, csrf token) of a staff member signed in to ALPHA."""
    return gateway_world.sign_in("ALPHA")


@pytest.fixture
def beta(gateway_world):
    """(client, csrf token) of a staff member signed in to BETA."""
    return gateway_world.sign_in("BETA")


# ------------------------------------------------------------------ sign-in


def test_sign_in_ok(gateway_world):
    user = gateway_world.users["ALPHA"]

    response = gateway_world.client().post("/api/session", json={
        "username": user.username, "password": user.password, "cloud_id": "ALPHA"})

    assert response.status_code == 201
    body = response.get_json()
    assert body["username"] == user.username
    assert body["cloud_id"] == "ALPHA"
    assert len(body["csrf_token"]) >= 32
    assert user.password not in response.get_data(as_text=True)


@pytest.mark.parametrize("cloud_id, password, status, code, advice", [
    pytest.param("NO-SUCH-ORG", "alpha-staff-pass-20c1", 401, "sign_in_failed", "check them and try again",
                 id="cloud-id"),
    pytest.param("ALPHA", "not-the-password", 401, "sign_in_failed", "check them and try again", id="password"),
    pytest.param(UNREACHABLE_CLOUD_ID, "alpha-staff-pass-20c1", 502, "upstream_unavailable",
                 "check the iMIS address", id="unreachable-imis"),
])
def test_sign_in_error(gateway_world, cloud_id, password, status, code, advice):
    response = gateway_world.client().post("/api/session", json={
        "username": "alpha-staff", "password": password, "cloud_id": cloud_id})

    body = response.get_json()
    assert response.status_code == status
    assert set(body) == ERROR_KEYS
    assert body["error"] == code
    assert advice in body["message"]
    assert "tm_session" not in response.headers.get("Set-Cookie", "")


def test_sign_in_missing_fields(gateway_world):
    response = gateway_world.client().post("/api/session", json={"username": "alpha-staff"})

    body = response.get_json()
    assert response.status_code == 422
    assert set(body["details"]["fields"]) == {"password", "cloud_id"}


def test_session_cookie_flags(gateway_world):
    user = gateway_world.users["ALPHA"]

    response = gateway_world.client().post("/api/session", json={
        "username": user.username, "password": user.password, "cloud_id": "ALPHA"})

    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("tm_session=")
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie


def test_not_signed_in(gateway_world):
    response = gateway_world.client().get("/api/campaigns")

    assert response.status_code == 401
    assert response.get_json()["error"] == "not_signed_in"


def test_sign_out(gateway_world, alpha):
    client, csrf = alpha

    signed_out = client.delete("/api/session", headers={"X-CSRF-Token": csrf})

    assert signed_out.status_code == 200
    assert client.get("/api/session").status_code == 401


# ------------------------------------------------------------------ CSRF


def _state_changing_requests(app, ids: dict[str, str]) -> list[tuple[str, str]]:
    """Return (method, path) for every state-changing API route, path parameters filled in."""
    requests = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        for method in sorted(rule.methods & STATE_CHANGING_METHODS):
            if (method, rule.rule) == ("POST", "/api/session"):
                continue
            path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda match: ids.get(match.group(1), "pause"), rule.rule)
            requests.append((method, path))
    return requests


@pytest.mark.parametrize("token", [None, "", "wrong-token"])
def test_csrf_required(gateway_world, alpha, token):
    client, csrf = alpha
    campaign = _create_campaign(client, csrf)
    headers = {} if token is None else {"X-CSRF-Token": token}
    requests = _state_changing_requests(gateway_world.app, {"campaign_id": campaign["id"], "run_id": "r1"})

    statuses = {(method, path): client.open(path, method=method, json={}, headers=headers).status_code
                for method, path in requests}

    assert len(requests) >= 8
    assert {request: status for request, status in statuses.items() if status != 403} == {}
    assert client.get(f"/api/campaigns/{campaign['id']}").get_json()["status"] == "draft"
    assert client.get("/api/session").status_code == 200


def test_csrf_of_other_session(gateway_world, alpha):
    """A CSRF token is bound to its session: another session's token is refused."""
    client, csrf = alpha
    _, other_csrf = gateway_world.sign_in("ALPHA")

    response = client.post("/api/campaigns", json=_campaign_fields(), headers={"X-CSRF-Token": other_csrf})

    assert response.status_code == 403


# ------------------------------------------------------------------ tenant isolation


@pytest.fixture
def alpha_sending(gateway_world, alpha) -> tuple[dict, str]:
    """An ALPHA campaign that is sending (expanded, no sender running); returns (campaign, run id)."""
    client, csrf = alpha
    campaign = _create_campaign(client, csrf)
    assert _send(client, csrf, campaign["id"]).status_code == 202
    gateway_world.process_due_runs()
    sending = client.get(f"/api/campaigns/{campaign['id']}").get_json()
    assert sending["status"] == "sending"
    return sending, sending["current_run"]["id"]


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/campaigns/{campaign_id}"),
    ("POST", "/api/campaigns/{campaign_id}/send"),
    ("POST", "/api/campaigns/{campaign_id}/pause"),
    ("POST", "/api/campaigns/{campaign_id}/resume"),
    ("POST", "/api/campaigns/{campaign_id}/cancel"),
    ("GET", "/api/runs/{run_id}"),
])
def test_other_tenant_gets_404(alpha, beta, alpha_sending, method, path):
    campaign, run_id = alpha_sending
    beta_client, beta_csrf = beta

    response = beta_client.open(path.format(campaign_id=campaign["id"], run_id=run_id), method=method,
                                headers={"X-CSRF-Token": beta_csrf})

    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"
    alpha_client, _ = alpha
    after = alpha_client.get(f"/api/campaigns/{campaign['id']}").get_json()
    assert after["status"] == "sending"
    assert after["current_run"]["id"] == run_id


def test_other_tenant_list(alpha_sending, beta):
    campaign, _ = alpha_sending
    beta_client, _ = beta

    listed = beta_client.get("/api/campaigns").get_json()["campaigns"]

    assert campaign["id"] not in [entry["id"] for entry in listed]


# ------------------------------------------------------------------ secrets


ALPHA_SECRETS = (WORLD_TENANTS[0][4], "alpha-twilio-token-61be")


def test_secrets_not_in_responses(gateway_world, alpha, alpha_sending):
    client, csrf = alpha
    campaign, run_id = alpha_sending
    # The iMIS password is checked against iMIS before it is saved, so it is sent again unchanged.
    new_secrets = {"imis_password": ALPHA_SECRETS[0], "twilio_auth_token": "rotated-twilio-token-4c2e"}
    headers = {"X-CSRF-Token": csrf}

    responses = [
        client.get("/api/session"),
        client.get("/api/settings"),
        client.get("/api/campaigns"),
        client.get(f"/api/campaigns/{campaign['id']}"),
        client.get(f"/api/runs/{run_id}"),
        client.put("/api/settings", json={"name": "Alpha Association"}, headers=headers),
        client.put("/api/settings", json=new_secrets, headers=headers),
    ]
    restored = client.put("/api/settings", json={"imis_password": ALPHA_SECRETS[0],
                                                  "twilio_auth_token": ALPHA_SECRETS[1]}, headers=headers)
    responses.append(restored)

    assert [response.status_code for response in responses] == [200] * len(responses)
    for secret in (*ALPHA_SECRETS, *new_secrets.values()):
        leaks = [response.request.path for response in responses
                 if secret in response.get_data(as_text=True) or secret in str(response.headers)]
        assert leaks == [], f"a secret appears in the responses of {leaks}"
    assert restored.get_json()["imis_password_set"] is True
    assert restored.get_json()["twilio_auth_token_set"] is True


def test_secrets_encrypted_at_rest(gateway_world):
    document = gateway_world.runtime.db.tenants.find_one({"_id": "ALPHA"})
    secrets = gateway_world.runtime.secrets

    assert "imis_password" not in document
    assert "twilio_auth_token" not in document
    assert secrets.decrypt(document["imis_password_enc"]) == ALPHA_SECRETS[0]
    assert secrets.decrypt(document["twilio_auth_token_enc"]) == ALPHA_SECRETS[1]
    assert [secret for secret in ALPHA_SECRETS if secret in repr(document)] == []


def test_secrets_not_logged(stack_factory, caplog):
    """No log line of a sign-in and a whole campaign shows a secret or a password."""
    caplog.set_level(logging.DEBUG)
    stack = stack_factory("memory")
    # Every text is delivered or opted out, so that none waits minutes for a delayed new attempt.
    stack.twilio.set_undelivered({})
    staff_password = "Staff-Only-Password-4471"
    stack.imis.add_user("carol", staff_password)
    service_password = demo_data.DEMO_SERVICE_USER[1]

    staff = StaffApi(stack.gateway_url, username="carol", password=staff_password, cloud_id=DEMO_CLOUD_ID)
    campaign = staff.send_and_wait(staff.create_campaign()["id"])
    wait_until(lambda: len(stack.imis.activities()) >= len(demo_data.DEMO_TWILIO_OPTED_OUT),
               "every opted-out member has a TEXTUNSUB activity")

    assert campaign["status"] == "completed"
    assert len(caplog.records) > 100
    for secret in (staff_password, service_password, DEMO_TWILIO_TOKEN):
        leaks = [record.getMessage() for record in caplog.records
                 if secret in record.getMessage() or secret in (record.exc_text or "")]
        assert leaks == []


# ------------------------------------------------------------------ campaign validation


@pytest.mark.parametrize("body", [
    pytest.param("", id="empty"),
    pytest.param(" \t\n ", id="whitespace"),
    pytest.param("a" * 1601, id="1601-gsm-characters"),
    pytest.param("\U0001F61C" * 801, id="1602-utf16-units"),
])
def test_invalid_body(alpha, body):
    client, csrf = alpha

    response = client.post("/api/campaigns", json=_campaign_fields(body=body), headers={"X-CSRF-Token": csrf})

    assert response.status_code == 422
    assert set(response.get_json()["details"]["fields"]) == {"body"}


def test_longest_body_accepted(alpha):
    client, csrf = alpha

    response = client.post("/api/campaigns", json=_campaign_fields(body="a" * 1600), headers={"X-CSRF-Token": csrf})

    assert response.status_code == 201


@pytest.mark.parametrize("field, value", [
    ("colour", "blue"),
    ("status", "completed"),
    ("tenant_id", "BETA"),
])
def test_unknown_field(alpha, field, value):
    client, csrf = alpha

    response = client.post("/api/campaigns", json=_campaign_fields(**{field: value}), headers={"X-CSRF-Token": csrf})

    assert response.status_code == 422
    assert set(response.get_json()["details"]["fields"]) == {field}


@pytest.mark.parametrize("field, value", [
    ("iqa_path", "TextManager/Members"),
    ("name", ""),
    ("email", "not an address"),
])
def test_invalid_field(alpha, field, value):
    client, csrf = alpha

    response = client.post("/api/campaigns", json=_campaign_fields(**{field: value}), headers={"X-CSRF-Token": csrf})

    assert response.status_code == 422
    assert set(response.get_json()["details"]["fields"]) == {field}


def test_body_not_json(alpha):
    client, csrf = alpha

    response = client.post("/api/campaigns", data="name=x", content_type="application/x-www-form-urlencoded",
                           headers={"X-CSRF-Token": csrf})

    assert response.status_code == 422
    assert set(response.get_json()) == ERROR_KEYS


# ------------------------------------------------------------------ runs


def test_missing_query_fails_run(gateway_world, alpha):
    client, csrf = alpha
    campaign = _create_campaign(client, csrf, iqa_path=MISSING_QUERY_PATH)

    _send(client, csrf, campaign["id"])
    gateway_world.process_due_runs()

    failed = client.get(f"/api/campaigns/{campaign['id']}").get_json()
    assert failed["status"] == "failed"
    assert MISSING_QUERY_PATH in failed["error"]
    assert "Check the query path" in failed["error"]
    assert failed["current_run"]["status"] == "failed"
    assert failed["current_run"]["error"] == failed["error"]


def test_missing_query_sends_notice(gateway_world, alpha):
    client, csrf = alpha
    campaign = _create_campaign(client, csrf, name="Missing query notice", iqa_path=MISSING_QUERY_PATH)

    _send(client, csrf, campaign["id"])
    gateway_world.process_due_runs()

    notices = list(gateway_world.runtime.db.notifications.find({"tenant_id": "ALPHA",
                                                                "subject": {"$regex": "Missing query notice"}}))
    assert len(notices) == 1
    assert notices[0]["to"] == sorted(["admin@alpha.example", CAMPAIGN_EMAIL])
    assert MISSING_QUERY_PATH in notices[0]["text"]


def test_empty_query_completes(gateway_world, alpha):
    client, csrf = alpha
    campaign = _create_campaign(client, csrf, iqa_path=EMPTY_QUERY_PATH)

    _send(client, csrf, campaign["id"])
    gateway_world.process_due_runs()

    done = client.get(f"/api/campaigns/{campaign['id']}").get_json()
    assert done["status"] == "completed"
    assert done["current_run"]["status"] == "completed"
    assert done["current_run"]["counts"]["recipients"] == 0


def test_send_while_sending(alpha, alpha_sending):
    client, csrf = alpha
    campaign, run_id = alpha_sending

    response = _send(client, csrf, campaign["id"])

    assert response.status_code == 409
    assert response.get_json()["error"] == "conflict"
    assert client.get(f"/api/campaigns/{campaign['id']}").get_json()["current_run"]["id"] == run_id


def test_send_while_scheduled(alpha):
    client, csrf = alpha
    campaign = _create_campaign(client, csrf)
    later = (datetime.now(timezone.utc) + timedelta(days=2)).isoformat()

    scheduled = _send(client, csrf, campaign["id"], json={"send_at": later})
    again = _send(client, csrf, campaign["id"])

    assert scheduled.status_code == 202
    assert scheduled.get_json()["status"] == "scheduled"
    assert again.status_code == 409


@pytest.mark.parametrize("send_at", [
    pytest.param((datetime.now(timezone.utc) - timedelta(minutes=5)).isoformat(), id="past"),
    pytest.param("2030-01-01T09:00:00", id="no-time-zone"),
    pytest.param("tomorrow", id="not-a-date"),
])
def test_invalid_send_at(alpha, send_at):
    client, csrf = alpha
    campaign = _create_campaign(client, csrf)

    response = _send(client, csrf, campaign["id"], json={"send_at": send_at})

    body = response.get_json()
    assert response.status_code == 422
    assert "send_at" in body["message"] or "send_at" in body["details"].get("fields", {})
    assert client.get(f"/api/campaigns/{campaign['id']}").get_json()["status"] == "draft"


def test_future_run_waits(gateway_world, alpha):
    client, csrf = alpha
    campaign = _create_campaign(client, csrf)
    later = (datetime.now(timezone.utc) + timedelta(hours=3)).isoformat()

    _send(client, csrf, campaign["id"], json={"send_at": later})
    gateway_world.process_due_runs()

    waiting = client.get(f"/api/campaigns/{campaign['id']}").get_json()
    assert waiting["status"] == "scheduled"
    assert waiting["current_run"]["status"] == "due"


# ------------------------------------------------------------------ administrators


ALPHA_ADMIN = WORLD_TENANTS[0][1]
ALPHA_CLERK = WORLD_NON_ADMINS["ALPHA"][0]


@pytest.fixture
def alpha_clerk(gateway_world):
    """(client, csrf token) of an ALPHA staff member who is no administrator."""
    return gateway_world.sign_in_non_admin("ALPHA")


@pytest.fixture
def restore_settings(gateway_world):
    """Give each tenant its administrator list and daily limit back after the test."""
    yield
    for cloud_id, staff, *_ in WORLD_TENANTS:
        gateway_world.runtime.tenants.set_admins(cloud_id, (staff,))
        gateway_world.runtime.tenants.update(cloud_id, {"daily_limit": 3000})


def _put_settings(signed_in, body: dict):
    client, csrf = signed_in
    return client.put("/api/settings", json=body, headers={"X-CSRF-Token": csrf})


def test_session_says_admin(alpha, alpha_clerk):
    assert alpha[0].get("/api/session").get_json()["is_admin"] is True
    assert alpha_clerk[0].get("/api/session").get_json()["is_admin"] is False


def test_non_admin_reads_settings(alpha_clerk):
    client, _ = alpha_clerk

    response = client.get("/api/settings")

    body = response.get_json()
    assert response.status_code == 200
    assert body["is_admin"] is False
    assert body["admins"] == [ALPHA_ADMIN]
    assert body["imis_password_set"] is True
    assert [secret for secret in ALPHA_SECRETS if secret in response.get_data(as_text=True)] == []


@pytest.mark.parametrize("body", [
    pytest.param({"name": "Clerk's Association"}, id="name"),
    pytest.param({"daily_limit": 1}, id="limit"),
    pytest.param({"sender_number": "+18885550999"}, id="sender"),
    pytest.param({"twilio_account_sid": "AC" + "ef" * 16, "twilio_auth_token": "clerk-token"}, id="twilio"),
    pytest.param({"imis_base_url": "http://127.0.0.1:9/", "imis_password": "guess"}, id="imis-address"),
    pytest.param({"default_email": "clerk@alpha.example"}, id="email"),
    pytest.param({"admins": [ALPHA_ADMIN, ALPHA_CLERK]}, id="add-self"),
])
@pytest.mark.usefixtures("restore_settings")
def test_non_admin_cannot_change(gateway_world, alpha_clerk, body):
    before = gateway_world.runtime.db.tenants.find_one({"_id": "ALPHA"})
    token_requests = _token_requests(gateway_world)

    response = _put_settings(alpha_clerk, body)

    error = response.get_json()
    assert response.status_code == 403
    assert error["error"] == "not_administrator"
    assert f"Ask an administrator of your organisation ({ALPHA_ADMIN})" in error["message"]
    assert error["details"] == {"admins": [ALPHA_ADMIN]}
    assert gateway_world.runtime.db.tenants.find_one({"_id": "ALPHA"}) == before
    assert _token_requests(gateway_world) == token_requests


def _token_requests(gateway_world) -> int:
    return sum(1 for entry in gateway_world.imis.request_log() if entry["path"] == "/token")


def test_non_admin_runs_campaigns(gateway_world, alpha_clerk):
    client, csrf = alpha_clerk

    campaign = _create_campaign(client, csrf, name="Clerk's campaign")
    sent = _send(client, csrf, campaign["id"])

    assert sent.status_code == 202
    assert sent.get_json()["status"] == "sending"


@pytest.mark.usefixtures("restore_settings")
def test_added_admin_can_change_at_once(gateway_world, alpha, alpha_clerk):
    """A staff member made an administrator needs no new sign-in."""
    added = _put_settings(alpha, {"admins": [ALPHA_ADMIN, f"  {ALPHA_CLERK.upper()} "]})

    changed = _put_settings(alpha_clerk, {"daily_limit": 2999})

    assert added.status_code == 200
    assert added.get_json()["admins"] == [ALPHA_ADMIN, ALPHA_CLERK.upper()]
    assert changed.status_code == 200
    assert changed.get_json()["is_admin"] is True
    assert alpha_clerk[0].get("/api/session").get_json()["is_admin"] is True


@pytest.mark.usefixtures("restore_settings")
def test_removed_admin_refused_at_once(gateway_world, alpha):
    _put_settings(alpha, {"admins": [ALPHA_ADMIN, ALPHA_CLERK]})
    clerk = gateway_world.sign_in_non_admin("ALPHA")
    assert clerk[0].get("/api/session").get_json()["is_admin"] is True

    removed = _put_settings(alpha, {"admins": [ALPHA_ADMIN]})
    refused = _put_settings(clerk, {"daily_limit": 1})

    assert removed.status_code == 200
    assert refused.status_code == 403
    assert clerk[0].get("/api/session").get_json()["is_admin"] is False
    assert gateway_world.runtime.tenants.get("ALPHA").daily_limit == 3000


@pytest.mark.usefixtures("restore_settings")
def test_admin_cannot_remove_self(gateway_world, alpha):
    """A slip in the list must not lock the administrator out; another administrator can remove them."""
    _put_settings(alpha, {"admins": [ALPHA_ADMIN, ALPHA_CLERK]})

    response = _put_settings(alpha, {"admins": [ALPHA_CLERK]})

    assert response.status_code == 422
    assert f"would remove you ({ALPHA_ADMIN})" in response.get_json()["message"]
    assert gateway_world.runtime.tenants.get("ALPHA").admins == (ALPHA_ADMIN, ALPHA_CLERK)


@pytest.mark.parametrize("admins, message", [
    pytest.param([], "keep at least one administrator", id="none"),
    pytest.param(["  "], "empty", id="blank"),
    pytest.param([ALPHA_ADMIN, ALPHA_ADMIN.upper()], "listed twice", id="repeated"),
    pytest.param(ALPHA_ADMIN, "Not a valid list", id="not-a-list"),
])
@pytest.mark.usefixtures("restore_settings")
def test_invalid_admin_list(gateway_world, alpha, admins, message):
    response = _put_settings(alpha, {"admins": admins})

    body = response.get_json()
    assert response.status_code == 422
    assert message in " ".join(body["details"]["fields"]["admins"])
    assert gateway_world.runtime.tenants.get("ALPHA").admins == (ALPHA_ADMIN,)


@pytest.mark.usefixtures("restore_settings")
def test_admin_of_alpha_cannot_change_beta(gateway_world, alpha):
    """Administrators are per organisation: the same iMIS user signed in to BETA is not one there."""
    beta_before = gateway_world.runtime.db.tenants.find_one({"_id": "BETA"})
    admin_user = gateway_world.users["ALPHA"]
    in_beta = gateway_world.sign_in_as(StaffUser("BETA", admin_user.username, admin_user.password))

    in_beta_session = in_beta[0].get("/api/session").get_json()
    refused = _put_settings(in_beta, {"daily_limit": 1, "admins": [admin_user.username]})
    own = _put_settings(alpha, {"daily_limit": 2998})
    smuggled = _put_settings(alpha, {"cloud_id": "BETA", "daily_limit": 1})

    assert in_beta_session["cloud_id"] == "BETA"
    assert in_beta_session["is_admin"] is False
    assert refused.status_code == 403
    assert "Ask an administrator of your organisation (beta-staff)" in refused.get_json()["message"]
    assert own.status_code == 200
    assert smuggled.status_code == 422
    assert gateway_world.runtime.db.tenants.find_one({"_id": "BETA"}) == beta_before


@pytest.fixture
def legacy_tenant(gateway_world):
    """LEGACY: a record written before administrators existed, on the world's iMIS; its staff user."""
    service, service_password = WORLD_TENANTS[0][3], WORLD_TENANTS[0][4]
    gateway_world.runtime.tenants.save(world_tenant("LEGACY", gateway_world.imis.url, service, service_password, 7))
    gateway_world.runtime.db.tenants.update_one({"_id": "LEGACY"}, {"$unset": {"admins": ""}})
    yield StaffUser("LEGACY", ALPHA_CLERK, WORLD_NON_ADMINS["ALPHA"][1])
    gateway_world.runtime.db.tenants.delete_one({"_id": "LEGACY"})


def test_legacy_tenant_has_no_admin(gateway_world, legacy_tenant, monkeypatch, capsys):
    """Nobody may change a record without administrators until the operator names one."""
    staff = gateway_world.sign_in_as(legacy_tenant)

    settings = staff[0].get("/api/settings").get_json()
    refused = _put_settings(staff, {"daily_limit": 1})
    monkeypatch.setattr(admin_command, "runtime_from_env", lambda: gateway_world.runtime)
    admin_command.main(["set-admins", "--cloud-id", "LEGACY", "--admin", legacy_tenant.username])
    allowed = _put_settings(staff, {"daily_limit": 1})

    assert settings["admins"] == []
    assert settings["is_admin"] is False
    assert refused.status_code == 403
    assert "no administrator yet" in refused.get_json()["message"]
    assert "set-admins --cloud-id LEGACY" in refused.get_json()["message"]
    assert f"administrators of 'LEGACY': {legacy_tenant.username}" in capsys.readouterr().out
    assert allowed.status_code == 200
    assert gateway_world.runtime.tenants.get("LEGACY").daily_limit == 1


# ------------------------------------------------------------------ OpenAPI and health


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def _api_operations(app) -> set[tuple[str, str]]:
    operations = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/"):
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                operations.add((method.lower(), _openapi_path(rule.rule)))
    return operations


@pytest.fixture(scope="module")
def openapi_spec(gateway_world) -> dict:
    response = gateway_world.client().get("/api/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def test_openapi_version(openapi_spec):
    assert openapi_spec["openapi"].startswith("3.")
    assert openapi_spec["info"]["title"]
    assert openapi_spec["info"]["version"]


def test_openapi_covers_routes(gateway_world, openapi_spec):
    documented = {(method, path) for path, item in openapi_spec["paths"].items() for method in item
                  if method in ("get", "put", "post", "delete", "patch")}

    served = _api_operations(gateway_world.app)

    undocumented = served - documented
    assert undocumented == set(), f"add these operations to OPERATIONS in services/gateway/openapi.py: {undocumented}"
    assert documented - served == set()


def test_openapi_structure(openapi_spec):
    schemas = openapi_spec["components"]["schemas"]
    for path, item in openapi_spec["paths"].items():
        for method, operation in item.items():
            declared = {parameter["name"] for parameter in operation.get("parameters", []) if parameter["in"] == "path"}
            assert declared == set(re.findall(r"{([^}]+)}", path)), f"{method} {path}"
            assert operation["responses"], f"{method} {path}"
    references = re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(openapi_spec))
    assert references
    assert [name for name in references if name not in schemas] == []


def test_openapi_validates(openapi_spec):
    """Validate with openapi-spec-validator where it is installed; it is not a dependency."""
    try:
        from openapi_spec_validator import validate
    except ImportError:
        validate = None

    if validate is not None:
        validate(openapi_spec)
    assert openapi_spec["paths"]


def test_healthz(gateway_world):
    response = gateway_world.client().get("/healthz")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
