"""Run the whole product in one process: five services, both simulators, demo data.

This is the embedded default: the in-process broker (or RabbitMQ when `broker_url`
starts with amqp://) and the mongomock store, shared by every service in the process.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import requests
from werkzeug.serving import make_server

from libs.common.broker import create_broker
from libs.common.runtime import Runtime, build_runtime
from libs.common.settings import Settings
from libs.common.tenants import Tenant
from local import demo_data
from local.simulators.imis import ImisSimulator
from local.simulators.twilio import TwilioSimulator
from services.feedback.app import create_app as create_feedback_app
from services.feedback.main import start_imis_writer
from services.gateway.app import create_app as create_gateway_app
from services.recipients.main import start as start_recipients
from services.scheduler.main import run as run_scheduler
from services.sender.main import start as start_sender

logger = logging.getLogger(__name__)

DEMO_CLOUD_ID = "DEMO"
DEMO_TWILIO_SID = "AC" + "d3" * 16
DEMO_TWILIO_TOKEN = "demo-auth-token-0123456789abcdef"
DEMO_SENDER = "+18885550100"


class _Server:
    """A WSGI app on its own thread, bound to 127.0.0.1."""

    def __init__(self, app, port: int):
        self._server = make_server("127.0.0.1", port, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"http-{self._server.server_port}",
                                        daemon=True)

    def start(self) -> "_Server":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()


class Stack:
    """Every part of Text Manager, started and stopped together."""

    def __init__(self, *, port: int = 0, broker_url: str = "memory://", queue_prefix: str = "",
                 sender_rate_sps: float = 3.0, sender_workers: int = 4, scheduler_poll_s: float = 0.2,
                 callback_delay_s: float = 0.05, settings: Settings | None = None, clock=None):
        self.port = port
        self.broker_url = broker_url
        self.queue_prefix = queue_prefix
        self.sender_rate_sps = sender_rate_sps
        self.sender_workers = sender_workers
        self.scheduler_poll_s = scheduler_poll_s
        self.callback_delay_s = callback_delay_s
        self.base_settings = settings or Settings()
        self.clock = clock
        self.stop_event = threading.Event()
        self.imis = ImisSimulator()
        self.twilio = TwilioSimulator(accounts={DEMO_TWILIO_SID: DEMO_TWILIO_TOKEN}, callback_delay_s=callback_delay_s)
        self.runtime: Runtime | None = None
        self._servers: list[_Server] = []
        self._threads: list = []

    def start(self) -> "Stack":
        imis_url = self.imis.start()
        twilio_url = self.twilio.start()
        demo_data.seed_imis(self.imis)

        broker = create_broker(self.broker_url, queue_prefix=self.queue_prefix)
        # The feedback server is bound first because its URL goes into the settings
        # that build the app it serves.
        feedback_app = {}
        feedback = _Server(lambda environ, start_response: feedback_app["app"](environ, start_response), 0)
        settings = dataclasses.replace(
            self.base_settings, broker_url=self.broker_url, twilio_base_url=twilio_url,
            public_callback_url=feedback.url, scheduler_poll_s=self.scheduler_poll_s,
            sender_workers=self.sender_workers,
        )
        self.runtime = build_runtime(settings, broker=broker, clock=self.clock)
        self._seed_tenant(imis_url)

        feedback_app["app"] = create_feedback_app(self.runtime)
        feedback.start()
        gateway = _Server(create_gateway_app(self.runtime), self.port).start()
        self._servers = [gateway, feedback]
        self.gateway_url, self.feedback_url = gateway.url, feedback.url
        self.twilio.set_inbound_url(DEMO_SENDER, f"{feedback.url}/twilio/inbound/{DEMO_CLOUD_ID}")

        scheduler = threading.Thread(target=run_scheduler, args=(self.runtime, self.stop_event), name="scheduler",
                                     daemon=True)
        scheduler.start()
        self._threads = [scheduler, start_recipients(self.runtime, self.stop_event),
                         start_sender(self.runtime, self.stop_event), start_imis_writer(self.runtime, self.stop_event)]
        self._wait_until_healthy()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout=10)
        for server in self._servers:
            server.stop()
        self.twilio.stop()
        self.imis.stop()
        if self.runtime is not None:
            self.runtime.broker.close()

    def _seed_tenant(self, imis_url: str) -> None:
        username, password = demo_data.DEMO_SERVICE_USER
        self.runtime.tenants.save(Tenant(
            cloud_id=DEMO_CLOUD_ID, name="Demo Association", imis_base_url=imis_url, imis_username=username,
            imis_password=password, twilio_account_sid=DEMO_TWILIO_SID, twilio_auth_token=DEMO_TWILIO_TOKEN,
            sender_number=DEMO_SENDER, sender_rate_sps=self.sender_rate_sps,
            default_country=demo_data.DEMO_DEFAULT_COUNTRY, default_email="admin@demo-association.example",
            admins=demo_data.DEMO_ADMINS,
        ))
        self.twilio.set_opted_out(demo_data.DEMO_TWILIO_OPTED_OUT)
        self.twilio.set_undelivered(dict(demo_data.DEMO_UNDELIVERED))

    def _wait_until_healthy(self, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if all(requests.get(f"{url}/healthz", timeout=1).ok for url in (self.gateway_url, self.feedback_url)):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError("the gateway or feedback service did not respond to /healthz within 15 s; see the log above for the error")
