"""Organisation settings: who may change them, and changing them without locking staff out."""

from __future__ import annotations

import logging

from libs.common.imis import ImisAuthError, ImisClient, ImisError
from libs.common.progress import wake_deferred
from libs.common.tenants import Tenant, TenantChanged, TenantRepository
from services.gateway.errors import Conflict, InvalidInput, NotAdministrator

logger = logging.getLogger(__name__)

MAX_ADMINS = 100
MAX_USERNAME_CHARS = 200
IMIS_ACCOUNT_FIELDS = {"imis_base_url", "imis_username", "imis_password"}
# A change is written only while the administrator list is as it was checked. When
# another administrator changes the list meanwhile, the change is checked again.
WRITE_ATTEMPTS = 3
SET_ADMINS_COMMAND = "python -m services.gateway.admin set-admins --cloud-id {cloud_id} --admin USERNAME"


def clean_admins(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Return the administrators' iMIS user names without surrounding spaces.

    Raises ValueError, with what to fix, for an empty list or more than MAX_ADMINS names.
    It does the same for an empty or overlong name, a name with a space or comma in it
    (two names on one line), and a name listed twice (iMIS user names ignore case).
    """
    cleaned = tuple(name.strip() for name in names)
    if not cleaned:
        raise ValueError("keep at least one administrator: without one, nobody can change the settings")
    if len(cleaned) > MAX_ADMINS:
        raise ValueError(f"name at most {MAX_ADMINS} administrators, not {len(cleaned)}")
    seen: set[str] = set()
    for name in cleaned:
        if not name:
            raise ValueError("an administrator's user name is empty: remove the empty entry")
        if any(char.isspace() or char == "," for char in name):
            raise ValueError(f"{name!r} is not one user name: put each administrator on a line of its own")
        if len(name) > MAX_USERNAME_CHARS:
            raise ValueError(f"an iMIS user name has at most {MAX_USERNAME_CHARS} characters: {name[:40]!r}… is longer")
        if name.casefold() in seen:
            raise ValueError(f"{name!r} is listed twice: list each administrator once")
        seen.add(name.casefold())
    return cleaned


def require_admin(tenant: Tenant, username: str) -> None:
    """Raise NotAdministrator, naming who can make the change, unless the user is an administrator."""
    if tenant.is_admin(username):
        return
    if not tenant.admins:
        raise NotAdministrator(
            "Your organisation has no administrator yet, so nobody can change its settings here. Ask your "
            f"Text Manager operator to name one with: {SET_ADMINS_COMMAND.format(cloud_id=tenant.cloud_id)}",
            {"admins": []})
    raise NotAdministrator(
        "Only administrators can change the organisation's settings. Ask an administrator of your organisation "
        f"({', '.join(tenant.admins)}) to make the change, or to add you as an administrator.",
        {"admins": list(tenant.admins)})


def change_settings(tenants: TenantRepository, tenant_id: str, username: str, changes: dict) -> Tenant:
    """Apply an administrator's changes; return the tenant.

    The user is checked against the stored administrator list, so removing an
    administrator takes effect at once. A raised daily limit sends the texts it held
    back at the scheduler's next tick. Raises NotAdministrator, InvalidInput when iMIS
    does not accept the service account as it would be saved, and Conflict when the
    administrator list keeps changing meanwhile.
    """
    for _ in range(WRITE_ATTEMPTS):
        tenant = tenants.get(tenant_id)
        require_admin(tenant, username)
        if "admins" in changes:
            check_not_leaving(username, changes["admins"])
        if IMIS_ACCOUNT_FIELDS & set(changes):
            check_imis_account(tenant, changes)
        try:
            updated = tenants.update(tenant_id, changes, expected_admins=tenant.admins)
        except TenantChanged:
            continue
        if updated.daily_limit > tenant.daily_limit:
            woken = wake_deferred(tenants.database, tenant_id)
            if woken:
                logger.info("daily limit raised from %s to %s; %s deferred texts go out now",
                            tenant.daily_limit, updated.daily_limit, woken)
        return updated
    raise Conflict("the administrator list changed while the settings were saved: reload the page and save again")


def check_not_leaving(username: str, admins: tuple[str, ...] | list[str]) -> None:
    """Raise InvalidInput when the new administrator list leaves out the administrator saving it.

    A typing slip would otherwise lock them out of the settings, and only the operator
    could undo it. Another administrator can still remove them.
    """
    if username.casefold() in {name.casefold() for name in admins}:
        return
    raise InvalidInput(
        f"This change would remove you ({username}) from the administrators, and you could not change the "
        "settings afterwards. Keep your name in the list; to step down, ask another administrator to remove you.",
        {"fields": {"admins": ["would remove you"]}})


def check_imis_account(tenant: Tenant, changes: dict) -> None:
    """Raise InvalidInput unless iMIS accepts the service account as it would be saved.

    Staff sign in against the stored iMIS address, so saving a wrong one would lock
    every staff member out.
    """
    base_url = changes.get("imis_base_url", tenant.imis_base_url)
    username = changes.get("imis_username", tenant.imis_username)
    password = changes.get("imis_password") or tenant.imis_password
    try:
        with ImisClient(base_url, timeout_s=10.0, max_retries=1) as client:
            client.get_token(username, password)
    except ImisAuthError:
        raise InvalidInput(f"iMIS at {base_url} did not accept the service account {username!r}: "
                           "check the user name and password", {"fields": {"imis_password": ["not accepted"]}}) from None
    except ImisError as error:
        raise InvalidInput(f"iMIS at {base_url} cannot be reached ({error.message}): check the address",
                           {"fields": {"imis_base_url": ["not reachable"]}}) from None
