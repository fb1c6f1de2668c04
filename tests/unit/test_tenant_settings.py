"""Who may change an organisation's settings, the administrator list's rules, and racing changes."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from libs.common.progress import DUE_AT_ONCE

from services.gateway.errors import Conflict, InvalidInput, NotAdministrator
from services.gateway.tenant_settings import MAX_ADMINS, change_settings, clean_admins, require_admin


@pytest.mark.parametrize("names, expected", [
    (["jsmith"], ("jsmith",)),
    ([" jsmith ", "MJones"], ("jsmith", "MJones")),
    (["a" * 200], ("a" * 200,)),
], ids=["one", "trimmed", "longest-name"])
def test_clean_admins_accepts(names, expected):
    assert clean_admins(names) == expected


@pytest.mark.parametrize("names, error", [
    ([], "keep at least one administrator"),
    (["jsmith", "  "], "empty"),
    (["a" * 201], "at most 200 characters"),
    (["jsmith", "JSMITH"], "'JSMITH' is listed twice"),
    ([f"user-{index}" for index in range(MAX_ADMINS + 1)], f"at most {MAX_ADMINS} administrators"),
], ids=["none", "empty-name", "long-name", "repeated", "too-many"])
def test_clean_admins_rejects(names, error):
    with pytest.raises(ValueError, match=error):
        clean_admins(names)


def test_non_admin_told_whom_to_ask(tenant_factory):
    tenant = tenant_factory(admins=("jsmith", "MJones"))

    with pytest.raises(NotAdministrator) as refused:
        require_admin(tenant, "kdoe")

    assert "Ask an administrator of your organisation (jsmith, MJones)" in refused.value.message
    assert refused.value.details == {"admins": ["jsmith", "MJones"]}
    assert refused.value.status == 403


def test_no_admin_yet_names_command(tenant_factory):
    tenant = tenant_factory(admins=())

    with pytest.raises(NotAdministrator) as refused:
        require_admin(tenant, "jsmith")

    assert "no administrator yet" in refused.value.message
    assert "set-admins --cloud-id ACME" in refused.value.message


def test_admin_passes_in_any_case(tenant_factory):
    require_admin(tenant_factory(admins=("jsmith",)), "JSmith")


class RemovedDuringChange:
    """The tenant repository, with an administrator removed between the check and the first write."""

    def __init__(self, tenants, remove: str):
        self._tenants = tenants
        self._remove = remove
        self.writes = 0

    def get(self, cloud_id):
        return self._tenants.get(cloud_id)

    def update(self, cloud_id, changes, *, expected_admins=None):
        self.writes += 1
        if self.writes == 1:
            remaining = tuple(name for name in self._tenants.get(cloud_id).admins if name != self._remove)
            self._tenants.set_admins(cloud_id, remaining)
        return self._tenants.update(cloud_id, changes, expected_admins=expected_admins)


def test_removal_during_change_wins(runtime, tenant_factory):
    tenant_factory(admins=("jsmith", "kdoe"))
    racing = RemovedDuringChange(runtime.tenants, remove="kdoe")

    with pytest.raises(NotAdministrator):
        change_settings(racing, "ACME", "kdoe", {"daily_limit": 10})

    assert racing.writes == 1
    assert runtime.tenants.get("ACME").daily_limit == 3000


def test_change_retried_after_unrelated_list_change(runtime, tenant_factory):
    tenant_factory(admins=("jsmith", "kdoe"))
    racing = RemovedDuringChange(runtime.tenants, remove="kdoe")

    tenant = change_settings(racing, "ACME", "jsmith", {"daily_limit": 10})

    assert racing.writes == 2
    assert tenant.daily_limit == 10
    assert runtime.tenants.get("ACME").admins == ("jsmith",)


class AlwaysChanging(RemovedDuringChange):
    """Another administrator rewrites the list before every write."""

    def update(self, cloud_id, changes, *, expected_admins=None):
        self.writes += 1
        self._tenants.set_admins(cloud_id, ("jsmith", f"temp-{self.writes}"))
        return self._tenants.update(cloud_id, changes, expected_admins=expected_admins)


def test_change_gives_up_with_conflict(runtime, tenant_factory):
    tenant_factory(admins=("jsmith",))

    with pytest.raises(Conflict, match="reload the page and save again"):
        change_settings(AlwaysChanging(runtime.tenants, remove=""), "ACME", "jsmith", {"daily_limit": 10})

    assert runtime.tenants.get("ACME").daily_limit == 3000


def _deferred_text(db, message_id: str, tenant_id: str) -> None:
    db.messages.insert_one({"_id": message_id, "tenant_id": tenant_id, "status": "deferred",
                            "deferred_until": datetime(2030, 1, 2, 5, tzinfo=timezone.utc)})


def test_raised_limit_wakes_deferred_texts(runtime, tenant_factory):
    tenant_factory(admins=("jsmith",), daily_limit=480)
    tenant_factory(cloud_id="OTHER", admins=("jsmith",), daily_limit=480)
    _deferred_text(runtime.db, "m1", "ACME")
    _deferred_text(runtime.db, "m2", "OTHER")

    change_settings(runtime.tenants, "ACME", "jsmith", {"daily_limit": 3000})

    woken = runtime.db.messages.find_one({"_id": "m1"})
    untouched = runtime.db.messages.find_one({"_id": "m2"})
    assert woken["deferred_until"].replace(tzinfo=timezone.utc) == DUE_AT_ONCE
    assert untouched["deferred_until"].replace(tzinfo=timezone.utc) == datetime(2030, 1, 2, 5, tzinfo=timezone.utc)


@pytest.mark.parametrize("new_limit", [480, 100])
def test_same_or_lower_limit_keeps_texts_deferred(runtime, tenant_factory, new_limit):
    tenant_factory(admins=("jsmith",), daily_limit=480)
    _deferred_text(runtime.db, "m1", "ACME")

    change_settings(runtime.tenants, "ACME", "jsmith", {"daily_limit": new_limit})

    kept = runtime.db.messages.find_one({"_id": "m1"})
    assert kept["deferred_until"].replace(tzinfo=timezone.utc) == datetime(2030, 1, 2, 5, tzinfo=timezone.utc)


@pytest.mark.parametrize("names", [["demo staff"], ["demo,staff"], ["demo\tstaff"]], ids=["space", "comma", "tab"])
def test_two_names_on_one_line_rejected(names):
    with pytest.raises(ValueError, match="put each administrator on a line of its own"):
        clean_admins(names)


def test_admin_cannot_remove_self(runtime, tenant_factory):
    tenant_factory(admins=("jsmith", "MJones"))

    with pytest.raises(InvalidInput, match="would remove you \\(jsmith\\)"):
        change_settings(runtime.tenants, "ACME", "jsmith", {"admins": ("MJones",)})

    assert runtime.tenants.get("ACME").admins == ("jsmith", "MJones")


def test_admin_removes_another(runtime, tenant_factory):
    tenant_factory(admins=("jsmith", "MJones"))

    updated = change_settings(runtime.tenants, "ACME", "JSMITH", {"admins": ("jsmith",)})

    assert updated.admins == ("jsmith",)
