"""The scheduler requests the iMIS log again for sent texts whose log event was lost."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from libs.common.imis_queue import tenant_imis_queue
from services.scheduler.service import Scheduler
from services.scheduler.text_logs import GRACE, LOOK_BACK, REQUEST_AGAIN_AFTER, SWEEP_EVERY, UnloggedTexts

QUEUE = tenant_imis_queue("ACME")


@pytest.fixture
def sweeper(runtime):
    return UnloggedTexts(runtime.db, broker=runtime.broker, clock=runtime.clock)


def sent_text(runtime, message_id: str, *, sent_ago: timedelta, **fields) -> None:
    runtime.db.messages.insert_one({
        "_id": message_id, "tenant_id": "ACME", "campaign_id": "c1", "run_id": "r1", "member_id": "1001",
        "to": "+12025550142", "body": "Hello", "segments": 1, "encoding": "GSM-7", "status": "delivered",
        "sent_at": runtime.clock.now() - sent_ago, **fields,
    })


def requested(runtime) -> list[str]:
    """Return the message ids of the log events waiting in the tenant's iMIS queue, and remove them."""
    try:
        taken = runtime.broker.server.take(QUEUE, 100)
    except KeyError:  # nothing was ever published to the tenant's queue
        taken = []
    return [json.loads(message.payload)["message_id"] for message in taken]


def test_lost_event_requested_again(runtime, sweeper):
    sent_text(runtime, "r1:a", sent_ago=GRACE + timedelta(minutes=1))

    count = sweeper.sweep()

    assert count == 1
    assert requested(runtime) == ["r1:a"]
    assert runtime.db.messages.find_one({"_id": "r1:a"})["imis_log_requested_at"] is not None


@pytest.mark.parametrize("sent_ago", [GRACE - timedelta(minutes=1), LOOK_BACK + timedelta(minutes=1)],
                         ids=["too-recent", "too-old"])
def test_outside_window_left_alone(runtime, sweeper, sent_ago):
    sent_text(runtime, "r1:a", sent_ago=sent_ago)

    assert sweeper.sweep() == 0


@pytest.mark.parametrize("imis_log, expected", [
    ({"status": "written", "kind": "interaction", "key": "42"}, 0),
    ({"status": "off"}, 0),
    ({"status": "failed", "error": "RecipientId is required"}, 0),
    ({"status": "missing", "reason": "the event was not published"}, 1),
], ids=["written", "off", "failed", "missing"])
def test_only_unlogged_texts_requested(runtime, sweeper, imis_log, expected):
    sent_text(runtime, "r1:a", sent_ago=GRACE * 2, imis_log=imis_log)

    assert sweeper.sweep() == expected


def test_requested_again_only_after_an_hour(runtime, sweeper):
    sent_text(runtime, "r1:a", sent_ago=GRACE * 2)
    sweeper.sweep()
    requested(runtime)

    runtime.clock.advance(REQUEST_AGAIN_AFTER.total_seconds() - 60)
    early = sweeper.sweep()
    runtime.clock.advance(60)
    late = sweeper.sweep()

    assert early == 0
    assert late == 1
    assert requested(runtime) == ["r1:a"]


def test_sweeps_at_most_every_interval(runtime, sweeper):
    sweeper.sweep_if_due()
    sent_text(runtime, "r1:a", sent_ago=GRACE * 2)

    before = sweeper.sweep_if_due()
    runtime.clock.advance(SWEEP_EVERY.total_seconds())
    after = sweeper.sweep_if_due()

    assert before == 0
    assert after == 1


def test_other_tenants_texts_go_to_their_queue(runtime, sweeper):
    sent_text(runtime, "r2:b", sent_ago=GRACE * 2, tenant_id="OTHER")

    sweeper.sweep()

    assert requested(runtime) == []
    other = runtime.broker.server.take(tenant_imis_queue("OTHER"), 10)
    assert [json.loads(message.payload)["tenant_id"] for message in other] == ["OTHER"]


def test_scheduler_tick_sweeps(runtime):
    sent_text(runtime, "r1:a", sent_ago=GRACE * 2)

    Scheduler(runtime.db, broker=runtime.broker, clock=runtime.clock).tick()

    assert requested(runtime) == ["r1:a"]
