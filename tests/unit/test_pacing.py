"""Pacer: segments per second per sender number, even spacing, shared by every instance."""

from __future__ import annotations

import threading
from types import SimpleNamespace
import uuid

import pytest

from libs.common.clock import FakeClock
from libs.common.storage import connect, create_indexes
from libs.common.settings import Settings
from services.sender.main import build_pacer
from services.sender.pacing import Pacer

KEY = "ACME:+18885550199"
# 2100-01-01T00:00:00Z: large epoch values show that slot arithmetic survives float rounding.
FAKE_START = 4_102_444_800.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=FAKE_START)


@pytest.fixture
def db():
    database = connect(f"mongomock://localhost/pacing_{uuid.uuid4().hex[:8]}")
    create_indexes(database)
    return database


def max_in_window(sends: list[tuple[float, int]], window_s: float = 1.0) -> int:
    """Return the most segments sent in any half-open window [t, t + window_s).

    The busiest window can always start at a send, so only those starts are tried.
    """
    ordered = sorted(sends)
    maximum, end, inside = 0, 0, 0
    for start, (at, _) in enumerate(ordered):
        while end < len(ordered) and ordered[end][0] < at + window_s:
            inside += ordered[end][1]
            end += 1
        maximum = max(maximum, inside)
        inside -= ordered[start][1]
    return maximum


def observed_rate(sends: list[tuple[float, int]]) -> float:
    """Return segments per second after the first send: the segments that followed it over the time they took."""
    ordered = sorted(sends)
    return sum(segments for _, segments in ordered[1:]) / (ordered[-1][0] - ordered[0][0])


def send_all(pacer: Pacer, clock, count: int, segments: int, rate: float) -> list[tuple[float, int]]:
    """Wait for each slot in turn, as one worker would; return (time sent, segments) per text."""
    sends = []
    for _ in range(count):
        pacer.wait_for(KEY, segments, rate)
        sends.append((clock.time(), segments))
    return sends


def test_max_in_window_half_open():
    sends = [(0.0, 1), (0.5, 1), (1.0, 1), (1.5, 1)]

    assert max_in_window(sends) == 2


def test_rate_3_one_segment(db, clock):
    sends = send_all(Pacer(db, clock), clock, 300, 1, 3.0)

    assert max_in_window(sends) == 3
    assert 3.0 * 0.98 <= observed_rate(sends) <= 3.0


@pytest.mark.parametrize("margin_ms", ["0", "40"])
def test_margin_setting_widens_window(db, clock, margin_ms):
    settings = Settings.from_env({"TM_SENDER_PACING_MARGIN_MS": margin_ms})
    pacer = build_pacer(SimpleNamespace(db=db, clock=clock, settings=settings))

    slots = [pacer.reserve("+18005550100", 1, 3.0) for _ in range(4)]

    assert slots[3] - slots[0] == pytest.approx(1.0 + int(margin_ms) / 1000)


def test_rate_3_evenly_spaced(db, clock):
    sends = send_all(Pacer(db, clock), clock, 3, 1, 3.0)

    gaps = [later - earlier for (earlier, _), (later, _) in zip(sends, sends[1:])]
    assert gaps == pytest.approx([1 / 3, 1 / 3])


def test_two_segments_to_90(db, clock):
    """A 2-segment text to 90 members at 3 segments per second takes at least 60 s."""
    sends = send_all(Pacer(db, clock), clock, 90, 2, 3.0)

    last_segment_done = sends[-1][0] + 2 / 3.0
    assert last_segment_done - sends[0][0] >= 60.0
    assert max_in_window(sends) <= 3


def test_rate_100(db, clock):
    sends = send_all(Pacer(db, clock), clock, 1000, 1, 100.0)

    assert max_in_window(sends) == 100
    assert 100 * 0.98 <= observed_rate(sends) <= 100


def test_more_segments_than_rate(db, clock):
    """A 3-segment text at 1 segment per second gets a window to itself and 3 s after it."""
    sends = send_all(Pacer(db, clock), clock, 5, 3, 1.0)

    gaps = [later - earlier for (earlier, _), (later, _) in zip(sends, sends[1:])]
    assert gaps == pytest.approx([3.0] * 4)


def test_slot_never_in_past(db, clock):
    pacer = Pacer(db, clock)
    pacer.reserve(KEY, 1, 3.0)
    clock.advance(100)

    assert pacer.reserve(KEY, 1, 3.0) == clock.time()


def test_numbers_paced_apart(db, clock):
    pacer = Pacer(db, clock)
    first = pacer.reserve("ACME:+18885550199", 1, 1.0)

    other = pacer.reserve("BETA:+18885550100", 1, 1.0)

    assert other == first


def test_unlimited_rate_stores_nothing(db, clock):
    slot = Pacer(db, clock).reserve(KEY, 1, float("inf"))

    assert slot == clock.time()
    assert db.rate_windows.count_documents({}) == 0


def test_slow_down_halves_rate(db, clock):
    pacer = Pacer(db, clock)
    pacer.slow_down(KEY, factor=0.5, duration_s=60)

    sends = send_all(pacer, clock, 30, 1, 4.0)

    assert max_in_window(sends) == 2
    assert observed_rate(sends) == pytest.approx(2.0, rel=0.02)


def test_slow_down_ends(db, clock):
    pacer = Pacer(db, clock)
    pacer.slow_down(KEY, factor=0.5, duration_s=10)
    clock.advance(11)

    sends = send_all(pacer, clock, 30, 1, 3.0)

    assert observed_rate(sends) == pytest.approx(3.0, rel=0.02)


def test_instances_share_limit(db, clock):
    """Four instances, each its own Pacer on the shared store, reserve concurrently from one number."""
    slots: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def instance() -> None:
        pacer = Pacer(db, clock)
        start.wait()
        for _ in range(150):
            slot = pacer.reserve(KEY, 1, 10.0)
            with lock:
                slots.append(slot)

    threads = [threading.Thread(target=instance) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    sends = [(slot, 1) for slot in slots]
    assert len(set(slots)) == 600
    assert max_in_window(sends) == 10
    assert 10 * 0.98 <= observed_rate(sends) <= 10


def test_instances_share_limit_while_waiting(db, clock):
    """Instances that sleep until their slots, on a clock every sleep moves forward."""
    sends: list[tuple[float, int]] = []
    lock = threading.Lock()

    def instance() -> None:
        pacer = Pacer(db, clock)
        for _ in range(50):
            slot = pacer.wait_for(KEY, 2, 3.0)
            with lock:
                sends.append((slot, 2))

    threads = [threading.Thread(target=instance) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert len(sends) == 150
    assert max_in_window(sends) <= 3
