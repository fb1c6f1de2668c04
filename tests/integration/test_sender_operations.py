"""Sender instances against RabbitMQ and the Twilio simulator: lost connections, health, real calls."""

from __future__ import annotations

import logging
import threading
import time
from http.server import ThreadingHTTPServer

import pytest
import requests

from libs.common import process
from libs.common.clock import SystemClock
from libs.common.twilio_client import TwilioGateway
from local.simulators.twilio import TwilioSimulator
from services.sender.main import SenderPool, tenant_rates
from tests.broker_support import AMQP_URL, RabbitHarness
from tests.sender_support import TWILIO_SID, TWILIO_TOKEN, WAIT_S, SenderWorld, delivery


def wait_for(predicate, description: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {description}"
        time.sleep(0.02)


@pytest.fixture
def simulator():
    simulator = TwilioSimulator({TWILIO_SID: TWILIO_TOKEN}, callback_delay_s=3600)
    simulator.start()
    yield simulator
    simulator.stop()


@pytest.fixture
def world(simulator):
    world = SenderWorld(SystemClock())
    yield world
    world.close()


def simulator_gateway(simulator, timeout_s: float = 5.0):
    gateways = {}

    def factory(sid: str, token: str) -> TwilioGateway:
        if (sid, token) not in gateways:
            gateways[sid, token] = TwilioGateway(sid, token, base_url=simulator.url, timeout_s=timeout_s)
        return gateways[sid, token]

    return factory


def creates_per_number(simulator) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in simulator.messages():
        if record["sid"]:
            counts[record["to"]] = counts.get(record["to"], 0) + 1
    return counts


@pytest.mark.rabbitmq
def test_cut_connections_survived(world, simulator, caplog):
    """Consumer connections closed twice mid-run: reconnected, no text lost, none sent twice."""
    harness = RabbitHarness(AMQP_URL)
    try:
        broker = harness.make(reconnect_max_s=1.0)
        queue = harness.partition("ACME")
        tenant = world.tenant(sender_rate_sps=50.0)
        jobs = world.run(tenant, 150)
        broker.publish_many(queue, jobs, message_ids=[job["message_id"] for job in jobs])
        stop = threading.Event()
        sender = world.sender(broker, twilio_factory=simulator_gateway(simulator), stopping=stop)
        run_id = jobs[0]["run_id"]

        def sent() -> int:
            return world.run_document(run_id)["counts"]["sent"]

        with caplog.at_level(logging.WARNING, logger="libs.common.broker"):
            # Four workers keep the test short: rabbitmqctl closes one connection at a time.
            pool = SenderPool(broker, sender.handle, tenant_rates=lambda: tenant_rates(world.db),
                              latency_s=lambda: sender.latency.mean_s, stop=stop, shared_workers=1,
                              max_workers=4).start()
            closed = []
            for threshold in (40, 90):
                wait_for(lambda: sent() >= threshold, f"{threshold} texts are sent")
                closed.append(harness.close_connection(f"{harness.connection_names[0]} consumer {queue}"))
            wait_for(lambda: sent() == 150, "every text is sent")
            wait_for(lambda: broker.queue_depth(queue) == 0, "the queue is empty")
            stop.set()
            pool.join(WAIT_S)
    finally:
        harness.close()

    counts = creates_per_number(simulator)
    assert all(count >= 1 for count in closed)
    assert len(counts) == 150
    assert set(counts.values()) == {1}
    assert world.statuses(run_id) == {"sent": 150}
    assert any("reconnecting in" in record.getMessage() for record in caplog.records)


def test_healthz_says_consuming(world, monkeypatch):
    """`GET /healthz` on the instance's own port: 200 while consuming, 503 once stopped."""
    monkeypatch.setattr(process, "ThreadingHTTPServer",
                        lambda address, handler: ThreadingHTTPServer(("127.0.0.1", address[1]), handler))
    world.tenant()
    broker = world.broker()
    stop = threading.Event()
    sender = world.sender(broker)
    pool = SenderPool(broker, sender.handle, tenant_rates=lambda: tenant_rates(world.db),
                      latency_s=lambda: sender.latency.mean_s, stop=stop, shared_workers=1).start()
    health = process.serve_health(0, lambda: pool.consuming and not stop.is_set())
    url = f"http://127.0.0.1:{health.server_port}/healthz"
    try:
        wait_for(lambda: pool.consuming, "the workers are connected")
        running = requests.get(url, timeout=5)
        stop.set()
        pool.join(WAIT_S)
        stopped = requests.get(url, timeout=5)
    finally:
        health.shutdown()
        health.server_close()

    assert running.status_code == 200
    assert running.json() == {"status": "ok"}
    assert stopped.status_code == 503
    assert stopped.json() == {"status": "not consuming"}


@pytest.mark.parametrize("code, http_status, status", [
    (21211, 400, "skipped"),
    (21614, 400, "skipped"),
    (21408, 400, "skipped"),
    (21606, 400, "paused"),
    (20429, 429, "retrying"),
    (20500, 500, "retrying"),
])
def test_create_errors_over_http(world, simulator, code, http_status, status):
    """Each simulator switch reaches the sender through the twilio library as the right outcome."""
    tenant = world.tenant()
    job = world.run(tenant, 1)[0]
    simulator.set_create_error(job["to"], code, http_status)
    sender = world.sender(world.broker(), twilio_factory=simulator_gateway(simulator))

    try:
        sender.handle(delivery(job))
    except Exception as error:  # a retryable error raises Retry for the broker
        assert status == "retrying", error

    message = world.message(job)
    assert message["status"] == status
    assert message["error_code"] == code


def test_opted_out_over_http(world, simulator):
    tenant = world.tenant()
    job = world.run(tenant, 1)[0]
    simulator.add_opted_out(job["to"])
    sender = world.sender(world.broker(), twilio_factory=simulator_gateway(simulator))

    sender.handle(delivery(job))

    assert world.message(job)["status"] == "opted_out"
    assert world.run_document(job["run_id"])["counts"]["sent"] == 0


def test_bad_credentials_pause_over_http(world, simulator):
    tenant = world.tenant(twilio_auth_token="a-wrong-token")
    job = world.run(tenant, 1)[0]
    sender = world.sender(world.broker(), twilio_factory=simulator_gateway(simulator))

    sender.handle(delivery(job))

    assert world.message(job)["status"] == "paused"
    assert world.message(job)["error_code"] == 20003
    assert world.run_document(job["run_id"])["status"] == "paused"


def test_late_answer_reconciled_over_http(world, simulator):
    """The create times out at the client but reached Twilio: the next attempt finds it in the list."""
    tenant = world.tenant()
    job = world.run(tenant, 1)[0]
    simulator.slow_next(1, 1.0)
    sender = world.sender(world.broker(), twilio_factory=simulator_gateway(simulator, timeout_s=0.3), lease_s=1.5)

    with pytest.raises(Exception, match="Twilio did not answer"):
        sender.handle(delivery(job))
    wait_for(lambda: world.message(job)["claim_until"].timestamp() < time.time(), "the claim's lease lapsed",
             timeout_s=5)
    sender.handle(delivery(job, attempt=2))

    assert creates_per_number(simulator) == {job["to"]: 1}
    assert world.message(job)["status"] == "sent"
    assert world.message(job)["sid"] == simulator.messages()[0]["sid"]
