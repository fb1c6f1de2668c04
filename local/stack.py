"""Run the whole product in one process: five services, both simulators, demo data.

This is the embedded default: the in-process broker (or RabbitMQ when `broker_url`
starts with amqp://) and the mongomock store, shared by every service in the process.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
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
    """A WSGI server on 127.0.0.1, bound when created and serving its app on its own thread once started.

    Binding first gives the URL before the app that needs it is built. Raises OSError
    when the port is in use.
    """

    def __init__(self, port: int):
        # The stack binds the socket itself because werkzeug, binding a port in use,
        # prints its own message and calls sys.exit (werkzeug 3.1, BaseWSGIServer).
        listener = socket.create_server(("127.0.0.1", port))
        bound_port = listener.getsockname()[1]
        try:
            self._server = make_server("127.0.0.1", bound_port, self._serve, threaded=True, fd=listener.fileno())
        finally:
            listener.close()
        self._app = None
        self.url = f"http://127.0.0.1:{bound_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"http-{bound_port}", daemon=True)

    def start(self, app) -> "_Server":
        self._app = app
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, if started, and close the socket."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def _serve(self, environ, start_response):
        return self._app(environ, start_response)


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
        """Start every part and return the stack once both web services respond to /healthz.

        Raises OSError, before anything else starts, when the gateway's port is in use,
        and RuntimeError when a web service does not become healthy.
        """
        # The gateway's port is taken first, so a port in use fails before any thread
        # starts. The feedback server is bound before its app is built, because its URL
        # goes into the settings that build it.
        gateway = _Server(self.port)
        feedback = _Server(0)
        self._servers = [gateway, feedback]
        self.gateway_url, self.feedback_url = gateway.url, feedback.url

        imis_url = self.imis.start()
        twilio_url = self.twilio.start()
        demo_data.seed_imis(self.imis)

        broker = create_broker(self.broker_url, queue_prefix=self.queue_prefix)
        settings = dataclasses.replace(
            self.base_settings, broker_url=self.broker_url, twilio_base_url=twilio_url,
            public_callback_url=feedback.url, scheduler_poll_s=self.scheduler_poll_s,
            sender_workers=self.sender_workers,
        )
        self.runtime = build_runtime(settings, broker=broker, clock=self.clock)
        self._seed_tenant(imis_url)

        feedback.start(create_feedback_app(self.runtime))
        gateway.start(create_gateway_app(self.runtime))
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
