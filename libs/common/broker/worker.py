"""Handler thread for the RabbitMQ consumer, so that its connection's thread stays free."""

from __future__ import annotations

import queue
import threading
from typing import Callable

from .base import Forward


class HandlerJob:
    """One handler call, run on the worker thread and collected by the consumer's thread."""

    def __init__(self, function: Callable[[], Forward | None], wake: Callable[[], None]):
        self.done = threading.Event()
        self._function = function
        self._wake = wake
        self._result: Forward | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._result = self._function()
        except BaseException as error:
            self._error = error
        finally:
            self.done.set()
            self._wake()

    def result(self) -> Forward | None:
        """Return where to forward the message; re-raises what escaped the handler."""
        if self._error is not None:
            raise self._error
        return self._result


class HandlerThread:
    """A daemon thread that runs handlers one at a time, in order.

    The consumer's thread keeps processing the connection's events while a handler
    works, so heartbeats go on through long handlers, and the handler never touches
    the consumer's connection. on_exit runs on this thread when it ends.
    """

    def __init__(self, name: str, on_exit: Callable[[], None]):
        self._jobs: queue.SimpleQueue[HandlerJob | None] = queue.SimpleQueue()
        self._on_exit = on_exit
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, function: Callable[[], Forward | None], wake: Callable[[], None]) -> HandlerJob:
        job = HandlerJob(function, wake)
        self._jobs.put(job)
        return job

    def shutdown(self) -> None:
        """Let the thread end after the job it is running."""
        self._jobs.put(None)

    def _run(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                job.run()
        finally:
            self._on_exit()
