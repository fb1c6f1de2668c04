"""Running a service process: signals, consumer threads and a health endpoint."""

from __future__ import annotations

import json
import logging
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from libs.common.logs import configure_logging
from libs.common.runtime import Runtime, build_runtime
from libs.common.settings import Settings

logger = logging.getLogger(__name__)


def runtime_from_env() -> Runtime:
    """Read the settings, set up logging and connect; the one composition root per process."""
    settings = Settings.from_env()
    configure_logging(settings.log_format, settings.log_level)
    return build_runtime(settings)


def stop_on_signals() -> threading.Event:
    """Return an event that SIGTERM and SIGINT set, so work in flight can finish."""
    stop = threading.Event()

    def on_signal(signum, frame):
        logger.info("received signal %s, stopping after the work in flight", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


class ConsumerGroup:
    """Threads that each consume one queue until `stop` is set."""

    def __init__(self, broker, queue: str, handler: Callable, *, prefetch: int, workers: int, stop: threading.Event,
                 name: str):
        self._threads = [
            threading.Thread(target=self._consume, args=(broker, queue, handler, prefetch, stop),
                             name=f"{name}-{index}", daemon=True)
            for index in range(workers)
        ]
        self._running = 0
        self._lock = threading.Lock()

    @property
    def consuming(self) -> bool:
        with self._lock:
            return self._running > 0

    def start(self) -> "ConsumerGroup":
        for thread in self._threads:
            thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def _consume(self, broker, queue, handler, prefetch, stop) -> None:
        with self._lock:
            self._running += 1
        try:
            broker.consume(queue, handler, prefetch=prefetch, stop=stop)
        except Exception:
            logger.exception("consumer of %s stopped on an error", queue)
            raise
        finally:
            with self._lock:
                self._running -= 1


def serve_health(port: int, is_healthy: Callable[[], bool]) -> ThreadingHTTPServer:
    """Serve `GET /healthz` on the port: 200 when healthy, 503 when not."""

    class HealthHandler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/healthz":
                self.send_error(404)
                return
            healthy = is_healthy()
            body = json.dumps({"status": "ok" if healthy else "not consuming"}).encode()
            self.send_response(200 if healthy else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            return

    server = ThreadingHTTPServer(("0.0.0.0", port), HealthHandler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server


def check_dependencies(runtime: Runtime) -> int:
    """Return 0 when the store and broker respond, for container health checks."""
    try:
        runtime.db.command("ping")
        runtime.broker.queue_depth("tm.runs")
    except Exception as error:
        logger.error("health check failed: %s", error)
        return 1
    return 0
