"""Settings changes that could leak a secret, lock staff out or damage the stored tenant."""

import pytest

from tests.integration.conftest import WORLD_TENANTS, closed_port_url

ALPHA_SERVICE_PASSWORD = WORLD_TENANTS[0][4]


@pytest.fixture
def alpha(gateway_world):
    return gateway_world.sign_in("ALPHA")


def put_settings(alpha, body):
    client, csrf = alpha
    return client.put("/api/settings", json=body, headers={"X-CSRF-Token": csrf})


def test_imis_address_change_needs_password(alpha):
    response = put_settings(alpha, {"imis_base_url": "http://127.0.0.1:9/"})

    assert response.status_code == 422
    assert "imis_password" in response.get_json()["details"]["fields"]


def test_twilio_sid_change_needs_token(alpha):
    response = put_settings(alpha, {"twilio_account_sid": "AC" + "ab" * 16})

    assert response.status_code == 422
    assert "twilio_auth_token" in response.get_json()["details"]["fields"]


def test_unreachable_imis_address_not_saved(gateway_world, alpha):
    before = gateway_world.runtime.tenants.get("ALPHA").imis_base_url

    response = put_settings(alpha, {"imis_base_url": closed_port_url(), "imis_password": ALPHA_SERVICE_PASSWORD})

    assert response.status_code == 422
    assert "cannot be reached" in response.get_json()["message"]
    assert gateway_world.runtime.tenants.get("ALPHA").imis_base_url == before


def test_wrong_imis_password_not_saved(gateway_world, alpha):
    response = put_settings(alpha, {"imis_password": "not-the-password"})

    assert response.status_code == 422
    assert gateway_world.runtime.tenants.get("ALPHA").imis_password == ALPHA_SERVICE_PASSWORD


def test_admin_list_kept_when_imis_rejects(gateway_world, alpha):
    """A request that changes the administrators and a rejected iMIS password changes neither."""
    before = gateway_world.runtime.tenants.get("ALPHA")

    response = put_settings(alpha, {"admins": ["someone-else"], "imis_password": "not-the-password"})

    after = gateway_world.runtime.tenants.get("ALPHA")
    assert response.status_code == 422
    assert after.admins == before.admins
    assert after.imis_password == ALPHA_SERVICE_PASSWORD


def test_non_admin_cannot_repoint_imis(gateway_world):
    """A staff member who is no administrator cannot send the service password to another address."""
    clerk = gateway_world.sign_in_non_admin("ALPHA")
    requests_before = len(gateway_world.imis.request_log())

    response = put_settings(clerk, {"imis_base_url": closed_port_url(), "imis_password": "any"})

    assert response.status_code == 403
    assert gateway_world.runtime.tenants.get("ALPHA").imis_base_url == gateway_world.imis.url
    assert len(gateway_world.imis.request_log()) == requests_before


@pytest.mark.parametrize("body", [
    {"daily_limit": 10 ** 30},
    {"run_segment_limit": 10 ** 30},
    {"daily_limit": 1.5},
    {"daily_limit": "300"},
])
def test_out_of_range_limit_rejected(gateway_world, alpha, body):
    response = put_settings(alpha, body)

    assert response.status_code == 422
    assert gateway_world.runtime.tenants.get("ALPHA").daily_limit == 3000


def test_limit_change_keeps_other_settings(gateway_world, alpha):
    response = put_settings(alpha, {"daily_limit": 2500})

    tenant = gateway_world.runtime.tenants.get("ALPHA")
    assert response.status_code == 200
    assert tenant.daily_limit == 2500
    assert tenant.imis_password == ALPHA_SERVICE_PASSWORD
    put_settings(alpha, {"daily_limit": 3000})


def test_oversized_body_is_413(alpha):
    client, csrf = alpha

    response = client.post("/api/texts/measure", data=b'{"body": "' + b"a" * 300_000 + b'"}',
                           headers={"X-CSRF-Token": csrf, "Content-Type": "application/json"})

    assert response.status_code == 413


def test_resend_needs_confirmation(gateway_world, alpha):
    client, csrf = alpha
    headers = {"X-CSRF-Token": csrf}
    campaign = client.post("/api/campaigns", headers=headers, json={
        "name": "Renewals", "body": "Renew today", "iqa_path": "$/TextManager/Demo Members"}).get_json()
    client.post(f"/api/campaigns/{campaign['id']}/send", headers=headers)
    gateway_world.process_due_runs()
    client.post(f"/api/campaigns/{campaign['id']}/cancel", headers=headers)
    # No sender runs here: count one text as sent before the cancel, as a sender would have.
    gateway_world.runtime.db.runs.update_one({"campaign_id": campaign["id"]}, {"$set": {"counts.sent": 1}})

    unconfirmed = client.post(f"/api/campaigns/{campaign['id']}/send", headers=headers)
    confirmed = client.post(f"/api/campaigns/{campaign['id']}/send", headers=headers, json={"resend": True})

    assert unconfirmed.status_code == 409
    assert '"resend": true' in unconfirmed.get_json()["message"]
    assert confirmed.status_code == 202
