"""Fetch the next IQA page on a helper thread while the current page is processed."""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_END = object()
_PUT_TIMEOUT_S = 0.1


@contextlib.contextmanager
def prefetched(items: Iterable[T], *, name: str) -> Iterator[Iterator[T]]:
    """Run `items` on a daemon thread that stays at most two items ahead of the consumer.

    The thread asks for the next item only after it handed over the one before, so
    calls to iMIS stay serial. An exception from `items` is raised to the consumer in
    place of the item it was fetching. Leaving the block tells the thread to stop
    once its call in flight returns. The log context of the caller is copied to the
    thread, so its log lines keep the tenant and run ids.
    """
    handoff: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(_produce, items, handoff, stop), name=name, daemon=True)
    thread.start()
    try:
        yield _consume(handoff)
    finally:
        stop.set()


def _produce(items: Iterable, handoff: queue.Queue, stop: threading.Event) -> None:
    try:
        for item in items:
            if not _put(handoff, (item, None), stop):
                return
    except BaseException as error:  # handed to the consumer, which raises it
        _put(handoff, (_END, error), stop)
        return
    _put(handoff, (_END, None), stop)


def _consume(handoff: queue.Queue) -> Iterator:
    while True:
        item, error = handoff.get()
        if error is not None:
            raise error
        if item is _END:
            return
        yield item


def _put(handoff: queue.Queue, entry: tuple, stop: threading.Event) -> bool:
    """Hand an entry over; return False when the consumer left first."""
    while not stop.is_set():
        try:
            handoff.put(entry, timeout=_PUT_TIMEOUT_S)
            return True
        except queue.Full:
            continue
    return False
