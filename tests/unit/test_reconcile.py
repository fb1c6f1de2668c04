"""Finding an attempt with an unknown outcome in Twilio's message list, and only that attempt."""

from __future__ import annotations

from datetime import timedelta

from libs.common.reconcile import find_created_message
from tests.sender_fixtures import clock, world  # noqa: F401 (fixtures)


def test_attempt_found_by_body_and_sender(world):
    tenant = world.tenant()
    job = world.run(tenant, 1)[0]
    created = world.twilio.create_message(to=job["to"], from_=tenant.sender_number, body=job["body"])

    found = find_created_message(world.twilio, tenant, job, world.clock.now(), db=world.db)

    assert found is not None
    assert found.sid == created.sid


def test_other_runs_text_not_taken(world):
    """The member got the same text from another run a moment ago: that one is not this attempt."""
    tenant = world.tenant()
    job = world.run(tenant, 1)[0]
    earlier = world.twilio.create_message(to=job["to"], from_=tenant.sender_number, body=job["body"])
    world.db.messages.insert_one({"_id": "other-run:token", "tenant_id": tenant.cloud_id, "sid": earlier.sid,
                                  "status": "delivered"})

    found = find_created_message(world.twilio, tenant, job, world.clock.now() - timedelta(seconds=30), db=world.db)

    assert found is None


def test_earlier_failed_attempt_not_taken(world):
    tenant = world.tenant()
    job = world.run(tenant, 1)[0]
    failed = world.twilio.create_message(to=job["to"], from_=tenant.sender_number, body=job["body"])
    world.db.messages.insert_one({"_id": job["message_id"], "tenant_id": tenant.cloud_id, "status": "sending",
                                  "previous_sids": [failed.sid]})

    found = find_created_message(world.twilio, tenant, job, world.clock.now(), db=world.db)

    assert found is None


def test_same_sid_in_other_tenant_ignored(world):
    tenant = world.tenant()
    job = world.run(tenant, 1)[0]
    created = world.twilio.create_message(to=job["to"], from_=tenant.sender_number, body=job["body"])
    world.db.messages.insert_one({"_id": "x", "tenant_id": "OTHER", "sid": created.sid, "status": "delivered"})

    found = find_created_message(world.twilio, tenant, job, world.clock.now(), db=world.db)

    assert found is not None
