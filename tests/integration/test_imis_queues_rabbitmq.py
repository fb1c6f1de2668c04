"""The iMIS writer on RabbitMQ with two iMIS simulators: a worker per tenant's partition, a failing site isolated."""

from __future__ import annotations

import subprocess
import threading
from datetime import datetime, timezone

import pytest
from cryptography.fernet import Fernet

from libs.common.broker import QUEUE_DEAD, QUEUE_IMIS
from libs.common.clock import FakeClock
from libs.common.crypto import SecretBox
from libs.common.imis import ImisClient, ImisSession
from libs.common.imis_log import publish_sent_text
from libs.common.runtime import build_runtime
from libs.common.settings import Settings
from libs.common.tenants import Tenant
from local.simulators.imis import ImisSimulator
from services.feedback.consumer import ImisJobRouter, ImisWriterPool, tenant_ids
from services.feedback.service import ImisWriter
from tests.broker_support import AMQP_URL, WAIT_S, RabbitHarness, wait_until

pytestmark = pytest.mark.rabbitmq

USER = "textmanager-svc"
PASSWORD = "svc-secret-5d1e"
SENT_AT = datetime(2100, 1, 1, 0, 0, 5, tzinfo=timezone.utc)


@pytest.fixture
def harness():
    harness = RabbitHarness(AMQP_URL)
    yield harness
    harness.close()


@pytest.fixture
def simulators():
    """Two iMIS sites on 127.0.0.1: ALPHA's and BETA's."""
    started = {cloud_id: ImisSimulator({USER: PASSWORD}) for cloud_id in ("ALPHA", "BETA")}
    for simulator in started.values():
        simulator.start()
    yield started
    for simulator in started.values():
        simulator.stop()


class HeldBackoff:
    """The backoff of ALPHA's iMIS client: it waits until the test releases it, as a long backoff would."""

    def __init__(self):
        self.entered = threading.Event()
        self.released = threading.Event()

    def __call__(self, seconds: float) -> None:
        self.entered.set()
        self.released.wait(WAIT_S)


def consumer_counts(prefix: str) -> dict[str, int]:
    """Return the consumers of each queue under prefix, as rabbitmqctl lists them."""
    listing = subprocess.run(["rabbitmqctl", "-q", "list_queues", "--no-table-headers", "name", "consumers"],
                             capture_output=True, text=True, check=True, timeout=WAIT_S).stdout
    counts = {}
    for line in listing.splitlines():
        name, consumers = line.split("\t")
        if name.startswith(prefix):
            counts[name[len(prefix):]] = int(consumers)
    return counts


def test_failing_site_isolated_on_rabbitmq(harness, simulators, db):
    """ALPHA's site responds with 500 and its worker waits in the backoff, while BETA's texts are logged.

    Each tenant's first two jobs are in `tm.imis`, as an older version published them,
    and the third is in the tenant's partition.
    """
    alpha_queue, beta_queue = harness.partition("ALPHA", QUEUE_IMIS), harness.partition("BETA", QUEUE_IMIS)
    broker = harness.make()
    runtime = build_runtime(Settings(), db=db, broker=broker, clock=FakeClock(start=SENT_AT.timestamp() + 1),
                            secrets=SecretBox(Fernet.generate_key().decode()))
    backoff = HeldBackoff()
    clients = {"ALPHA": ImisClient(simulators["ALPHA"].url, timeout_s=5.0, sleep=backoff),
               "BETA": ImisClient(simulators["BETA"].url, timeout_s=5.0, sleep=lambda seconds: None)}
    sessions = {cloud_id: ImisSession(client, USER, PASSWORD) for cloud_id, client in clients.items()}
    jobs = {cloud_id: add_tenant(runtime, cloud_id, simulators[cloud_id].url) for cloud_id in ("ALPHA", "BETA")}
    for cloud_id in ("ALPHA", "BETA"):
        for job in jobs[cloud_id][:2]:
            broker.publish(QUEUE_IMIS, sent_job(job), message_id=f"sent:{job['message_id']}")
        publish_sent_text(broker, db, jobs[cloud_id][2], SENT_AT, clock=runtime.clock)
    simulators["ALPHA"].fail_next("/", 500, count=3)
    writer = ImisWriter(db, tenants=runtime.tenants, imis_factory=lambda tenant: sessions[tenant.cloud_id],
                        clock=runtime.clock, notifier=runtime.notifier)
    stop = threading.Event()

    pool = ImisWriterPool(broker, ImisJobRouter(broker, runtime.tenants, writer).handle,
                          tenant_ids=lambda: tenant_ids(db), stop=stop, refresh_s=3600).start()
    try:
        wait_until(lambda: all(logged(db, job) for job in jobs["BETA"]), "BETA's texts are logged in iMIS")
        alpha_held = backoff.entered.is_set()
        alpha_logged = [logged(db, job) for job in jobs["ALPHA"]]
        consumers = consumer_counts(harness.prefix)

        backoff.released.set()
        wait_until(lambda: all(logged(db, job) for job in jobs["ALPHA"]), "ALPHA's texts are logged in iMIS")
        depths = {queue: broker.queue_depth(queue) for queue in (QUEUE_IMIS, alpha_queue, beta_queue, QUEUE_DEAD)}
    finally:
        stop.set()
        backoff.released.set()
        pool.join(WAIT_S)
        for client in clients.values():
            client.close()

    assert alpha_held is True
    assert alpha_logged == [False] * 3
    assert consumers[QUEUE_IMIS] == 1
    assert consumers[alpha_queue] == 1
    assert consumers[beta_queue] == 1
    for cloud_id in ("ALPHA", "BETA"):
        stored = simulators[cloud_id].communication_log()
        assert sorted(entry["recipient_id"] for entry in stored) == [job["member_id"] for job in jobs[cloud_id]]
    assert depths == {QUEUE_IMIS: 0, alpha_queue: 0, beta_queue: 0, QUEUE_DEAD: 0}


def add_tenant(runtime, cloud_id: str, imis_url: str) -> list[dict]:
    """Save a tenant whose iMIS is at imis_url, with three sent texts; return their jobs."""
    runtime.tenants.save(Tenant(
        cloud_id=cloud_id, name=f"{cloud_id} Association", imis_base_url=imis_url, imis_username=USER,
        imis_password=PASSWORD, twilio_account_sid="AC" + "7e" * 16, twilio_auth_token="twilio-token",
        sender_number="+18885550199", default_email="admin@example.org",
    ))
    runtime.db.campaigns.insert_one({"_id": f"c-{cloud_id}", "tenant_id": cloud_id, "name": "Board meeting"})
    jobs = []
    for index in range(3):
        number = f"+1202555{index:04d}"
        job = {"tenant_id": cloud_id, "message_id": runtime.message_ids.build(f"r-{cloud_id}", number), "to": number,
               "member_id": str(10000 + index)}
        runtime.db.messages.insert_one({"_id": job["message_id"], "tenant_id": cloud_id, "run_id": f"r-{cloud_id}",
                                        "campaign_id": f"c-{cloud_id}", "to": number, "member_id": job["member_id"],
                                        "body": "Board meeting moved to Friday.", "status": "sent", "sent_at": SENT_AT})
        jobs.append(job)
    return jobs


def sent_job(job: dict) -> dict:
    return {"kind": "sent", "tenant_id": job["tenant_id"], "number": job["to"], "member_ids": [job["member_id"]],
            "sent_at": SENT_AT.isoformat(), "message_id": job["message_id"]}


def logged(db, job: dict) -> bool:
    message = db.messages.find_one({"_id": job["message_id"], "tenant_id": job["tenant_id"]})
    return (message.get("imis_log") or {}).get("status") == "written"
