"""Fixtures of the sender tests: a clock at FAKE_START, a SenderWorld on it, its tenant and a broker.

A test module imports the ones it uses, and pytest finds them by name.
"""

from __future__ import annotations

import pytest

from libs.common.clock import FakeClock
from tests.sender_support import FAKE_START, SenderWorld


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=FAKE_START)


@pytest.fixture
def world(clock):
    world = SenderWorld(clock)
    yield world
    world.close()


@pytest.fixture
def tenant(world):
    return world.tenant()


@pytest.fixture
def broker(world):
    return world.broker()
