"""iMIS jobs in per-tenant partitions of `tm.imis`: queue names, publishers, the router, the pool, a failing site."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from datetime import datetime, timezone

import pytest
import requests
from cryptography.fernet import Fernet

from libs.common.broker import (
    QUEUE_DEAD, QUEUE_IMIS, Delivery, MemoryBroker, MemoryServer, PublishError, Reject, Retry,
)
from libs.common.clock import FakeClock
from libs.common.crypto import SecretBox
from libs.common.imis import ImisClient, ImisOutcomeUnknown, ImisRequestError, ImisSession, naive_utc_timestamp
from libs.common.imis_log import ACTIVITY, TEXTMSG, publish_sent_text
from libs.common.imis_queue import EARLIER_ATTEMPT_HEADER, imis_queue, publish_imis_job, tenant_imis_queue
from libs.common.runtime import build_runtime
from libs.common.settings import Settings
from libs.common.tenants import Tenant
from services.feedback.consumer import ImisJobRouter, ImisWriterPool, tenant_ids
from services.feedback.service import FeedbackService, ImisWriter
from services.scheduler.dead_letters import DeadLetterHandler
from tests.conftest import FAKE_CLOCK_START, TEST_IMIS_PASSWORD, TEST_TWILIO_SID, TEST_TWILIO_TOKEN, wait_until

# Upper bound of every wait on another thread, so that a stuck worker fails the test instead of hanging it.
WAIT_S = 20.0
DELAYS = (1, 5)
SENT_AT = datetime(2100, 1, 1, 0, 0, 5, tzinfo=timezone.utc)
BODY = "Board meeting moved to Friday. Reply STOP to opt out."


class SteppingClock(FakeClock):
    """A FakeClock whose sleep blocks until the test advances the time past its end.

    A worker in an iMIS client's backoff then stays there until the test moves the
    clock, as it would during a real backoff. Nothing sleeps in real time.
    """

    def __init__(self, start: float):
        super().__init__(start)
        self.sleeps_started = 0
        self._changed = threading.Condition()
        self._released = False

    def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with self._changed:
            until = self.time() + seconds
            self.sleeps_started += 1
            self._changed.notify_all()
            self._changed.wait_for(lambda: self._released or self.time() >= until, WAIT_S)

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        with self._changed:
            self._changed.notify_all()

    def wait_for_sleeps(self, count: int) -> None:
        """Wait until `count` sleeps have started; raises AssertionError after WAIT_S."""
        with self._changed:
            started = self._changed.wait_for(lambda: self.sleeps_started >= count, WAIT_S)
        assert started, f"timed out waiting until {count} sleeps started on the clock"

    def release(self) -> None:
        """End every sleep at once, so that blocked workers can stop."""
        with self._changed:
            self._released = True
            self._changed.notify_all()


class FakeImis:
    """An iMIS site in memory with communication log entries and activities; safe to share between threads.

    With `lose_next_answer`, the next activity is stored and then ImisOutcomeUnknown is
    raised, as when iMIS times out after saving the row. An activity for `rejected_member`
    raises ImisRequestError, as for a member iMIS does not have.
    """

    def __init__(self):
        self.interactions: list[dict] = []
        self.activities: list[dict] = []
        self.lose_next_answer = False
        self.rejected_member: str | None = None
        self._lock = threading.Lock()

    def create_communication_log(self, *, recipient_id, subject, html, message_type) -> str:
        with self._lock:
            key = f"CL{len(self.interactions) + 1}"
            self.interactions.append({"key": key, "recipient_id": recipient_id, "subject": subject})
            return key

    def create_activity(self, *, party_id, activity_type, transaction_date, category, uf_1, note=None) -> str:
        if self.rejected_member == party_id:
            raise ImisRequestError("iMIS rejected the activity: PartyId does not exist")
        with self._lock:
            seqn = str(500 + len(self.activities))
            self.activities.append({"seqn": seqn, "party_id": party_id, "activity_type": activity_type,
                                    "transaction_date": naive_utc_timestamp(transaction_date), "uf_1": uf_1})
            if self.lose_next_answer:
                self.lose_next_answer = False
                raise ImisOutcomeUnknown("iMIS timed out after the activity was sent")
            return seqn

    def find_activities(self, party_id, activity_type) -> list[dict]:
        with self._lock:
            return [dict(activity) for activity in self.activities
                    if activity["party_id"] == party_id and activity["activity_type"] == activity_type]


class ServerErrorTransport(requests.adapters.BaseAdapter):
    """A requests transport that responds to every request with HTTP 500, as a failing site does; opens no socket."""

    def send(self, request, **kwargs) -> requests.Response:
        response = requests.Response()
        response.status_code = 500
        response.headers["Content-Type"] = "application/json"
        response._content = b'{"Message": "An error has occurred."}'
        response.url = request.url
        response.request = request
        return response

    def close(self) -> None:
        pass


def failing_site(clock: SteppingClock) -> ImisSession:
    """Return a real iMIS session whose site responds with 500 to every request; its backoff sleeps on `clock`."""
    http = requests.Session()
    http.mount("https://", ServerErrorTransport())
    client = ImisClient("https://alpha.imis.invalid", session=http, sleep=clock.sleep)
    return ImisSession(client, "textmanager-svc", TEST_IMIS_PASSWORD)


class CountingWriter:
    """An ImisWriter that counts the jobs it finished per tenant, written or not, so a test can wait without polling."""

    def __init__(self, writer: ImisWriter):
        self._writer = writer
        self._counts: Counter[str] = Counter()
        self._changed = threading.Condition()

    def handle(self, delivery: Delivery) -> None:
        try:
            self._writer.handle(delivery)
        finally:
            with self._changed:
                self._counts[delivery.body.get("tenant_id")] += 1
                self._changed.notify_all()

    def wait_for(self, tenant_id: str, count: int) -> None:
        """Wait until `count` jobs of the tenant finished; raises AssertionError after WAIT_S."""
        with self._changed:
            finished = self._changed.wait_for(lambda: self._counts[tenant_id] >= count, WAIT_S)
        assert finished, f"timed out waiting until {count} iMIS jobs of {tenant_id} finished"


class World:
    """Tenants with an iMIS site each, their sent texts, the in-process broker, and the writer and router."""

    def __init__(self, db, clock):
        self.clock = clock
        self.server = MemoryServer(clock)
        self.broker = MemoryBroker(server=self.server, retry_delays_s=DELAYS)
        self.runtime = build_runtime(Settings(), db=db, broker=self.broker, clock=clock,
                                     secrets=SecretBox(Fernet.generate_key().decode()))
        self.db = db
        self.sites: dict[str, object] = {}
        self.writer = ImisWriter(db, tenants=self.runtime.tenants,
                                 imis_factory=lambda tenant: self.sites[tenant.cloud_id], clock=clock,
                                 notifier=self.runtime.notifier)
        self.finished = CountingWriter(self.writer)
        self.router = ImisJobRouter(self.broker, self.runtime.tenants, self.finished)

    def tenant(self, cloud_id: str, site=None, **overrides) -> Tenant:
        values = dict(cloud_id=cloud_id, name=f"{cloud_id} Association", imis_base_url="https://imis.invalid",
                      imis_username="textmanager-svc", imis_password=TEST_IMIS_PASSWORD,
                      twilio_account_sid=TEST_TWILIO_SID, twilio_auth_token=TEST_TWILIO_TOKEN,
                      sender_number="+18885550199", default_email="admin@example.org")
        values.update(overrides)
        tenant = Tenant(**values)
        self.runtime.tenants.save(tenant)
        self.db.campaigns.insert_one({"_id": f"c-{cloud_id}", "tenant_id": cloud_id, "name": "Board meeting"})
        self.sites[cloud_id] = site if site is not None else FakeImis()
        return tenant

    def sent_text(self, cloud_id: str, index: int) -> dict:
        """Store a text the tenant sent to its index-th member; return its job."""
        number = f"+1202555{index:04d}"
        message_id = self.runtime.message_ids.build(f"r-{cloud_id}", number)
        self.db.messages.insert_one({"_id": message_id, "tenant_id": cloud_id, "run_id": f"r-{cloud_id}",
                                     "campaign_id": f"c-{cloud_id}", "to": number, "member_id": str(10000 + index),
                                     "body": BODY, "status": "sent", "sent_at": SENT_AT})
        return {"tenant_id": cloud_id, "message_id": message_id, "to": number, "member_id": str(10000 + index)}

    def take(self, queue: str) -> list:
        """Return and remove the messages ready in queue; a partition that was never declared has none."""
        if queue != QUEUE_IMIS:
            self.server.declare_partition("", queue, DELAYS)
        return self.server.take(queue, 100)

    def imis_log(self, job: dict) -> dict | None:
        return self.db.messages.find_one({"_id": job["message_id"]}).get("imis_log")


@pytest.fixture
def world(db):
    world = World(db, SteppingClock(FAKE_CLOCK_START))
    yield world
    world.clock.release()
    world.broker.close()


def sent_job(job: dict) -> dict:
    return {"kind": "sent", "tenant_id": job["tenant_id"], "number": job["to"], "member_ids": [job["member_id"]],
            "sent_at": SENT_AT.isoformat(), "message_id": job["message_id"]}


def delivery(body: dict, queue: str, *, attempt: int = 1, redelivered: bool = False, headers=None) -> Delivery:
    return Delivery(queue=queue, body=body, headers=dict(headers or {}), attempt=attempt, redelivered=redelivered,
                    message_id=f"sent:{body.get('message_id')}")


def delivered(message, queue: str) -> Delivery:
    """Return the delivery of a stored message at its first attempt, as the broker builds it."""
    return Delivery(queue=queue, body=json.loads(message.payload), headers=dict(message.headers), attempt=1,
                    redelivered=False, message_id=message.message_id)


# ------------------------------------------------------------------ queue names


def test_tenant_queue_name():
    assert tenant_imis_queue("ACME") == "tm.imis.ACME"
    assert imis_queue("acme-2_b") == "tm.imis.acme-2_b"


@pytest.mark.parametrize("tenant_id", ["acme.org", "", "acme org", "A" * 65, "ACME/1"])
def test_invalid_cloud_id_uses_shared_queue(tenant_id):
    assert imis_queue(tenant_id) == QUEUE_IMIS
    with pytest.raises(ValueError):
        tenant_imis_queue(tenant_id)


# ------------------------------------------------------------------ publishers


def test_publish_goes_to_partition(world):
    world.tenant("ACME")
    job = sent_job(world.sent_text("ACME", 1))

    publish_imis_job(world.broker, job, message_id="sent:1")

    queued = world.take(tenant_imis_queue("ACME"))
    assert [json.loads(message.payload) for message in queued] == [job]
    assert queued[0].message_id == "sent:1"
    assert world.take(QUEUE_IMIS) == []


def test_sent_text_goes_to_partition(world):
    world.tenant("BETA")
    job = world.sent_text("BETA", 1)

    published = publish_sent_text(world.broker, world.db, job, SENT_AT, clock=world.clock)

    queued = world.take(tenant_imis_queue("BETA"))
    assert published is True
    assert [json.loads(message.payload)["message_id"] for message in queued] == [job["message_id"]]
    assert world.take(QUEUE_IMIS) == []


def test_stop_for_unpartitioned_tenant(world):
    world.tenant("acme.org")
    job = world.sent_text("acme.org", 1)
    feedback = FeedbackService(world.db, broker=world.broker, tenants=world.runtime.tenants, clock=world.clock)

    feedback.on_inbound("acme.org", {"From": job["to"], "To": "+18885550199", "Body": "STOP"})

    queued = [json.loads(message.payload) for message in world.take(QUEUE_IMIS)]
    assert [(body["kind"], body["tenant_id"]) for body in queued] == [("textunsub", "acme.org")]


# ------------------------------------------------------------------ router


def test_router_moves_shared_job(world):
    world.tenant("ACME")
    job = sent_job(world.sent_text("ACME", 1))

    world.router.handle(delivery(job, QUEUE_IMIS))

    moved = world.take(tenant_imis_queue("ACME"))
    assert [json.loads(message.payload) for message in moved] == [job]
    assert moved[0].message_id == f"sent:{job['message_id']}"
    assert world.sites["ACME"].interactions == []
    assert world.imis_log(job) is None


@pytest.mark.parametrize("attempt, redelivered, marked", [
    (1, False, False),
    (2, False, True),
    (1, True, True),
])
def test_router_marks_earlier_attempt(world, attempt, redelivered, marked):
    world.tenant("ACME")
    job = sent_job(world.sent_text("ACME", 1))

    world.router.handle(delivery(job, QUEUE_IMIS, attempt=attempt, redelivered=redelivered, headers={"trace": "t1"}))

    moved = world.take(tenant_imis_queue("ACME"))
    assert len(moved) == 1
    assert moved[0].headers.get(EARLIER_ATTEMPT_HEADER, False) is marked
    assert moved[0].headers["trace"] == "t1"


def test_moved_retry_written_once(world):
    """An older version stored a TEXTMSG activity but lost iMIS's response; after the move, no second one is written."""
    world.tenant("ACME", imis_text_log=ACTIVITY)
    site = world.sites["ACME"]
    job = sent_job(world.sent_text("ACME", 1))
    site.lose_next_answer = True
    with pytest.raises(Retry):
        world.writer.handle(delivery(job, QUEUE_IMIS))

    world.router.handle(delivery(job, QUEUE_IMIS, attempt=2))
    moved = world.take(tenant_imis_queue("ACME"))
    world.router.handle(delivered(moved[0], tenant_imis_queue("ACME")))

    assert [activity["activity_type"] for activity in site.activities] == [TEXTMSG]
    assert world.imis_log(job)["status"] == "written"
    assert world.imis_log(job)["key"] == site.activities[0]["seqn"]


def test_router_rejects_unknown_tenant(world):
    job = sent_job({"tenant_id": "NOBODY", "message_id": "m1", "to": "+12025550100", "member_id": "1"})

    with pytest.raises(Reject, match="unknown tenant 'NOBODY'"):
        world.router.handle(delivery(job, QUEUE_IMIS))

    with pytest.raises(ValueError):
        world.server.depth(tenant_imis_queue("NOBODY"))


@pytest.mark.parametrize("change", [{"kind": "unknown"}, {"kind": None}, {"tenant_id": 42}])
def test_router_rejects_invalid_job(world, change):
    world.tenant("ACME")
    job = dict(sent_job(world.sent_text("ACME", 1)), **change)

    with pytest.raises(Reject):
        world.router.handle(delivery(job, QUEUE_IMIS))

    assert world.take(tenant_imis_queue("ACME")) == []


def test_router_writes_unpartitioned_tenant(world):
    world.tenant("acme.org")
    job = sent_job(world.sent_text("acme.org", 1))

    world.router.handle(delivery(job, QUEUE_IMIS))

    assert world.imis_log(job)["status"] == "written"
    assert len(world.sites["acme.org"].interactions) == 1
    assert world.take(QUEUE_IMIS) == []


def test_router_moves_other_tenants_job(world):
    world.tenant("ACME")
    world.tenant("BETA")
    job = sent_job(world.sent_text("BETA", 1))

    world.router.handle(delivery(job, tenant_imis_queue("ACME")))

    assert [json.loads(message.payload) for message in world.take(tenant_imis_queue("BETA"))] == [job]
    assert world.sites["ACME"].interactions == []
    assert world.sites["BETA"].interactions == []


def test_router_writes_own_partition(world):
    world.tenant("ACME")
    job = sent_job(world.sent_text("ACME", 1))

    world.router.handle(delivery(job, tenant_imis_queue("ACME")))

    assert world.imis_log(job)["status"] == "written"
    assert len(world.sites["ACME"].interactions) == 1
    assert world.take(tenant_imis_queue("ACME")) == []


def test_router_retries_failed_move(world):
    world.tenant("ACME")
    job = sent_job(world.sent_text("ACME", 1))

    def unreachable(queue, body, **options):
        raise PublishError("RabbitMQ is unreachable")

    world.broker.publish = unreachable
    with pytest.raises(Retry, match="moving the iMIS job to tm.imis.ACME failed: RabbitMQ is unreachable"):
        world.router.handle(delivery(job, QUEUE_IMIS))


# ------------------------------------------------------------------ pool


def start_pool(world: World, stop: threading.Event) -> ImisWriterPool:
    return ImisWriterPool(world.broker, world.router.handle, tenant_ids=lambda: tenant_ids(world.db), stop=stop,
                          refresh_s=3600).start()


def test_pool_one_worker_per_partition(world, caplog):
    for cloud_id in ("ACME", "BETA", "acme.org"):
        world.tenant(cloud_id)
    stop = threading.Event()

    with caplog.at_level(logging.WARNING, logger="services.feedback.consumer"):
        pool = start_pool(world, stop)
        pool.refresh()
    queues = [QUEUE_IMIS, tenant_imis_queue("ACME"), tenant_imis_queue("BETA")]
    wait_until(lambda: all(world.broker.consumers(queue) for queue in queues), "every worker is connected")
    connected = {queue: world.broker.consumers(queue) for queue in queues}
    stop.set()
    pool.join(WAIT_S)

    assert sorted(pool.queues) == sorted(queues)
    assert connected == {queue: 1 for queue in queues}
    assert pool.consuming is False
    unpartitioned = [record for record in caplog.records if "'acme.org'" in record.getMessage()]
    assert len(unpartitioned) == 1


def test_pool_finds_new_tenant(world):
    world.tenant("ACME")
    stop = threading.Event()
    pool = start_pool(world, stop)

    world.tenant("GAMMA")
    pool.refresh()
    wait_until(lambda: world.broker.consumers(tenant_imis_queue("GAMMA")) == 1, "GAMMA's worker is connected")
    stop.set()
    pool.join(WAIT_S)

    assert tenant_imis_queue("GAMMA") in pool.queues


# ------------------------------------------------------------------ a failing site


@pytest.mark.parametrize("published_to", ["tenant queues", "tm.imis"])
def test_failing_site_does_not_delay_others(world, published_to):
    """ALPHA's site responds with 500, so its worker waits in the iMIS client's backoff while BETA's texts are logged.

    With `tm.imis`, every job is first in the queue an older version published to, ALPHA's first.
    """
    world.tenant("ALPHA", site=failing_site(world.clock))
    world.tenant("BETA")
    alpha = [world.sent_text("ALPHA", index) for index in range(5)]
    beta = [world.sent_text("BETA", index) for index in range(5)]
    for job in alpha + beta:
        if published_to == "tm.imis":
            world.broker.publish(QUEUE_IMIS, sent_job(job), message_id=f"sent:{job['message_id']}")
        else:
            publish_sent_text(world.broker, world.db, job, SENT_AT, clock=world.clock)
    finished = world.finished
    stop = threading.Event()
    started_at = world.clock.time()

    pool = start_pool(world, stop)
    try:
        finished.wait_for("BETA", 5)
        world.clock.wait_for_sleeps(1)
        beta_logs = [world.imis_log(job) for job in beta]
        alpha_logs = [world.imis_log(job) for job in alpha]
        clock_moved_s = world.clock.time() - started_at

        # ALPHA's site comes back while its first job is still in the backoff of the failing session.
        recovered = FakeImis()
        world.sites["ALPHA"] = recovered
        for sleep in range(1, 5):
            world.clock.wait_for_sleeps(sleep)
            world.clock.advance(60)
        finished.wait_for("ALPHA", 5)
        world.clock.advance(DELAYS[0])
        finished.wait_for("ALPHA", 6)
    finally:
        stop.set()
        world.clock.release()
        pool.join(WAIT_S)

    assert [log["status"] for log in beta_logs] == ["written"] * 5
    assert len(world.sites["BETA"].interactions) == 5
    assert alpha_logs == [None] * 5
    assert clock_moved_s == 0
    assert [world.imis_log(job)["status"] for job in alpha] == ["written"] * 5
    assert sorted(entry["recipient_id"] for entry in recovered.interactions) == [job["member_id"] for job in alpha]
    assert world.server.depth(QUEUE_DEAD) == 0


def test_rejected_job_kept_from_partition(world):
    """A TEXTUNSUB activity that ACME's site rejects dies in ACME's partition and is kept in `failed_imis_writes`."""
    world.tenant("ACME")
    job = world.sent_text("ACME", 1)
    world.sites["ACME"].rejected_member = job["member_id"]
    world.db.optouts.insert_one({"_id": f"ACME:{job['to']}", "tenant_id": "ACME", "number": job["to"],
                                 "member_ids": [job["member_id"]]})
    textunsub = {"kind": "textunsub", "tenant_id": "ACME", "number": job["to"], "member_ids": [job["member_id"]],
                 "sent_at": SENT_AT.isoformat(), "message_id": None}
    publish_imis_job(world.broker, textunsub)
    handler = DeadLetterHandler(world.db, broker=world.broker, tenants=world.runtime.tenants, twilio_factory=lambda sid, token: None,
                                notifier=world.runtime.notifier, clock=world.clock, pause=lambda seconds: None)
    stop = threading.Event()
    pool = start_pool(world, stop)
    dead_letters = threading.Thread(target=world.broker.consume, args=(QUEUE_DEAD, handler.handle),
                                    kwargs={"prefetch": 1, "stop": stop}, daemon=True)
    dead_letters.start()
    try:
        wait_until(lambda: world.db.failed_imis_writes.count_documents({"tenant_id": "ACME"}) == 1,
                   "the failed write is kept")
    finally:
        stop.set()
        pool.join(WAIT_S)
        dead_letters.join(WAIT_S)

    [write] = world.db.failed_imis_writes.find({"tenant_id": "ACME"})
    assert write["kind"] == "textunsub"
    assert write["job"] == textunsub
    assert "PartyId does not exist" in write["reason"]
