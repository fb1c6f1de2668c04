"""Tenants: secrets encrypted at rest, hidden from repr and from the public view."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from libs.common.crypto import SecretBox, SecretError
from libs.common.tenants import SECRET_FIELDS, TenantChanged, TenantNotFound, TenantRepository
from tests.conftest import TEST_IMIS_PASSWORD, TEST_TWILIO_TOKEN

SECRETS = (TEST_IMIS_PASSWORD, TEST_TWILIO_TOKEN)


def test_round_trip(runtime, tenant_factory):
    saved = tenant_factory()

    assert runtime.tenants.get("ACME") == saved


def test_secrets_encrypted_at_rest(runtime, tenant_factory):
    tenant_factory()

    document = runtime.db.tenants.find_one({"_id": "ACME"})

    assert [name for name in SECRET_FIELDS if name in document] == []
    assert runtime.secrets.decrypt(document["imis_password_enc"]) == TEST_IMIS_PASSWORD
    assert runtime.secrets.decrypt(document["twilio_auth_token_enc"]) == TEST_TWILIO_TOKEN
    assert [secret for secret in SECRETS if secret in repr(document)] == []


def test_same_secret_encrypts_differently(runtime, tenant_factory):
    tenant_factory(cloud_id="ONE")
    tenant_factory(cloud_id="TWO")

    first = runtime.db.tenants.find_one({"_id": "ONE"})["imis_password_enc"]
    second = runtime.db.tenants.find_one({"_id": "TWO"})["imis_password_enc"]

    assert first != second


def test_empty_secret_stored_empty(runtime, tenant_factory):
    tenant_factory(twilio_auth_token="")

    assert runtime.db.tenants.find_one({"_id": "ACME"})["twilio_auth_token_enc"] == ""
    assert runtime.tenants.get("ACME").twilio_auth_token == ""


def test_repr_hides_secrets(tenant_factory):
    tenant = tenant_factory()

    for text in (repr(tenant), str(tenant)):
        assert [secret for secret in SECRETS if secret in text] == []
    assert "ACME" in repr(tenant)


def test_public_view(tenant_factory):
    view = tenant_factory(twilio_auth_token="").public_view()

    assert [name for name in SECRET_FIELDS if name in view] == []
    assert [secret for secret in SECRETS if secret in repr(view)] == []
    assert view["imis_password_set"] is True
    assert view["twilio_auth_token_set"] is False
    assert view["cloud_id"] == "ACME"


def test_update_keeps_empty_secret(runtime, tenant_factory):
    tenant_factory()

    updated = runtime.tenants.update("ACME", {"imis_password": "", "twilio_auth_token": "new-token-93ad"})

    assert updated.imis_password == TEST_IMIS_PASSWORD
    assert runtime.tenants.get("ACME").twilio_auth_token == "new-token-93ad"


def test_update_ignores_unknown_and_cloud_id(runtime, tenant_factory):
    tenant_factory()

    updated = runtime.tenants.update("ACME", {"cloud_id": "EVIL", "is_admin": True, "name": "Acme Guild"})

    assert updated.cloud_id == "ACME"
    assert updated.name == "Acme Guild"
    assert runtime.db.tenants.count_documents({}) == 1


def test_unknown_cloud_id(runtime):
    with pytest.raises(TenantNotFound):
        runtime.tenants.get("NOBODY")


def test_other_key_cannot_decrypt(runtime, tenant_factory):
    tenant_factory()
    other = TenantRepository(runtime.db, SecretBox(Fernet.generate_key().decode()))

    with pytest.raises(SecretError, match="TM_SECRET_KEY"):
        other.get("ACME")


def test_invalid_key_names_variable():
    with pytest.raises(SecretError, match="TM_SECRET_KEY"):
        SecretBox("not a fernet key")


def test_admins_round_trip(runtime, tenant_factory):
    saved = tenant_factory(admins=("jsmith", "MJones"))

    loaded = runtime.tenants.get("ACME")

    assert loaded == saved
    assert loaded.admins == ("jsmith", "MJones")
    assert runtime.db.tenants.find_one({"_id": "ACME"})["admins"] == ["jsmith", "MJones"]


def test_record_without_admins(runtime, tenant_factory):
    """A record written before administrators existed has none, and nobody is one."""
    tenant_factory(admins=("jsmith",))
    runtime.db.tenants.update_one({"_id": "ACME"}, {"$unset": {"admins": ""}})

    tenant = runtime.tenants.get("ACME")

    assert tenant.admins == ()
    assert not tenant.is_admin("jsmith")


@pytest.mark.parametrize("username, expected", [("jsmith", True), ("JSmith", True), ("jsmith2", False), ("", False)])
def test_is_admin_ignores_case(tenant_factory, username, expected):
    assert tenant_factory(admins=("jsmith",)).is_admin(username) is expected


def test_update_with_expected_admins(runtime, tenant_factory):
    tenant_factory(admins=("jsmith",))

    updated = runtime.tenants.update("ACME", {"daily_limit": 10, "admins": ["jsmith", "kdoe"]},
                                     expected_admins=("jsmith",))

    assert updated.admins == ("jsmith", "kdoe")
    assert runtime.tenants.get("ACME").admins == ("jsmith", "kdoe")


def test_update_after_admins_changed(runtime, tenant_factory):
    """A change checked against an older administrator list is not written."""
    tenant_factory(admins=("jsmith", "kdoe"))
    runtime.tenants.set_admins("ACME", ("jsmith",))

    with pytest.raises(TenantChanged):
        runtime.tenants.update("ACME", {"daily_limit": 10}, expected_admins=("jsmith", "kdoe"))

    assert runtime.tenants.get("ACME").daily_limit == 3000


def test_set_admins_unknown_cloud_id(runtime):
    with pytest.raises(TenantNotFound):
        runtime.tenants.set_admins("NOBODY", ("jsmith",))
