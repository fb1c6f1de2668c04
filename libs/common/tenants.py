"""Tenants (one organisation each, keyed by Cloud ID) and their encrypted secrets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone

from pymongo.database import Database

from libs.common.crypto import SecretBox
from libs.common.imis_log import DEFAULT_TEXT_LOG_MODE

SECRET_FIELDS = ("imis_password", "twilio_auth_token")


class TenantNotFound(LookupError):
    """No tenant has this Cloud ID."""


class TenantChanged(RuntimeError):
    """The tenant's administrator list changed between reading it and writing a change."""


@dataclass(frozen=True)
class Tenant:
    """One organisation's configuration, with its secrets decrypted.

    `repr` leaves the secrets out so that a logged tenant never shows them.
    """

    cloud_id: str
    name: str
    imis_base_url: str
    imis_username: str
    twilio_account_sid: str
    sender_number: str
    imis_password: str = field(default="", repr=False)
    twilio_auth_token: str = field(default="", repr=False)
    messaging_service_sid: str = ""
    sender_kind: str = "toll-free"
    sender_rate_sps: float = 3.0
    default_country: str = "US"
    default_email: str = ""
    timezone: str = "America/New_York"
    daily_limit: int = 3000
    run_segment_limit: int = 10000
    # How each sent text is logged in iMIS: "interaction", "activity" (TEXTMSG) or "off".
    imis_text_log: str = DEFAULT_TEXT_LOG_MODE
    # iMIS user names of the staff who may change these settings. Empty in a record
    # written before administrators existed: nobody may change settings until an
    # operator names one.
    admins: tuple[str, ...] = ()

    def is_admin(self, username: str) -> bool:
        """Return whether the iMIS user is an administrator, ignoring case as iMIS logons do."""
        return username.casefold() in {admin.casefold() for admin in self.admins}

    def public_view(self) -> dict:
        """Return the settings staff may see: secrets only as whether they are set."""
        view = {key: value for key, value in asdict(self).items() if key not in SECRET_FIELDS}
        for secret in SECRET_FIELDS:
            view[f"{secret}_set"] = bool(getattr(self, secret))
        return view


TENANT_FIELDS = tuple(f.name for f in fields(Tenant))


class TenantRepository:
    """Store and load tenants, encrypting secrets on the way in."""

    def __init__(self, db: Database, secrets: SecretBox):
        self._collection = db.tenants
        self._secrets = secrets

    @property
    def database(self) -> Database:
        """The database that contains the tenants, for changes that follow a tenant's."""
        return self._collection.database

    def get(self, cloud_id: str) -> Tenant:
        """Return the tenant; raise TenantNotFound when the Cloud ID is unknown."""
        document = self._collection.find_one({"_id": cloud_id})
        if document is None:
            raise TenantNotFound(cloud_id)
        return self._from_document(document)

    def save(self, tenant: Tenant) -> None:
        """Insert or replace the tenant, secrets encrypted."""
        document = {"_id": tenant.cloud_id, "updated_at": datetime.now(timezone.utc)}
        for name in TENANT_FIELDS:
            value = getattr(tenant, name)
            if name in SECRET_FIELDS:
                document[f"{name}_enc"] = self._secrets.encrypt(value) if value else ""
            else:
                document[name] = _stored(value)
        self._collection.replace_one({"_id": tenant.cloud_id}, document, upsert=True)

    def update(self, cloud_id: str, changes: dict, *, expected_admins: tuple[str, ...] | None = None) -> Tenant:
        """Apply changes (unknown keys ignored, empty secrets left as they were); return the tenant.

        With `expected_admins`, the write happens only while the stored administrator
        list still equals it, so a change checked against that list cannot land after
        an administrator was removed. When the list differs, it raises TenantChanged.
        """
        tenant = self.get(cloud_id)
        allowed = {
            key: value for key, value in changes.items()
            if key in TENANT_FIELDS and key != "cloud_id" and not (key in SECRET_FIELDS and not value)
        }
        if "admins" in allowed:
            allowed["admins"] = tuple(allowed["admins"])
        updated = replace(tenant, **allowed)
        changes = {"updated_at": datetime.now(timezone.utc)}
        for name, value in allowed.items():
            if name in SECRET_FIELDS:
                changes[f"{name}_enc"] = self._secrets.encrypt(value)
            else:
                changes[name] = _stored(value)
        # Only the changed fields are written, so a value the store rejects leaves the rest intact.
        selector = {"_id": cloud_id}
        if expected_admins is not None:
            selector["admins"] = list(expected_admins)
        if self._collection.update_one(selector, {"$set": changes}).matched_count == 0:
            raise TenantChanged(cloud_id) if expected_admins is not None else TenantNotFound(cloud_id)
        return updated

    def set_admins(self, cloud_id: str, admins: tuple[str, ...]) -> Tenant:
        """Replace the administrator list, whatever it was; return the tenant.

        For the operator, who may also need to name the first administrator of a record
        that has none. Raises TenantNotFound when the Cloud ID is unknown.
        """
        result = self._collection.update_one({"_id": cloud_id}, {"$set": {
            "admins": list(admins), "updated_at": datetime.now(timezone.utc)}})
        if result.matched_count == 0:
            raise TenantNotFound(cloud_id)
        return self.get(cloud_id)

    def _from_document(self, document: dict) -> Tenant:
        values = {name: document[name] for name in TENANT_FIELDS if name in document}
        if "admins" in values:
            values["admins"] = tuple(values["admins"])
        for secret in SECRET_FIELDS:
            stored = document.get(f"{secret}_enc", "")
            values[secret] = self._secrets.decrypt(stored) if stored else ""
        return Tenant(**values)


def _stored(value: object) -> object:
    """Return the value as the store keeps it: a tuple becomes a list."""
    return list(value) if isinstance(value, tuple) else value
