"""The operator commands that add an organisation and name its administrators."""

import pytest

from libs.common.imis import ImisAuthError
from services.gateway import admin

ARGS = ["add-tenant", "--cloud-id", "NEWORG", "--name", "New Org", "--imis-url", "http://imis.invalid",
        "--imis-user", "svc", "--twilio-sid", "AC" + "12" * 16, "--sender", "+18885550123",
        "--email", "admin@new.example", "--admin", "jsmith", "--admin", " MJones "]


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


def test_add_tenant_stores_admins(cli):
    admin.main(ARGS)

    tenant = cli.tenants.get("NEWORG")
    assert tenant.admins == ("jsmith", "MJones")
    assert tenant.is_admin("mjones")


def test_add_tenant_needs_admin(cli, capsys):
    without_admins = ARGS[:ARGS.index("--admin")]

    with pytest.raises(SystemExit) as raised:
        admin.main(without_admins)

    assert raised.value.code == 2
    assert "--admin" in capsys.readouterr().err
    assert cli.db.tenants.count_documents({"_id": "NEWORG"}) == 0


def test_add_tenant_rejects_repeated_admin(cli):
    with pytest.raises(SystemExit) as raised:
        admin.main(ARGS + ["--admin", "JSMITH"])

    assert "'JSMITH' is listed twice" in str(raised.value)
    assert cli.db.tenants.count_documents({"_id": "NEWORG"}) == 0


def test_set_admins_names_first_admin(cli, tenant_factory, capsys):
    """A record written before administrators existed gets its first one."""
    tenant_factory(cloud_id="OLDORG")
    cli.db.tenants.update_one({"_id": "OLDORG"}, {"$unset": {"admins": ""}})

    code = admin.main(["set-admins", "--cloud-id", "OLDORG", "--admin", "ksato"])

    assert code == 0
    assert cli.tenants.get("OLDORG").admins == ("ksato",)
    assert "(before: none)" in capsys.readouterr().out


def test_set_admins_replaces_list(cli, tenant_factory):
    tenant_factory(cloud_id="OLDORG", admins=("ksato", "lfranz"))

    admin.main(["set-admins", "--cloud-id", "OLDORG", "--admin", "lfranz", "--admin", "mhill"])

    assert cli.tenants.get("OLDORG").admins == ("lfranz", "mhill")


def test_set_admins_unknown_cloud_id(cli):
    with pytest.raises(SystemExit) as raised:
        admin.main(["set-admins", "--cloud-id", "NOSUCH", "--admin", "ksato"])

    assert "no organisation has the Cloud ID 'NOSUCH'" in str(raised.value)
    assert cli.db.tenants.count_documents({}) == 0


def test_set_admins_rejects_empty_name(cli, tenant_factory):
    tenant_factory(cloud_id="OLDORG", admins=("ksato",))

    with pytest.raises(SystemExit) as raised:
        admin.main(["set-admins", "--cloud-id", "OLDORG", "--admin", "  "])

    assert "empty" in str(raised.value)
    assert cli.tenants.get("OLDORG").admins == ("ksato",)
