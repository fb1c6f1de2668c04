"""Integration fixtures: staff API sessions, raw access to queues, a gateway on a live iMIS."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import pytest
import requests
from cryptography.fernet import Fernet

from libs.common.broker import MemoryBroker
from libs.common.broker.memory import StoredMessage
from libs.common.crypto import SecretBox
from libs.common.runtime import build_runtime
from libs.common.settings import Settings
from libs.common.tenants import Tenant
from local import demo_data
from local.simulators.imis import ImisSimulator
from services.gateway.app import create_app as create_gateway_app
from services.recipients.main import build_expander
from services.scheduler.service import Scheduler
from tests.conftest import connect_rabbitmq, wait_until

FINAL_CAMPAIGN_STATUSES = ("completed", "failed", "cancelled")


class StaffApi:
    """A signed-in staff member talking to a running gateway over HTTP.

    Every state-changing call carries the CSRF token from sign-in.
    """

    def __init__(self, gateway_url: str, *, username: str, password: str, cloud_id: str):
        self.url = gateway_url
        self.http = requests.Session()
        response = self.http.post(f"{gateway_url}/api/session",
                                  json={"username": username, "password": password, "cloud_id": cloud_id})
        assert response.status_code == 201, response.text
        self.csrf_token = response.json()["csrf_token"]

    def get(self, path: str) -> requests.Response:
        return self.http.get(self.url + path)

    def post(self, path: str, json: dict | None = None) -> requests.Response:
        return self.http.post(self.url + path, json=json, headers={"X-CSRF-Token": self.csrf_token})

    def create_campaign(self, **fields) -> dict:
        """Create a draft campaign to the demo query, `fields` overriding the defaults; return it."""
        body = {"name": "Integration test", "body": "Hello {FirstName|member}, this is the Demo Association.",
                "iqa_path": demo_data.DEMO_QUERY_PATH, **fields}
        response = self.post("/api/campaigns", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def send_and_wait(self, campaign_id: str, timeout_s: float = 60.0) -> dict:
        """Send the campaign now and return it once it is completed, failed or cancelled."""
        response = self.post(f"/api/campaigns/{campaign_id}/send")
        assert response.status_code == 202, response.text

        def finished() -> dict | None:
            campaign = self.get(f"/api/campaigns/{campaign_id}").json()
            return campaign if campaign["status"] in FINAL_CAMPAIGN_STATUSES else None

        return wait_until(finished, f"campaign {campaign_id} finished", timeout_s=timeout_s)


@pytest.fixture
def staff_api():
    """Return `sign_in(stack, username="demo", password="demo", cloud_id="DEMO")` -> StaffApi."""

    def sign_in(stack, username: str = demo_data.DEMO_STAFF_USER[0], password: str = demo_data.DEMO_STAFF_USER[1],
                cloud_id: str = "DEMO") -> StaffApi:
        return StaffApi(stack.gateway_url, username=username, password=password, cloud_id=cloud_id)

    return sign_in


# ------------------------------------------------------------------ raw queue access


class QueueProbe:
    """Publish raw bytes to, and take messages from, the queues of one running Stack.

    It bypasses the broker under test, so a test can inject what no product code
    would publish (a body that is not JSON) and read what lands in `tm.dead`.
    """

    def __init__(self, stack):
        self._broker = stack.runtime.broker
        self._prefix = stack.queue_prefix

    @property
    def on_rabbitmq(self) -> bool:
        return not isinstance(self._broker, MemoryBroker)

    def publish_raw(self, queue: str, payload: bytes, message_id: str) -> None:
        if not self.on_rabbitmq:
            self._broker.server.put(self._prefix + queue, [StoredMessage(payload, {}, message_id)])
            return
        import pika

        with connect_rabbitmq() as connection:
            channel = connection.channel()
            channel.confirm_delivery()
            channel.basic_publish(self._prefix + "tm", self._prefix + queue, payload,
                                  pika.BasicProperties(delivery_mode=2, message_id=message_id), mandatory=True)

    def take_all(self, queue: str) -> list[StoredMessage]:
        """Remove and return every ready message of the queue."""
        if not self.on_rabbitmq:
            return self._broker.server.take(self._prefix + queue, 10_000)
        taken = []
        with connect_rabbitmq() as connection:
            channel = connection.channel()
            while True:
                method, properties, payload = channel.basic_get(self._prefix + queue, auto_ack=True)
                if method is None:
                    return taken
                taken.append(StoredMessage(payload, properties.headers or {}, properties.message_id))


# ------------------------------------------------------------------ gateway on a live iMIS


EMPTY_QUERY_PATH = "$/TextManager/Nobody"


@dataclass(frozen=True)
class StaffUser:
    cloud_id: str
    username: str
    password: str


@dataclass
class GatewayWorld:
    """The gateway app (Flask test client) on mongomock and the in-process broker.

    Sign-in goes over HTTP to a live iMIS simulator. No scheduler, recipients or
    sender runs on its own: `process_due_runs()` runs the scheduler and the recipients
    service once, in the test's thread, and no text is ever sent, so a campaign that
    was sent stays `sending`.
    """

    imis: ImisSimulator
    runtime: object
    app: object
    users: dict[str, StaffUser] = field(default_factory=dict)
    non_admins: dict[str, StaffUser] = field(default_factory=dict)

    def client(self):
        return self.app.test_client()

    def sign_in(self, cloud_id: str):
        """Return (test client with the session cookie, CSRF token) for the tenant's administrator."""
        return self.sign_in_as(self.users[cloud_id])

    def sign_in_non_admin(self, cloud_id: str):
        """Return (test client with the session cookie, CSRF token) for a staff member who is no administrator."""
        return self.sign_in_as(self.non_admins[cloud_id])

    def sign_in_as(self, user: StaffUser):
        client = self.client()
        response = client.post("/api/session", json={"username": user.username, "password": user.password,
                                                     "cloud_id": user.cloud_id})
        assert response.status_code == 201, response.get_data(as_text=True)
        return client, response.get_json()["csrf_token"]

    def process_due_runs(self) -> None:
        """Publish due runs, then expand every queued run, as the two services would."""
        Scheduler(self.runtime.db, broker=self.runtime.broker, clock=self.runtime.clock).tick()
        expander = build_expander(self.runtime)
        for run in list(self.runtime.db.runs.find({"status": "queued"})):
            expander.expand(run["tenant_id"], run["_id"])
        self.runtime.broker.purge("tm.runs")


def closed_port_url() -> str:
    """Return an http URL on 127.0.0.1 whose port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# Tenants of the gateway world: (Cloud ID, staff user, staff password, service user, service password).
# The staff user is the tenant's administrator.
WORLD_TENANTS = (
    ("ALPHA", "alpha-staff", "alpha-staff-pass-20c1", "alpha-svc", "alpha-svc-secret-9d41"),
    ("BETA", "beta-staff", "beta-staff-pass-73fe", "beta-svc", "beta-svc-secret-5a02"),
)
# A staff member of each tenant who is no administrator: (user, password).
WORLD_NON_ADMINS = {
    "ALPHA": ("alpha-clerk", "alpha-clerk-pass-6e1d"),
    "BETA": ("beta-clerk", "beta-clerk-pass-0b94"),
}
UNREACHABLE_CLOUD_ID = "NOWHERE"


@pytest.fixture(scope="module")
def gateway_world():
    """A GatewayWorld with tenants ALPHA and BETA on one iMIS simulator, and NOWHERE on no iMIS."""
    imis = ImisSimulator()
    imis_url = imis.start()
    demo_data.seed_imis(imis)
    imis.add_query(EMPTY_QUERY_PATH, demo_data.MEMBER_COLUMNS, [])

    secrets = SecretBox(Fernet.generate_key().decode())
    runtime = build_runtime(Settings(), broker=MemoryBroker(), secrets=secrets)
    world = GatewayWorld(imis=imis, runtime=runtime, app=create_gateway_app(runtime))
    for index, (cloud_id, staff, staff_password, service, service_password) in enumerate(WORLD_TENANTS):
        imis.add_user(staff, staff_password)
        imis.add_user(service, service_password)
        imis.add_user(*WORLD_NON_ADMINS[cloud_id])
        runtime.tenants.save(world_tenant(cloud_id, imis_url, service, service_password, index, admins=(staff,)))
        world.users[cloud_id] = StaffUser(cloud_id, staff, staff_password)
        world.non_admins[cloud_id] = StaffUser(cloud_id, *WORLD_NON_ADMINS[cloud_id])
    runtime.tenants.save(world_tenant(UNREACHABLE_CLOUD_ID, closed_port_url(), "svc", "svc-secret", 9))
    world.users[UNREACHABLE_CLOUD_ID] = StaffUser(UNREACHABLE_CLOUD_ID, "alpha-staff", "alpha-staff-pass-20c1")

    yield world
    runtime.broker.close()
    imis.stop()


def world_tenant(cloud_id: str, imis_url: str, service: str, service_password: str, index: int,
                 admins: tuple[str, ...] = ()) -> Tenant:
    return Tenant(
        cloud_id=cloud_id, name=f"{cloud_id.title()} Association", imis_base_url=imis_url, imis_username=service,
        imis_password=service_password, twilio_account_sid="AC" + f"{index:02d}" * 16,
        twilio_auth_token=f"{cloud_id.lower()}-twilio-token-61be", sender_number=f"+1888555010{index}",
        default_country="US", default_email=f"admin@{cloud_id.lower()}.example", admins=admins,
    )
