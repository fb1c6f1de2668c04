"""prefetched(): the helper thread that fetches the next IQA page while one is processed."""

import threading
import time

import pytest

from libs.common.logs import current_context, log_context
from services.recipients.prefetch import prefetched


def test_items_in_order():
    with prefetched(iter(range(100)), name="test") as items:
        assert list(items) == list(range(100))


def test_empty_iterable():
    with prefetched([], name="test") as items:
        assert list(items) == []


def test_error_raised_in_place():
    def pages():
        yield 1
        yield 2
        raise ConnectionError("page 3 failed")

    received = []
    with prefetched(pages(), name="test") as items:
        with pytest.raises(ConnectionError, match="page 3"):
            for item in items:
                received.append(item)
    assert received == [1, 2]


def test_runs_on_other_thread():
    threads = []

    def pages():
        threads.append(threading.current_thread())
        yield 1

    with prefetched(pages(), name="prefetch-test") as items:
        list(items)
    assert threads[0] is not threading.current_thread()
    assert threads[0].name == "prefetch-test"


def wait_for(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def counting_pages(fetched: list[int]):
    for number in range(50):
        fetched.append(number)
        yield number


def test_stays_two_ahead_at_most():
    fetched: list[int] = []
    with prefetched(counting_pages(fetched), name="test") as items:
        assert next(items) == 0
        wait_for(lambda: len(fetched) >= 3)
        time.sleep(0.2)
        assert fetched == [0, 1, 2]


def test_stops_when_consumer_leaves():
    fetched: list[int] = []
    with prefetched(counting_pages(fetched), name="prefetch-stop-test") as items:
        next(items)
    producers = [thread for thread in threading.enumerate() if thread.name == "prefetch-stop-test"]
    for thread in producers:
        thread.join(timeout=5)
    assert not any(thread.is_alive() for thread in producers)
    assert len(fetched) <= 3


def test_log_context_carried():
    seen = []

    def pages():
        seen.append(current_context())
        yield 1

    with log_context(tenant_id="ACME", run_id="r1"):
        with prefetched(pages(), name="test") as items:
            list(items)
    assert seen[0]["tenant_id"] == "ACME"
    assert seen[0]["run_id"] == "r1"
