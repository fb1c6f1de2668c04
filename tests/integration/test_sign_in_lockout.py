"""Sign-in lockout against a live iMIS simulator, over HTTP, on a FakeClock.

The gateway runs in a real HTTP server as if behind one reverse proxy
(TM_TRUSTED_PROXY_COUNT=1), so each test picks its client address with X-Forwarded-For.
The simulator's request log shows whether iMIS was asked.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest
import requests
from cryptography.fernet import Fernet
from werkzeug.serving import make_server

from libs.common.broker import MemoryBroker
from libs.common.clock import FakeClock
from libs.common.crypto import SecretBox
from libs.common.runtime import build_runtime
from libs.common.settings import Settings
from local.simulators.imis import ImisSimulator
from services.gateway.app import create_app
from tests.conftest import FAKE_CLOCK_START
from tests.integration.conftest import world_tenant

STAFF = ("lockout-staff", "lockout-staff-pass-5d2e")
SERVICE = ("lockout-svc", "lockout-svc-secret-11c7")
MAX_FAILURES = 4
ADDRESS_MAX_FAILURES = 12
LOCKOUT_S = 15 * 60


@dataclasses.dataclass
class LockoutWorld:
    imis: ImisSimulator
    clock: FakeClock
    runtime: object
    url: str

    def sign_in(self, password: str, *, username: str = STAFF[0], address: str = "198.51.100.7",
                cloud_id: str = "LOCK") -> requests.Response:
        return requests.post(f"{self.url}/api/session", timeout=10,
                             json={"username": username, "password": password, "cloud_id": cloud_id},
                             headers={"X-Forwarded-For": address})

    def token_requests(self) -> int:
        return sum(1 for entry in self.imis.request_log() if entry["path"] == "/token")


@pytest.fixture(scope="module")
def lockout_world():
    imis = ImisSimulator()
    imis_url = imis.start()
    imis.add_user(*STAFF)
    imis.add_user(*SERVICE)
    clock = FakeClock(start=FAKE_CLOCK_START)
    settings = dataclasses.replace(Settings(), trusted_proxy_count=1, sign_in_max_failures=MAX_FAILURES,
                                   sign_in_address_max_failures=ADDRESS_MAX_FAILURES)
    runtime = build_runtime(settings, broker=MemoryBroker(), clock=clock,
                            secrets=SecretBox(Fernet.generate_key().decode()))
    runtime.tenants.save(world_tenant("LOCK", imis_url, *SERVICE, 3, admins=(STAFF[0],)))
    server = make_server("127.0.0.1", 0, create_app(runtime), threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="lockout-gateway", daemon=True)
    thread.start()

    yield LockoutWorld(imis, clock, runtime, f"http://127.0.0.1:{server.server_port}")
    server.shutdown()
    runtime.broker.close()
    imis.stop()


@pytest.fixture
def world(lockout_world):
    """The module's world with no failures counted."""
    lockout_world.runtime.db.sign_in_failures.delete_many({})
    return lockout_world


def test_locked_account_not_sent_to_imis(world):
    statuses = [world.sign_in("wrong").status_code for _ in range(MAX_FAILURES)]
    asked = world.token_requests()

    locked = [world.sign_in(password) for password in ("wrong", STAFF[1], "wrong")]

    assert statuses == [401] * (MAX_FAILURES - 1) + [429]
    assert [response.status_code for response in locked] == [429] * 3
    assert world.token_requests() == asked
    assert locked[1].headers["Retry-After"] == str(LOCKOUT_S)
    assert "reset it in iMIS" in locked[1].json()["message"]
    assert "tm_session" not in locked[1].cookies


def test_sign_in_after_lockout(world):
    for _ in range(MAX_FAILURES):
        world.sign_in("wrong")

    world.clock.advance(LOCKOUT_S - 1)
    still_locked = world.sign_in(STAFF[1])
    world.clock.advance(1)
    asked = world.token_requests()
    signed_in = world.sign_in(STAFF[1])

    assert still_locked.status_code == 429
    assert still_locked.headers["Retry-After"] == "1"
    assert signed_in.status_code == 201
    assert signed_in.json()["is_admin"] is True
    assert world.token_requests() == asked + 1


def test_clients_behind_proxy_counted_apart(world):
    """Behind the trusted proxy, each client's failures count against its own address only."""
    for index in range(ADDRESS_MAX_FAILURES):
        world.sign_in("wrong", username=f"guess-{index}", address="203.0.113.66")

    attacker = world.sign_in(STAFF[1], address="203.0.113.66")
    colleague = world.sign_in(STAFF[1], address="198.51.100.7")

    assert attacker.status_code == 429
    assert attacker.json()["details"]["locked"] == "address"
    assert colleague.status_code == 201
