"""The scheduler turns each due occurrence of a recurring campaign into exactly one run."""

from datetime import datetime, timedelta, timezone

from libs.common.broker import QUEUE_RUNS
from services.scheduler.service import Scheduler

START = datetime(2027, 1, 4, 13, 55, tzinfo=timezone.utc)
RULE = {"freq": "daily", "time": "09:00", "tz": "America/New_York", "start": "2027-01-04"}


def make_campaign(db, **changes):
    campaign = {"_id": "c1", "tenant_id": "T1", "name": "Daily reminder", "status": "scheduled",
                "schedule": dict(RULE), "schedule_active": True,
                "next_occurrence": datetime(2027, 1, 4, 14, 0, tzinfo=timezone.utc)}
    campaign.update(changes)
    db.campaigns.insert_one(campaign)
    return campaign


def test_occurrence_not_due_creates_nothing(db, broker, clock):
    clock.advance(START.timestamp() - clock.time())
    make_campaign(db)

    Scheduler(db, broker=broker, clock=clock).tick()

    assert db.runs.count_documents({}) == 0


def test_due_occurrence_creates_one_run(db, broker, clock):
    clock.advance(START.timestamp() - clock.time() + 5 * 60)
    make_campaign(db)
    scheduler = Scheduler(db, broker=broker, clock=clock)

    scheduler.tick()
    scheduler.tick()

    runs = list(db.runs.find({}))
    assert [run["_id"] for run in runs] == ["c1-20270104T140000Z"]
    assert runs[0]["status"] == "queued"
    assert broker.queue_depth(QUEUE_RUNS) == 1


def test_next_occurrence_moves_to_following_day(db, broker, clock):
    clock.advance(START.timestamp() - clock.time() + 5 * 60)
    make_campaign(db)

    Scheduler(db, broker=broker, clock=clock).tick()

    campaign = db.campaigns.find_one({"_id": "c1"})
    assert campaign["next_occurrence"] == datetime(2027, 1, 5, 14, 0, tzinfo=timezone.utc)
    assert campaign["current_run_id"] == "c1-20270104T140000Z"


def test_run_created_again_after_crash_is_one_run(db, broker, clock):
    clock.advance(START.timestamp() - clock.time() + 5 * 60)
    make_campaign(db)
    db.runs.insert_one({"_id": "c1-20270104T140000Z", "tenant_id": "T1", "campaign_id": "c1", "status": "queued",
                        "due_at": datetime(2027, 1, 4, 14, 0, tzinfo=timezone.utc)})

    Scheduler(db, broker=broker, clock=clock).tick()

    assert db.runs.count_documents({}) == 1
    assert db.campaigns.find_one({"_id": "c1"})["next_occurrence"].day == 5


def test_missed_occurrence_is_recorded_not_sent(db, broker, clock):
    clock.advance(START.timestamp() - clock.time() + timedelta(hours=3).total_seconds())
    make_campaign(db)

    Scheduler(db, broker=broker, clock=clock).tick()

    campaign = db.campaigns.find_one({"_id": "c1"})
    assert db.runs.count_documents({}) == 0
    assert campaign["missed_occurrences"] == [datetime(2027, 1, 4, 14, 0, tzinfo=timezone.utc)]
    assert campaign["next_occurrence"] == datetime(2027, 1, 5, 14, 0, tzinfo=timezone.utc)


def test_last_occurrence_ends_schedule(db, broker, clock):
    clock.advance(START.timestamp() - clock.time() + 5 * 60)
    make_campaign(db, schedule=dict(RULE, end="2027-01-04"))

    Scheduler(db, broker=broker, clock=clock).tick()

    campaign = db.campaigns.find_one({"_id": "c1"})
    assert campaign["schedule_active"] is False
    assert campaign["next_occurrence"] is None


def test_inactive_schedule_creates_nothing(db, broker, clock):
    clock.advance(START.timestamp() - clock.time() + 5 * 60)
    make_campaign(db, schedule_active=False)

    Scheduler(db, broker=broker, clock=clock).tick()

    assert db.runs.count_documents({}) == 0


def test_occurrence_skipped_while_earlier_run_sends(db, broker, clock):
    clock.advance(START.timestamp() - clock.time() + 5 * 60)
    make_campaign(db, current_run_id="c1-20270103T140000Z")
    db.runs.insert_one({"_id": "c1-20270103T140000Z", "tenant_id": "T1", "campaign_id": "c1", "status": "sending",
                        "due_at": datetime(2027, 1, 3, 14, 0, tzinfo=timezone.utc)})

    Scheduler(db, broker=broker, clock=clock).tick()

    campaign = db.campaigns.find_one({"_id": "c1"})
    skipped = campaign["skipped_occurrences"]
    assert db.runs.count_documents({}) == 1
    assert [entry["at"] for entry in skipped] == [datetime(2027, 1, 4, 14, 0, tzinfo=timezone.utc)]
    assert "the run of 2027-01-03 14:00 UTC was still sending" in skipped[0]["reason"]
    assert campaign["next_occurrence"] == datetime(2027, 1, 5, 14, 0, tzinfo=timezone.utc)
    assert campaign["current_run_id"] == "c1-20270103T140000Z"


def test_occurrence_runs_after_earlier_run_finished(db, broker, clock):
    clock.advance(START.timestamp() - clock.time() + 5 * 60)
    make_campaign(db, current_run_id="c1-20270103T140000Z")
    db.runs.insert_one({"_id": "c1-20270103T140000Z", "tenant_id": "T1", "campaign_id": "c1", "status": "completed",
                        "due_at": datetime(2027, 1, 3, 14, 0, tzinfo=timezone.utc)})

    Scheduler(db, broker=broker, clock=clock).tick()

    assert db.runs.count_documents({"_id": "c1-20270104T140000Z"}) == 1
    assert "skipped_occurrences" not in db.campaigns.find_one({"_id": "c1"})
