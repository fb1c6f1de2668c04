"""Logging sent texts in iMIS through the iMIS simulator over real HTTP: interactions and TEXTMSG activities."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import requests
from cryptography.fernet import Fernet

from libs.common.broker import QUEUE_IMIS, Delivery, MemoryBroker, Reject
from libs.common.clock import FakeClock
from libs.common.crypto import SecretBox
from libs.common.imis import ImisClient, ImisNotSupported, ImisRequestError, ImisSession
from libs.common.imis_log import SMS_MESSAGE_TYPE, TEXT_MANAGER_CATEGORY, TEXTMSG, body_as_html
from libs.common.runtime import build_runtime
from libs.common.settings import Settings
from libs.common.tenants import Tenant
from local.simulators.imis import ImisSimulator
from services.feedback.service import ImisWriter

USER = "textmanager-svc"
PASSWORD = "svc-secret"
MEMBER_ID = "10045"
NUMBER = "+12025550142"
BODY = "Board meeting moved to Friday, 6 pm <main hall>.\nReply STOP to opt out."
SENT_AT = datetime(2027, 3, 15, 16, 0, 5, tzinfo=timezone.utc)
# The simulator dates an interaction when it is written; its clock runs a little after the send.
WRITE_TIME = SENT_AT + timedelta(seconds=2)


@pytest.fixture
def sim():
    simulator = ImisSimulator({USER: PASSWORD}, clock=lambda: WRITE_TIME)
    simulator.start()
    yield simulator
    simulator.stop()


@pytest.fixture
def session(sim):
    with ImisClient(sim.url, timeout_s=5.0, sleep=lambda _seconds: None) as client:
        yield ImisSession(client, USER, PASSWORD)


@pytest.fixture
def world(sim):
    """A runtime on mongomock whose tenant ACME uses the simulator, an ImisWriter, and one sent text."""
    clock = FakeClock(start=(SENT_AT + timedelta(seconds=1)).timestamp())
    runtime = build_runtime(Settings(), broker=MemoryBroker(), clock=clock,
                            secrets=SecretBox(Fernet.generate_key().decode()))
    runtime.tenants.save(Tenant(
        cloud_id="ACME", name="Acme Association", imis_base_url=sim.url, imis_username=USER, imis_password=PASSWORD,
        twilio_account_sid="AC" + "7e" * 16, twilio_auth_token="acme-token", sender_number="+18885550199",
        default_email="admin@acme.example",
    ))
    runtime.db.campaigns.insert_one({"_id": "c1", "tenant_id": "ACME", "name": "Board meeting"})
    writer = ImisWriter(runtime.db, tenants=runtime.tenants, imis_factory=runtime.imis, clock=clock,
                        notifier=runtime.notifier)
    yield runtime, writer
    runtime.broker.close()


def add_sent_text(runtime, number: str = NUMBER, member_id: str = MEMBER_ID) -> str:
    message_id = runtime.message_ids.build("r1", number)
    runtime.db.messages.insert_one({"_id": message_id, "tenant_id": "ACME", "run_id": "r1", "campaign_id": "c1",
                                    "to": number, "member_id": member_id, "body": BODY, "status": "sent",
                                    "sid": "SM" + "ab" * 16, "sent_at": SENT_AT})
    return message_id


def sent_delivery(message_id: str, number: str = NUMBER, attempt: int = 1) -> Delivery:
    body = {"kind": "sent", "tenant_id": "ACME", "message_id": message_id, "number": number,
            "member_ids": [MEMBER_ID], "sent_at": SENT_AT.isoformat()}
    return Delivery(queue=QUEUE_IMIS, body=body, headers={}, attempt=attempt, redelivered=attempt > 1,
                    message_id=f"sent:{message_id}")


def imis_log(runtime, message_id: str) -> dict | None:
    return runtime.db.messages.find_one({"_id": message_id}).get("imis_log")


# ------------------------------------------------------------------ the client against the simulator


def test_interaction_stored(session, sim):
    key = session.create_communication_log(recipient_id=MEMBER_ID, subject="Text Manager: Board meeting",
                                           html=body_as_html(BODY), message_type=SMS_MESSAGE_TYPE)

    stored = sim.communication_log()
    assert len(stored) == 1
    assert stored[0]["key"] == key
    assert stored[0]["recipient_id"] == MEMBER_ID
    assert stored[0]["subject"] == "Text Manager: Board meeting"
    assert stored[0]["html"] == body_as_html(BODY)
    assert stored[0]["message_type"] == SMS_MESSAGE_TYPE
    assert datetime.fromisoformat(stored[0]["created_at"]) == WRITE_TIME


def test_interaction_keys_differ(session):
    first = session.create_communication_log(recipient_id=MEMBER_ID, subject="S", html="a", message_type=1)
    second = session.create_communication_log(recipient_id="10046", subject="S", html="b", message_type=1)

    assert first != second


def test_interactions_listed(session, sim):
    session.create_communication_log(recipient_id=MEMBER_ID, subject="S", html="a", message_type=1)
    session.create_communication_log(recipient_id="10046", subject="S", html="b", message_type=1)

    response = session.call("GET", "api/CommunicationLog", query={"RecipientId": MEMBER_ID})
    listed = requests.get(f"{sim.url}/_sim/communication-log", timeout=5).json()

    assert response.status_code == 200
    assert response.json()["TotalCount"] == 1
    assert [entry["recipient_id"] for entry in listed] == [MEMBER_ID, "10046"]


def test_no_communication_log_is_404(session, sim):
    sim.communication_log_missing = True

    with pytest.raises(ImisNotSupported) as raised:
        session.create_communication_log(recipient_id=MEMBER_ID, subject="S", html="a", message_type=1)

    assert "HTTP 404" in raised.value.message
    assert sim.communication_log() == []


def test_communication_log_501(session, sim):
    sim.fail_next("/api/CommunicationLog", 501)

    with pytest.raises(ImisNotSupported) as raised:
        session.create_communication_log(recipient_id=MEMBER_ID, subject="S", html="a", message_type=1)

    assert "HTTP 501" in raised.value.message


def test_interaction_without_subject_rejected(session, sim):
    with pytest.raises(ImisRequestError) as raised:
        session.create_communication_log(recipient_id=MEMBER_ID, subject="", html="a", message_type=1)

    assert "Subject is required." in raised.value.errors
    assert sim.communication_log() == []


def test_interaction_after_revoked_token(session, sim):
    session.create_communication_log(recipient_id=MEMBER_ID, subject="S", html="a", message_type=1)
    sim.revoke_tokens()

    session.create_communication_log(recipient_id=MEMBER_ID, subject="S", html="b", message_type=1)

    assert len(sim.communication_log()) == 2


def test_activity_note_round_trip(session, sim):
    seqn = session.create_activity(party_id=MEMBER_ID, activity_type=TEXTMSG, transaction_date=SENT_AT,
                                   category=TEXT_MANAGER_CATEGORY, uf_1=NUMBER, note=BODY)

    found = session.find_activities(MEMBER_ID, TEXTMSG)
    assert sim.activities()[0]["note"] == BODY
    assert [activity["seqn"] for activity in found] == [seqn]
    assert found[0]["note"] == BODY
    assert found[0]["transaction_date"] == "2027-03-15T16:00:05"


# ------------------------------------------------------------------ the iMIS writer against the simulator


def test_writer_logs_interaction(world, sim):
    runtime, writer = world
    message_id = add_sent_text(runtime)

    writer.handle(sent_delivery(message_id))

    stored = sim.communication_log()
    assert len(stored) == 1
    assert stored[0]["recipient_id"] == MEMBER_ID
    assert stored[0]["subject"] == "Text Manager: Board meeting"
    assert stored[0]["html"] == body_as_html(BODY)
    assert sim.activities() == []
    log = imis_log(runtime, message_id)
    assert log["status"] == "written"
    assert log["kind"] == "interaction"
    assert log["key"] == stored[0]["key"]


def test_writer_redelivery_writes_once(world, sim):
    runtime, writer = world
    message_id = add_sent_text(runtime)

    writer.handle(sent_delivery(message_id))
    writer.handle(sent_delivery(message_id, attempt=2))

    assert len(sim.communication_log()) == 1


def test_writer_falls_back_to_textmsg(world, sim):
    runtime, writer = world
    sim.communication_log_missing = True
    first = add_sent_text(runtime)
    second = add_sent_text(runtime, number="+12025550143", member_id="10046")

    writer.handle(sent_delivery(first))
    writer.handle(sent_delivery(second, number="+12025550143"))

    activities = sim.activities()
    assert [activity["activity_type"] for activity in activities] == [TEXTMSG, TEXTMSG]
    assert activities[0]["party_id"] == MEMBER_ID
    assert activities[0]["uf_1"] == NUMBER
    assert activities[0]["category"] == TEXT_MANAGER_CATEGORY
    assert activities[0]["note"] == BODY
    assert activities[0]["transaction_date"] == "2027-03-15T16:00:05"
    assert imis_log(runtime, first)["fallback"] is True
    assert imis_log(runtime, first)["key"] == activities[0]["seqn"]
    assert runtime.db.notifications.count_documents({"tenant_id": "ACME"}) == 1
    posts = [entry for entry in sim.request_log() if entry["path"] == "/api/CommunicationLog"]
    assert [entry["status"] for entry in posts] == [404]


def test_writer_activity_setting(world, sim):
    runtime, writer = world
    runtime.tenants.update("ACME", {"imis_text_log": "activity"})
    message_id = add_sent_text(runtime)

    writer.handle(sent_delivery(message_id))

    assert sim.communication_log() == []
    assert [activity["activity_type"] for activity in sim.activities()] == [TEXTMSG]
    assert imis_log(runtime, message_id)["fallback"] is False


def test_writer_off_setting(world, sim):
    runtime, writer = world
    runtime.tenants.update("ACME", {"imis_text_log": "off"})
    message_id = add_sent_text(runtime)

    writer.handle(sent_delivery(message_id))

    assert sim.communication_log() == []
    assert sim.activities() == []
    assert [entry for entry in sim.request_log() if entry["path"].startswith("/api/")] == []
    assert imis_log(runtime, message_id)["status"] == "off"


def test_writer_missing_activity_type(world, sim):
    runtime, writer = world
    runtime.tenants.update("ACME", {"imis_text_log": "activity"})
    sim.activity_types.discard(TEXTMSG)
    message_id = add_sent_text(runtime)

    with pytest.raises(Reject):
        writer.handle(sent_delivery(message_id))

    log = imis_log(runtime, message_id)
    assert log["status"] == "failed"
    assert "TEXTMSG" in log["error"]
    assert "Activity Types" in log["error"]
    assert sim.activities() == []
