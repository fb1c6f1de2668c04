"""Fixtures shared by every test: an in-process runtime, tenants, RabbitMQ, whole stacks.

Unit tests use `runtime` (mongomock, the in-process broker and a FakeClock: no
sockets). Integration tests use `stack_factory` to start the whole product with both
simulators, on the in-process broker or on RabbitMQ. Nothing here is autouse.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable

import pika
import pika.exceptions
import pytest
from cryptography.fernet import Fernet

from libs.common.broker import EXCHANGE, MemoryBroker, MemoryServer, declared_queues
from libs.common.clock import FakeClock
from libs.common.crypto import SecretBox
from libs.common.runtime import Runtime, build_runtime
from libs.common.settings import Settings
from libs.common.storage import connect
from libs.common.tenants import Tenant

AMQP_URL = os.environ.get("TM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
REPO_ROOT = Path(__file__).resolve().parents[1]
# Shared test cases and reference files, read-only beside the project (`../shared`);
# TM_SHARED_DIR points elsewhere, e.g. for a clone that does not sit beside it.
SHARED_DIR = Path(os.environ.get("TM_SHARED_DIR") or REPO_ROOT.parent / "shared")
CASES_DIR = SHARED_DIR / "cases"
REFERENCE_DIR = SHARED_DIR / "reference"

# Default upper bound of `wait_until`, so that a stuck pipeline fails a test instead of hanging it.
WAIT_S = 20.0

TEST_TWILIO_SID = "AC" + "7e" * 16
TEST_TWILIO_TOKEN = "test-auth-token-5b1f0c9a2e"
TEST_IMIS_PASSWORD = "test-imis-password-81c3"


def wait_until(predicate: Callable[[], object], description: str, timeout_s: float = WAIT_S,
               interval_s: float = 0.05) -> object:
    """Poll predicate until it returns something truthy, and return that.

    Raises AssertionError naming `description` after timeout_s seconds of real time.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting until {description}")
        time.sleep(interval_s)


# ------------------------------------------------------------------ unit: no sockets


# 2100-01-01T00:00:00Z. mongomock applies TTL indexes against the real time, so a fake
# time in the past would let it drop sessions that the product still considers valid.
FAKE_CLOCK_START = 4_102_444_800.0


@pytest.fixture
def clock() -> FakeClock:
    """A clock that starts on 2100-01-01 UTC and moves only when the test advances it or code sleeps on it."""
    return FakeClock(start=FAKE_CLOCK_START)


@pytest.fixture
def db():
    """An empty mongomock database of its own, with the product's patches and indexes."""
    from libs.common.storage import create_indexes

    database = connect(f"mongomock://localhost/test_{uuid.uuid4().hex[:8]}")
    create_indexes(database)
    return database


@pytest.fixture
def broker(clock):
    """An in-process broker whose delay queues follow `clock`."""
    memory_broker = MemoryBroker(server=MemoryServer(clock))
    yield memory_broker
    memory_broker.close()


@pytest.fixture
def runtime(db, broker, clock) -> Runtime:
    """A Runtime on mongomock, the in-process broker and a FakeClock; opens no socket.

    `runtime.imis(...)` and `runtime.twilio(...)` build real HTTP clients, so unit
    tests pass fakes to the services instead of calling those.
    """
    secrets = SecretBox(Fernet.generate_key().decode())
    return build_runtime(Settings(), db=db, broker=broker, clock=clock, secrets=secrets)


@pytest.fixture
def tenant_factory(runtime) -> Callable[..., Tenant]:
    """Return `make_tenant(**overrides)`, which saves a tenant in `runtime` and returns it.

    Defaults: Cloud ID "ACME", a US toll-free sender at 3 segments per second.
    """

    def make_tenant(**overrides) -> Tenant:
        values = dict(
            cloud_id="ACME", name="Acme Association", imis_base_url="http://imis.invalid",
            imis_username="textmanager-svc", imis_password=TEST_IMIS_PASSWORD,
            twilio_account_sid=TEST_TWILIO_SID, twilio_auth_token=TEST_TWILIO_TOKEN,
            sender_number="+18885550199", default_email="admin@acme.example",
        )
        values.update(overrides)
        tenant = Tenant(**values)
        runtime.tenants.save(tenant)
        return tenant

    return make_tenant


# ------------------------------------------------------------------ integration: RabbitMQ


def connect_rabbitmq(url: str = AMQP_URL) -> pika.BlockingConnection:
    """Open a connection, or fail the test with how to start RabbitMQ (never skip)."""
    try:
        return pika.BlockingConnection(pika.URLParameters(url))
    except pika.exceptions.AMQPConnectionError as error:
        pytest.fail(f"RabbitMQ is not reachable at {url} ({error!r}). Start it with "
                    "`rabbitmq-server -detached`, set TM_TEST_AMQP_URL to a running server, "
                    "or deselect these tests with -m 'not rabbitmq'", pytrace=False)


def delete_rabbitmq_topology(prefix: str, url: str = AMQP_URL) -> None:
    """Delete every queue and the exchange that a broker with this queue prefix declares.

    Per-tenant partitions (`tm.jobs.DEMO` and their delay queues) are declared on first
    use, so the queues to delete are also read from `rabbitmqctl list_queues`.
    """
    names = {prefix + name for name in declared_queues()} | set(_listed_queues(prefix))
    with connect_rabbitmq(url) as connection:
        channel = connection.channel()
        for name in sorted(names):
            channel.queue_delete(name)
        channel.exchange_delete(prefix + EXCHANGE)


def _listed_queues(prefix: str) -> list[str]:
    """Return the names of the local server's queues that start with prefix."""
    try:
        listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True, text=True,
                                timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.stdout.splitlines() if line.strip().startswith(prefix)]


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """The RabbitMQ URL for tests (TM_TEST_AMQP_URL); fails the test when unreachable."""
    connect_rabbitmq(AMQP_URL).close()
    return AMQP_URL


# ------------------------------------------------------------------ integration: whole stacks


class StackLauncher:
    """Starts `local.stack.Stack`s with fast defaults and stops and cleans up every one.

    `start("memory")` runs on the in-process broker, `start("rabbitmq")` on RabbitMQ
    under a queue prefix of its own, whose queues and exchange are deleted at cleanup.
    """

    # Raised rates: at 200 segments per second the 237 demo texts take about 1.2 s, not 80 s.
    DEFAULTS = {"sender_rate_sps": 200.0, "callback_delay_s": 0.01, "scheduler_poll_s": 0.05}

    def __init__(self):
        self._started: list[tuple[object, str | None]] = []

    def start(self, broker: str = "memory", **overrides):
        """Start and return a Stack; `overrides` go to its constructor."""
        from local.stack import Stack

        options = {**self.DEFAULTS, **overrides}
        prefix = None
        if broker == "rabbitmq":
            connect_rabbitmq(AMQP_URL).close()
            prefix = f"test-{uuid.uuid4().hex[:12]}."
            options.update(broker_url=AMQP_URL, queue_prefix=prefix)
        elif broker != "memory":
            raise ValueError(f"broker must be memory or rabbitmq, got {broker!r}")
        stack = Stack(**options)
        self._started.append((stack, prefix))
        return stack.start()

    def close(self) -> None:
        for stack, prefix in reversed(self._started):
            stack.stop()
            if prefix is not None:
                delete_rabbitmq_topology(prefix)
        self._started.clear()


@pytest.fixture
def stack_factory():
    """Return `start(broker="memory", **overrides)`, which starts a whole Stack.

    Every Stack started is stopped after the test, and its RabbitMQ queues deleted.
    """
    launcher = StackLauncher()
    yield launcher.start
    launcher.close()


@pytest.fixture(scope="module")
def module_stack_factory():
    """Like `stack_factory`, for stacks that the tests of one module share."""
    launcher = StackLauncher()
    yield launcher.start
    launcher.close()


def pytest_sessionstart(session):
    """Stop at once, saying where to find them, when the shared cases are missing."""
    if not CASES_DIR.is_dir():
        pytest.exit(f"the shared test cases are missing: {CASES_DIR} does not exist. Clone the project beside "
                    "the shared folder, or set TM_SHARED_DIR to it", returncode=4)
