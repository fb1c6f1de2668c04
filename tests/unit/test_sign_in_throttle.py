"""Sign-in throttling: counters in the store, the 429 response, and the client address behind proxies.

iMIS is replaced by a fake that records each token request, and time by the FakeClock.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from libs.common.imis import ImisAuthError, ImisUnavailable
from services.gateway import auth
from services.gateway.app import create_app
from services.gateway.errors import TooManySignIns
from services.gateway.throttle import SignInThrottle

MAX_FAILURES = 4
ADDRESS_MAX_FAILURES = 10
LOCKOUT_MINUTES = 15
LOCKOUT_S = LOCKOUT_MINUTES * 60
PASSWORDS = {"alice": "alice-pass-7f2c", "bob": "bob-pass-19ad"}


@pytest.fixture
def throttle(runtime) -> SignInThrottle:
    return SignInThrottle(runtime.db, key=b"unit-test-throttle-key", clock=runtime.clock, max_failures=MAX_FAILURES,
                          address_max_failures=ADDRESS_MAX_FAILURES, lockout_minutes=LOCKOUT_MINUTES)


def fail(throttle: SignInThrottle, times: int, *, cloud_id: str = "ACME", username: str = "alice",
         address: str = "198.51.100.7") -> TooManySignIns | None:
    """Record `times` failed attempts; return what the last one returned."""
    locked = None
    for _ in range(times):
        locked = throttle.begin(cloud_id, username, address).failed()
    return locked


# ------------------------------------------------------------------ the counters


def test_below_limit_not_locked(throttle):
    assert fail(throttle, MAX_FAILURES - 1) is None

    throttle.begin("ACME", "alice", "198.51.100.7")


def test_limit_locks_account(throttle):
    locked = fail(throttle, MAX_FAILURES)

    with pytest.raises(TooManySignIns) as refused:
        throttle.begin("ACME", "alice", "198.51.100.7")

    assert locked is not None
    assert locked.retry_after_s == LOCKOUT_S
    assert refused.value.retry_after_s == LOCKOUT_S
    assert refused.value.details["locked"] == "account"


def test_lock_ends_after_lockout(runtime, throttle):
    fail(throttle, MAX_FAILURES)

    runtime.clock.advance(LOCKOUT_S - 60)
    with pytest.raises(TooManySignIns) as refused:
        throttle.begin("ACME", "alice", "198.51.100.7")
    runtime.clock.advance(61)
    attempt = throttle.begin("ACME", "alice", "198.51.100.7")

    assert refused.value.retry_after_s == 60
    assert attempt.failed() is None


def test_old_failures_expire(runtime, throttle):
    fail(throttle, MAX_FAILURES - 1)

    runtime.clock.advance(LOCKOUT_S + 1)

    assert fail(throttle, MAX_FAILURES - 1) is None


def test_success_resets_account(throttle):
    fail(throttle, MAX_FAILURES - 1)

    throttle.begin("ACME", "alice", "198.51.100.7").succeeded()

    assert fail(throttle, MAX_FAILURES - 1) is None


def test_withdrawn_attempt_not_counted(throttle):
    for _ in range(MAX_FAILURES * 2):
        throttle.begin("ACME", "alice", "198.51.100.7").withdrawn()

    assert fail(throttle, MAX_FAILURES - 1) is None


def test_user_name_case_ignored(throttle):
    fail(throttle, MAX_FAILURES - 1, username="Alice")

    locked = fail(throttle, 1, username="ALICE")

    assert locked is not None


@pytest.mark.parametrize("variant", ["alice ", " alice", "\talice\n", " ALICE "])
def test_user_name_spaces_ignored(throttle, variant):
    fail(throttle, MAX_FAILURES - 1, username="alice")

    locked = fail(throttle, 1, username=variant)

    assert locked is not None


def test_cloud_id_spaces_ignored(throttle):
    fail(throttle, MAX_FAILURES - 1, cloud_id="ACME")

    locked = fail(throttle, 1, cloud_id=" ACME ")

    assert locked is not None


def test_accounts_counted_apart(throttle):
    """The same user name in another organisation, or another user, has a counter of its own."""
    fail(throttle, MAX_FAILURES)

    throttle.begin("OTHER", "alice", "198.51.100.7")
    throttle.begin("ACME", "bob", "198.51.100.7")


def test_attempts_in_flight_count(throttle):
    """Concurrent attempts cannot pass the limit together: each is counted before iMIS is asked."""
    in_flight = [throttle.begin("ACME", "alice", "198.51.100.7") for _ in range(MAX_FAILURES)]

    with pytest.raises(TooManySignIns):
        throttle.begin("ACME", "alice", "198.51.100.7")
    for attempt in in_flight:
        attempt.withdrawn()
    throttle.begin("ACME", "alice", "198.51.100.7")


def test_address_locks_across_users(throttle):
    for index in range(ADDRESS_MAX_FAILURES):
        fail(throttle, 1, username=f"user-{index}")

    with pytest.raises(TooManySignIns) as refused:
        throttle.begin("ACME", "someone-new", "198.51.100.7")
    throttle.begin("ACME", "someone-new", "203.0.113.20")

    assert refused.value.details["locked"] == "address"


def test_success_keeps_address_failures(throttle):
    for index in range(ADDRESS_MAX_FAILURES - 1):
        fail(throttle, 1, username=f"user-{index}")

    throttle.begin("ACME", "alice", "198.51.100.7").succeeded()
    locked = fail(throttle, 1, username="user-last")

    assert locked is not None
    assert locked.details["locked"] == "address"


def test_store_keeps_no_names(runtime, throttle):
    """A password typed into the user name field must not end up in the store."""
    fail(throttle, MAX_FAILURES, username="Secret-Typed-As-Name", address="198.51.100.7")

    stored = json.dumps(list(runtime.db.sign_in_failures.find()), default=str)

    assert "Secret-Typed-As-Name".casefold() not in stored.casefold()
    assert "198.51.100.7" not in stored
    assert "ACME" not in stored


def test_lock_message(runtime, throttle):
    locked = fail(throttle, MAX_FAILURES)

    assert locked.message.startswith("Too many failed sign-ins with this user name and Cloud ID: try again in "
                                     "15 minutes, after 00:15 UTC.")
    assert "reset it in iMIS" in locked.message
    assert locked.headers() == {"Retry-After": str(LOCKOUT_S)}


def test_lock_message_rounds_time_up(runtime, throttle):
    runtime.clock.advance(20)

    locked = fail(throttle, MAX_FAILURES)

    assert "after 00:16 UTC" in locked.message


# ------------------------------------------------------------------ POST /api/session


class FakeImis:
    """Stands in for ImisClient: accepts PASSWORDS, records every token request."""

    requests: list[str] = []
    unavailable = False

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def get_token(self, username: str, password: str) -> str:
        FakeImis.requests.append(username)
        if FakeImis.unavailable:
            raise ImisUnavailable("iMIS returned 503")
        if PASSWORDS.get(username) != password:
            raise ImisAuthError("The user name or password is incorrect.")
        return "token"


@pytest.fixture
def fake_imis(monkeypatch):
    monkeypatch.setattr(auth, "ImisClient", FakeImis)
    monkeypatch.setattr(FakeImis, "requests", [])
    monkeypatch.setattr(FakeImis, "unavailable", False)
    return FakeImis


def build_client(runtime, tenant_factory, **settings):
    tenant_factory(admins=("alice",))
    runtime.settings = dataclasses.replace(runtime.settings, sign_in_max_failures=MAX_FAILURES,
                                           sign_in_address_max_failures=ADDRESS_MAX_FAILURES,
                                           sign_in_lockout_minutes=LOCKOUT_MINUTES, **settings)
    return create_app(runtime).test_client()


@pytest.fixture
def client(runtime, tenant_factory, fake_imis):
    return build_client(runtime, tenant_factory)


def post_session(client, username: str, password: str, address: str = "198.51.100.7", **headers):
    return client.post("/api/session", json={"username": username, "password": password, "cloud_id": "ACME"},
                       environ_base={"REMOTE_ADDR": address}, headers=headers)


def test_locked_sign_in_answers_429(client, fake_imis):
    statuses = [post_session(client, "alice", "wrong").status_code for _ in range(MAX_FAILURES)]
    asked_before = len(fake_imis.requests)

    locked = post_session(client, "alice", PASSWORDS["alice"])

    body = locked.get_json()
    assert statuses == [401] * (MAX_FAILURES - 1) + [429]
    assert locked.status_code == 429
    assert locked.headers["Retry-After"] == str(LOCKOUT_S)
    assert body["error"] == "too_many_sign_ins"
    assert "try again in 15 minutes" in body["message"]
    assert "reset it in iMIS" in body["message"]
    assert body["details"]["retry_after_s"] == LOCKOUT_S
    assert len(fake_imis.requests) == asked_before
    assert "tm_session" not in locked.headers.get("Set-Cookie", "")


def test_sign_in_works_after_lockout(runtime, client):
    for _ in range(MAX_FAILURES):
        post_session(client, "alice", "wrong")

    runtime.clock.advance(LOCKOUT_S)

    assert post_session(client, "alice", PASSWORDS["alice"]).status_code == 201


def test_unknown_user_answered_alike(client):
    """The responses do not reveal whether a user name exists in iMIS."""
    known = [post_session(client, "alice", "wrong").get_json() for _ in range(MAX_FAILURES + 1)]
    unknown = [post_session(client, "nobody-here", "wrong").get_json() for _ in range(MAX_FAILURES + 1)]

    assert known == unknown


def test_success_resets_count(client):
    for _ in range(MAX_FAILURES - 1):
        post_session(client, "alice", "wrong")

    signed_in = post_session(client, "alice", PASSWORDS["alice"])
    again = [post_session(client, "alice", "wrong").status_code for _ in range(MAX_FAILURES - 1)]

    assert signed_in.status_code == 201
    assert again == [401] * (MAX_FAILURES - 1)


def test_imis_down_not_counted(client, fake_imis):
    fake_imis.unavailable = True
    statuses = [post_session(client, "alice", "wrong").status_code for _ in range(MAX_FAILURES + 2)]
    fake_imis.unavailable = False

    assert statuses == [502] * (MAX_FAILURES + 2)
    assert post_session(client, "alice", PASSWORDS["alice"]).status_code == 201


def test_unknown_cloud_id_counted(client):
    responses = [client.post("/api/session", json={"username": "alice", "password": "x", "cloud_id": "NOPE"})
                 for _ in range(MAX_FAILURES)]

    assert [response.status_code for response in responses] == [401] * (MAX_FAILURES - 1) + [429]


def post_sign_in(client, username: str, password: str, cloud_id: str):
    return client.post("/api/session", json={"username": username, "password": password, "cloud_id": cloud_id},
                       environ_base={"REMOTE_ADDR": "198.51.100.7"})


def test_trailing_space_shares_lock(client, fake_imis):
    """Once "alice" is locked, "alice " is locked too and never reaches iMIS."""
    for _ in range(MAX_FAILURES):
        post_session(client, "alice", "wrong")
    asked_before = len(fake_imis.requests)

    variants = [post_session(client, name, PASSWORDS["alice"]) for name in ("alice ", " Alice", "ALICE\t")]

    assert [response.status_code for response in variants] == [429, 429, 429]
    assert len(fake_imis.requests) == asked_before


def test_imis_gets_trimmed_user_name(client, fake_imis):
    response = post_session(client, "  alice ", PASSWORDS["alice"])

    assert response.status_code == 201
    assert fake_imis.requests == ["alice"]
    assert response.get_json()["username"] == "alice"
    assert response.get_json()["is_admin"] is True


def test_unknown_cloud_id_answered_like_wrong_password(client, fake_imis):
    """The responses do not reveal which Cloud IDs exist."""
    wrong_password = post_sign_in(client, "alice", "wrong", "ACME")
    unknown_cloud_ids = [post_sign_in(client, "bob", "wrong", cloud_id) for cloud_id in ("NOPE", "acme", "ACME2")]

    assert wrong_password.status_code == 401
    for response in unknown_cloud_ids:
        assert response.status_code == wrong_password.status_code
        assert response.get_json() == wrong_password.get_json()
    assert wrong_password.get_json()["message"] == "the user name, password or Cloud ID is wrong: check them and try again"
    assert fake_imis.requests == ["alice"]


def test_cloud_id_trimmed(client, fake_imis):
    response = post_sign_in(client, "alice", PASSWORDS["alice"], " ACME\t")

    assert response.status_code == 201
    assert response.get_json()["cloud_id"] == "ACME"


def test_cloud_id_letter_case_kept(client, fake_imis):
    """Cloud IDs match as stored: nothing documents whether iMIS Cloud IDs ignore case."""
    response = post_sign_in(client, "alice", PASSWORDS["alice"], "acme")

    assert response.status_code == 401
    assert fake_imis.requests == []


def test_imis_down_answer_hides_address(client, fake_imis, caplog):
    fake_imis.unavailable = True

    response = post_session(client, "alice", PASSWORDS["alice"])

    assert response.status_code == 502
    assert "imis.invalid" not in response.get_data(as_text=True)
    assert "check the iMIS address" in response.get_json()["message"]
    assert any("imis.invalid" in record.getMessage() for record in caplog.records)


def test_address_lock_spares_other_addresses(client, fake_imis):
    for index in range(ADDRESS_MAX_FAILURES):
        post_session(client, f"user-{index}", "wrong")

    from_address = post_session(client, "bob", PASSWORDS["bob"])
    elsewhere = post_session(client, "bob", PASSWORDS["bob"], address="203.0.113.20")

    assert from_address.status_code == 429
    assert "from your network address" in from_address.get_json()["message"]
    assert elsewhere.status_code == 201


def test_forwarded_for_ignored_by_default(client):
    """Without a trusted proxy, a client cannot pick a new address for each attempt."""
    statuses = [post_session(client, "alice", "wrong", **{"X-Forwarded-For": f"192.0.2.{index}"}).status_code
                for index in range(MAX_FAILURES + ADDRESS_MAX_FAILURES)]
    other_users = [post_session(client, f"user-{index}", "wrong", **{"X-Forwarded-For": f"192.0.2.{index}"})
                   for index in range(ADDRESS_MAX_FAILURES)]

    assert statuses[MAX_FAILURES - 1:] == [429] * (ADDRESS_MAX_FAILURES + 1)
    assert other_users[-1].status_code == 429
    assert other_users[-1].get_json()["details"]["locked"] == "address"


def test_forwarded_for_used_behind_trusted_proxy(runtime, tenant_factory, fake_imis):
    client = build_client(runtime, tenant_factory, trusted_proxy_count=1)
    proxy = "10.0.0.2"
    for index in range(ADDRESS_MAX_FAILURES):
        post_session(client, f"user-{index}", "wrong", address=proxy, **{"X-Forwarded-For": "198.51.100.7"})

    same_client = post_session(client, "bob", PASSWORDS["bob"], address=proxy, **{"X-Forwarded-For": "198.51.100.7"})
    other_client = post_session(client, "bob", PASSWORDS["bob"], address=proxy, **{"X-Forwarded-For": "203.0.113.9"})
    spoofed = post_session(client, "bob", PASSWORDS["bob"], address=proxy,
                           **{"X-Forwarded-For": "203.0.113.50, 198.51.100.7"})

    assert same_client.status_code == 429
    assert other_client.status_code == 201
    assert spoofed.status_code == 429
