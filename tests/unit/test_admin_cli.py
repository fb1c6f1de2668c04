"""The operator command that adds an organisation."""

import pytest

from libs.common.imis import ImisAuthError
from services.gateway import admin

ARGS = ["add-tenant", "--cloud-id", "NEWORG", "--name", "New Org", "--imis-url", "http://imis.invalid",
        "--imis-user", "svc", "--twilio-sid", "AC" + "12" * 16, "--sender", "+18885550123",
        "--email", "admin@new.example"]


class AcceptingImis:
    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def get_token(self, username, password):
        if password != "svc-password":
            raise ImisAuthError("The user name or password is incorrect.")
        return "token"


@pytest.fixture
def cli(runtime, monkeypatch):
    monkeypatch.setattr(admin, "runtime_from_env", lambda: runtime)
    monkeypatch.setattr(admin, "ImisClient", AcceptingImis)
    monkeypatch.setenv("TM_NEW_IMIS_PASSWORD", "svc-password")
    monkeypatch.setenv("TM_NEW_TWILIO_AUTH_TOKEN", "twilio-token")
    return runtime


def test_add_tenant_stores_encrypted_secrets(cli):
    assert admin.main(ARGS) == 0

    tenant = cli.tenants.get("NEWORG")
    stored = cli.db.tenants.find_one({"_id": "NEWORG"})
    assert tenant.imis_password == "svc-password"
    assert tenant.twilio_auth_token == "twilio-token"
    assert "svc-password" not in str(stored)


def test_add_tenant_refuses_existing(cli):
    admin.main(ARGS)

    with pytest.raises(SystemExit) as raised:
        admin.main(ARGS)

    assert "already exists" in str(raised.value)


def test_add_tenant_checks_imis_account(cli, monkeypatch):
    monkeypatch.setenv("TM_NEW_IMIS_PASSWORD", "wrong")

    with pytest.raises(SystemExit) as raised:
        admin.main(ARGS)

    assert "did not accept" in str(raised.value)
    assert cli.db.tenants.count_documents({"_id": "NEWORG"}) == 0


def test_add_tenant_needs_secret_in_environment(cli, monkeypatch):
    monkeypatch.delenv("TM_NEW_TWILIO_AUTH_TOKEN")
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)

    with pytest.raises(SystemExit) as raised:
        admin.main(ARGS)

    assert "TM_NEW_TWILIO_AUTH_TOKEN" in str(raised.value)
