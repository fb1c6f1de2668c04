"""Helpers for sender tests: an in-memory Twilio, a world of tenants and runs, instances on threads."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from cryptography.fernet import Fernet

from libs.common.broker import QUEUE_IMIS, Delivery, MemoryBroker, MemoryServer, tenant_jobs_queue
from libs.common.crypto import SecretBox
from libs.common.imis_queue import tenant_imis_queue
from libs.common.message_ids import MessageIds
from libs.common.notices import Notifier
from libs.common.progress import RunProgress
from libs.common.storage import connect, create_indexes
from libs.common.tenants import Tenant, TenantRepository
from libs.common.twilio_client import CreatedMessage, ListedMessage, TwilioError, TwilioUnavailable
from services.sender.pacing import Pacer
from services.sender.service import Sender

# 2100-01-01T00:00:00Z, as the shared clock fixture starts.
FAKE_START = 4_102_444_800.0
SENDER_NUMBER = "+18885550199"
TWILIO_SID = "AC" + "5e" * 16
TWILIO_TOKEN = "sender-test-token-41c7"
BODY = "Board meeting moved to Friday at 6 pm. Reply STOP to opt out."
# Short delay steps, so that a test on a fake clock advances little.
DELAYS = (1, 5, 30, 120, 600)
WAIT_S = 20.0


def number(index: int) -> str:
    """Return the index-th made-up US number: 100 per area code, in the 555-01xx range."""
    return f"+1{201 + index // 100:03d}55501{index % 100:02d}"


def delivery(job: dict, attempt: int = 1, queue: str | None = None) -> Delivery:
    """Return the delivery of a job from `queue`, by default from its tenant's queue."""
    return Delivery(queue=queue or tenant_jobs_queue(job["tenant_id"]), body=job, headers={}, attempt=attempt,
                    redelivered=False, message_id=job["message_id"])


class SimulatedCrash(BaseException):
    """Stops a handler at once, as a killed process would. It is a BaseException, so the broker does not catch it."""


@dataclass
class Create:
    """One create call that reached the fake Twilio."""

    to: str
    from_: str | None
    body: str
    status_callback: str | None
    sid: str
    at: float


class FakeTwilio:
    """Twilio in memory: records creates with the clock's time, lists them, and fails on request.

    `fail(number, error, ...)` makes the next creates to that number raise the errors in
    turn; `fail_next(error, ...)` does so for the next creates to any number.
    `before_create(fields)` runs before a create is recorded and `after_create(create)`
    after, so a test can stop an instance before, during or after the call.
    """

    def __init__(self, clock):
        self._clock = clock
        self._lock = threading.Lock()
        self.creates: list[Create] = []
        self.calls = 0
        self._by_number: dict[str, list[Exception]] = {}
        self._next: list[Exception] = []
        self.before_create: Callable[[dict], None] | None = None
        self.after_create: Callable[[Create], None] | None = None
        self.list_error: Exception | None = None

    def fail(self, to: str, *errors: Exception) -> None:
        with self._lock:
            self._by_number.setdefault(to, []).extend(errors)

    def fail_next(self, *errors: Exception) -> None:
        with self._lock:
            self._next.extend(errors)

    def create_message(self, *, to, from_=None, messaging_service_sid=None, body, status_callback=None,
                       smart_encoded=False) -> CreatedMessage:
        fields = {"to": to, "from_": from_, "body": body, "status_callback": status_callback}
        with self._lock:
            self.calls += 1
            error = self._next_error(to)
        if error is not None:
            raise error
        if self.before_create is not None:
            self.before_create(fields)
        create = Create(to=to, from_=from_, body=body, status_callback=status_callback,
                        sid="SM" + uuid.uuid4().hex, at=self._clock.time())
        with self._lock:
            self.creates.append(create)
        if self.after_create is not None:
            self.after_create(create)
        return CreatedMessage(sid=create.sid, status="queued", num_segments=1,
                              date_created=datetime.fromtimestamp(create.at, timezone.utc))

    def list_messages(self, *, to, sent_after) -> list[ListedMessage]:
        if self.list_error is not None:
            raise self.list_error
        with self._lock:
            found = [create for create in self.creates if create.to == to]
        return [ListedMessage(sid=create.sid, to=create.to, from_=create.from_, body=create.body, status="queued",
                              date_created=datetime.fromtimestamp(int(create.at), timezone.utc))
                for create in reversed(found)
                if datetime.fromtimestamp(int(create.at), timezone.utc) >= sent_after.replace(microsecond=0)]

    def creates_to(self, to: str) -> int:
        with self._lock:
            return sum(1 for create in self.creates if create.to == to)

    def create_counts(self) -> Counter:
        with self._lock:
            return Counter(create.to for create in self.creates)

    def _next_error(self, to: str) -> Exception | None:
        queued = self._by_number.get(to)
        if queued:
            return queued.pop(0)
        if self._next:
            return self._next.pop(0)
        return None


def twilio_error(code: int | None, http_status: int = 400) -> TwilioError:
    return TwilioError(http_status, code, f"simulated error {code}")


def unavailable() -> TwilioUnavailable:
    return TwilioUnavailable("simulated timeout")


class SenderWorld:
    """A store, a broker server, tenants, runs and a fake Twilio, for sender instances to share.

    Every instance built here shares the store and the broker server, as instances
    in separate processes share MongoDB and RabbitMQ.
    """

    def __init__(self, clock, *, max_attempts: int = 5):
        self.clock = clock
        self.db = connect(f"mongomock://localhost/sender_{uuid.uuid4().hex[:8]}")
        create_indexes(self.db)
        self.server = MemoryServer(clock)
        self.secret_key = Fernet.generate_key().decode()
        self.secrets = SecretBox(self.secret_key)
        self.tenants = TenantRepository(self.db, self.secrets)
        self.message_ids = MessageIds.from_secrets(self.secrets)
        self.notifier = Notifier(self.db, clock=clock)
        self.progress = RunProgress(self.db, clock)
        self.twilio = FakeTwilio(clock)
        self.max_attempts = max_attempts
        self._brokers: list[MemoryBroker] = []

    def tenant(self, cloud_id: str = "ACME", **overrides) -> Tenant:
        values = dict(cloud_id=cloud_id, name=f"{cloud_id} Association", imis_base_url="http://imis.invalid",
                      imis_username="svc", twilio_account_sid=TWILIO_SID, twilio_auth_token=TWILIO_TOKEN,
                      sender_number=SENDER_NUMBER, default_email=f"admin@{cloud_id.lower()}.example")
        values.update(overrides)
        tenant = Tenant(**values)
        self.tenants.save(tenant)
        return tenant

    def run(self, tenant: Tenant, count: int, *, body: str = BODY, segments: int = 1, status: str = "sending",
            first: int = 0) -> list[dict]:
        """Create a campaign and an expanded run of `count` recipients; return its jobs."""
        run_id = uuid.uuid4().hex
        campaign_id = f"c-{run_id[:8]}"
        self.db.campaigns.insert_one({"_id": campaign_id, "tenant_id": tenant.cloud_id, "name": "Board meeting",
                                      "email": "staff@example.org", "status": status, "current_run_id": run_id})
        counts = {name: 0 for name in ("recipients", "sent", "delivered", "failed", "opted_out", "skipped", "done")}
        counts["recipients"] = count
        self.db.runs.insert_one({"_id": run_id, "tenant_id": tenant.cloud_id, "campaign_id": campaign_id,
                                 "status": status, "expanded": True, "counts": counts})
        return [{"tenant_id": tenant.cloud_id, "campaign_id": campaign_id, "run_id": run_id,
                 "message_id": self.message_ids.build(run_id, number(first + index)),
                 "member_id": str(10000 + first + index),
                 "to": number(first + index), "body": body, "segments": segments, "encoding": "GSM-7"}
                for index in range(count)]

    def broker(self) -> MemoryBroker:
        broker = MemoryBroker(server=self.server, max_attempts=self.max_attempts, retry_delays_s=DELAYS)
        self._brokers.append(broker)
        return broker

    def sender(self, broker, **overrides) -> Sender:
        options = dict(broker=broker, tenants=self.tenants, twilio_factory=lambda sid, token: self.twilio,
                       pacer=Pacer(self.db, self.clock), notifier=self.notifier, clock=self.clock,
                       public_callback_url="https://feedback.example.org", lease_s=60.0)
        options.update(overrides)
        return Sender(self.db, **options)

    def publish(self, broker, jobs: list[dict], queue: str | None = None) -> None:
        """Publish the jobs to `queue`, by default each to its tenant's queue."""
        for job in jobs:
            broker.publish(queue or tenant_jobs_queue(job["tenant_id"]), job, message_id=job["message_id"])

    def take_imis_jobs(self, tenant_id: str = "ACME") -> list[dict]:
        """Return and remove the jobs in the tenant's partition of `tm.imis`, after checking that `tm.imis` has none."""
        assert self.server.take(QUEUE_IMIS, 100) == [], f"iMIS jobs were published to {QUEUE_IMIS} itself"
        partition = tenant_imis_queue(tenant_id)
        self.server.declare_partition("", partition, DELAYS)
        return [json.loads(message.payload) for message in self.server.take(partition, 100)]

    def message(self, job: dict) -> dict:
        return self.db.messages.find_one({"_id": job["message_id"]})

    def statuses(self, run_id: str) -> Counter:
        return Counter(document["status"] for document in self.db.messages.find({"run_id": run_id}))

    def run_document(self, run_id: str) -> dict:
        return self.db.runs.find_one({"_id": run_id})

    def close(self) -> None:
        for broker in self._brokers:
            broker.close()


class Instance:
    """One sender instance on threads: its own broker connection and workers on one queue.

    `crash()` abandons the broker and makes every handler of this instance stop at its
    next checkpoint, as a killed process would. The store and other instances go on.
    """

    def __init__(self, world: SenderWorld, queue: str, *, workers: int = 1, prefetch: int = 1, **sender_options):
        self.world = world
        self.queue = queue
        self.broker = world.broker()
        self.crashed = threading.Event()
        self.stop = threading.Event()
        self.sender = world.sender(self.broker, checkpoint=self._checkpoint, stopping=self.stop, **sender_options)
        self._threads = [threading.Thread(target=self._consume, args=(prefetch,), name=f"instance worker {n}",
                                          daemon=True) for n in range(workers)]
        self.errors: list[BaseException] = []

    def start(self) -> Instance:
        for thread in self._threads:
            thread.start()
        return self

    def crash(self) -> None:
        if not self.crashed.is_set():
            self.crashed.set()
            self.broker.abandon()

    def crash_here(self) -> None:
        """Crash the instance and stop the calling handler at once."""
        self.crash()
        raise SimulatedCrash()

    def join(self, timeout_s: float = WAIT_S) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout_s)
            assert not thread.is_alive(), "a sender worker did not stop"

    def _checkpoint(self, step: str) -> None:
        if self.crashed.is_set():
            raise SimulatedCrash()

    def _consume(self, prefetch: int) -> None:
        try:
            self.broker.consume(self.queue, self.sender.handle, prefetch=prefetch, stop=self.stop)
        except SimulatedCrash:
            pass
        except BaseException as error:
            if not self.crashed.is_set():
                self.errors.append(error)
