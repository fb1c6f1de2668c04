"""The dashboard, notice and archive endpoints over HTTP, against the whole running stack."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import requests

from libs.common.clock import FakeClock
from libs.common.tenants import Tenant
from local import demo_data
from local.stack import DEMO_CLOUD_ID, Stack

# 01:00 UTC is 21:00 of the day before in New York (the demo tenant's time zone), so a
# dashboard that counted days in UTC would report the wrong date.
START = datetime(2027, 3, 16, 1, 0, tzinfo=timezone.utc)
LOCAL_DATE = "2027-03-15"
OTHER_CLOUD_ID = "OTHER"
ALL_STATUSES = ("draft", "scheduled", "sending", "paused", "completed", "cancelled", "failed")
ARCHIVABLE = {"draft", "completed", "cancelled", "failed"}
WAIT_S = 60.0
# Twilio error 30006 (landline or unreachable carrier) ends a text at once. The demo's
# 30003 (unreachable handset) earns new attempts minutes apart on the broker's real-time
# delay queues, longer than these tests wait.
FINAL_DELIVERY_ERROR = 30006


class Staff:
    """A signed-in staff member of one tenant, sending the CSRF token with every change."""

    def __init__(self, stack: Stack, cloud_id: str = DEMO_CLOUD_ID):
        self.url = stack.gateway_url
        self.http = requests.Session()
        username, password = demo_data.DEMO_STAFF_USER
        response = self.http.post(f"{self.url}/api/session",
                                  json={"username": username, "password": password, "cloud_id": cloud_id})
        assert response.status_code == 201, response.text
        self.csrf_token = response.json()["csrf_token"]

    def get(self, path: str) -> requests.Response:
        return self.http.get(self.url + path)

    def post(self, path: str, json: dict | None = None, csrf: bool = True) -> requests.Response:
        headers = {"X-CSRF-Token": self.csrf_token} if csrf else {}
        return self.http.post(self.url + path, json=json, headers=headers)

    def create_campaign(self, name: str = "Dashboard test") -> str:
        response = self.post("/api/campaigns", json={"name": name, "body": "Hello {FirstName|member}.",
                                                    "iqa_path": demo_data.DEMO_QUERY_PATH})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def send_and_wait(self, campaign_id: str) -> dict:
        """Send now and return the campaign once it is completed, failed or cancelled."""
        response = self.post(f"/api/campaigns/{campaign_id}/send")
        assert response.status_code == 202, response.text
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            campaign = self.get(f"/api/campaigns/{campaign_id}").json()
            if campaign["status"] in ("completed", "failed", "cancelled"):
                return campaign
            time.sleep(0.05)
        raise AssertionError(f"campaign {campaign_id} did not finish within {WAIT_S} s")


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock(start=START.timestamp())


@pytest.fixture(scope="module")
def stack(clock):
    """The whole product on a fake clock, with a second tenant on the same iMIS."""
    running = Stack(port=0, sender_rate_sps=100, callback_delay_s=0.01, scheduler_poll_s=0.05, clock=clock).start()
    running.twilio.set_undelivered(dict.fromkeys(demo_data.DEMO_UNDELIVERED, FINAL_DELIVERY_ERROR))
    demo = running.runtime.tenants.get(DEMO_CLOUD_ID)
    running.runtime.tenants.save(Tenant(
        cloud_id=OTHER_CLOUD_ID, name="Other Association", imis_base_url=demo.imis_base_url,
        imis_username=demo.imis_username, imis_password=demo.imis_password,
        twilio_account_sid=demo.twilio_account_sid, twilio_auth_token=demo.twilio_auth_token,
        sender_number="+18885550199",
    ))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def staff(stack) -> Staff:
    return Staff(stack)


@pytest.fixture(scope="module")
def other_staff(stack) -> Staff:
    return Staff(stack, OTHER_CLOUD_ID)


@pytest.fixture(scope="module")
def sent_campaign(staff) -> dict:
    """A campaign sent to the demo members, finished."""
    campaign = staff.send_and_wait(staff.create_campaign("Sent to the demo members"))
    assert campaign["status"] == "completed", campaign
    return campaign


def insert_campaign(stack: Stack, status: str, tenant_id: str = DEMO_CLOUD_ID, **fields) -> str:
    """Store a campaign in the given status directly, as the services would leave it."""
    campaign_id = uuid.uuid4().hex
    stack.runtime.db.campaigns.insert_one({
        "_id": campaign_id, "tenant_id": tenant_id, "name": f"A {status} campaign", "body": "Hello.",
        "iqa_path": demo_data.DEMO_QUERY_PATH, "email": "", "phone_column": "Mobile", "id_column": "ID",
        "smart_encoding": False, "status": status, "created_at": START, "updated_at": START,
        "current_run_id": None, **fields,
    })
    return campaign_id


def texts_accepted(stack: Stack) -> int:
    """Count the texts the Twilio simulator accepted (new attempts included)."""
    return sum(1 for message in stack.twilio.messages() if message["sid"])


def messages_with_status(stack: Stack, *statuses: str) -> int:
    return stack.runtime.db.messages.count_documents({"tenant_id": DEMO_CLOUD_ID, "status": {"$in": list(statuses)}})


# ------------------------------------------------------------------ dashboard


def test_dashboard_texts_today(stack, staff, sent_campaign):
    dashboard = staff.get("/api/dashboard").json()

    assert dashboard["local_date"] == LOCAL_DATE
    assert dashboard["timezone"] == "America/New_York"
    assert dashboard["texts_sent"]["today"] == texts_accepted(stack)
    assert dashboard["texts_sent"]["today"] >= sent_campaign["counts"]["sent"]


def test_dashboard_performance_level(staff):
    dashboard = staff.get("/api/dashboard").json()

    assert dashboard["performance_level"] == "Flex-Pay per text usage"


def test_dashboard_month_sums_days(stack, staff, sent_campaign):
    usage = stack.runtime.db.usage
    usage.insert_one({"_id": f"{DEMO_CLOUD_ID}:2027-03-01", "tenant_id": DEMO_CLOUD_ID, "day": "2027-03-01", "count": 40})
    usage.insert_one({"_id": f"{DEMO_CLOUD_ID}:2027-02-28", "tenant_id": DEMO_CLOUD_ID, "day": "2027-02-28", "count": 500})
    usage.insert_one({"_id": f"{OTHER_CLOUD_ID}:2027-03-15", "tenant_id": OTHER_CLOUD_ID, "day": "2027-03-15", "count": 7})
    try:
        dashboard = staff.get("/api/dashboard").json()
    finally:
        usage.delete_many({"_id": {"$in": [f"{DEMO_CLOUD_ID}:2027-03-01", f"{DEMO_CLOUD_ID}:2027-02-28",
                                           f"{OTHER_CLOUD_ID}:2027-03-15"]}})

    assert dashboard["texts_sent"]["this_month"] == texts_accepted(stack) + 40
    assert dashboard["texts_sent"]["today"] == texts_accepted(stack)


def test_dashboard_daily_limit(stack, staff, sent_campaign):
    limit = stack.runtime.tenants.get(DEMO_CLOUD_ID).daily_limit

    daily = staff.get("/api/dashboard").json()["daily_limit"]

    assert daily["limit"] == limit
    assert daily["used"] == texts_accepted(stack)
    assert daily["remaining"] == limit - texts_accepted(stack)


def test_dashboard_lifetime(stack, staff, sent_campaign):
    lifetime = staff.get("/api/dashboard").json()["lifetime"]
    undeliverable = stack.runtime.db.messages.count_documents(
        {"tenant_id": DEMO_CLOUD_ID, "status": "skipped", "sent_at": {"$ne": None}})

    assert lifetime["sent"] == texts_accepted(stack)
    assert lifetime["delivered"] == messages_with_status(stack, "delivered")
    assert lifetime["failed"] == messages_with_status(stack, "failed", "undelivered")
    assert lifetime["undeliverable"] == undeliverable
    assert undeliverable == len(demo_data.DEMO_UNDELIVERED)
    assert lifetime["opted_out"] == messages_with_status(stack, "opted_out")
    assert lifetime["cancelled"] == messages_with_status(stack, "cancelled")


def test_dashboard_lifetime_matches_cards(staff, sent_campaign):
    """The lifetime figures are the campaigns' cards added up, so staff can check one against the other."""
    lifetime = staff.get("/api/dashboard").json()["lifetime"]
    campaigns = staff.get("/api/campaigns").json()["campaigns"]

    for name, total in lifetime.items():
        assert total == sum(campaign["counts"][name] for campaign in campaigns), name


def test_dashboard_lifetime_sums_runs(stack, staff):
    before = staff.get("/api/dashboard").json()["lifetime"]
    runs = stack.runtime.db.runs
    inserted = [runs.insert_one({"_id": uuid.uuid4().hex, "tenant_id": tenant_id, "campaign_id": "0" * 32,
                                 "status": "completed", "counts": counts}).inserted_id
                for tenant_id, counts in [
                    (DEMO_CLOUD_ID, {"sent": 9, "delivered": 5, "failed": 2, "undeliverable": 1, "opted_out": 1}),
                    (DEMO_CLOUD_ID, {"sent": 4, "delivered": 1, "failed": 3, "cancelled": 7}),
                    (OTHER_CLOUD_ID, {"sent": 100, "delivered": 100, "failed": 100, "opted_out": 100})]]

    after = staff.get("/api/dashboard").json()["lifetime"]
    runs.delete_many({"_id": {"$in": inserted}})

    assert after["sent"] - before["sent"] == 13
    assert after["delivered"] - before["delivered"] == 6
    assert after["failed"] - before["failed"] == 5
    assert after["undeliverable"] - before["undeliverable"] == 1
    assert after["opted_out"] - before["opted_out"] == 1
    assert after["cancelled"] - before["cancelled"] == 7


def test_dashboard_campaign_stages(stack, staff, other_staff, sent_campaign):
    before = staff.get("/api/dashboard").json()["campaigns"]
    inserted = [insert_campaign(stack, status) for status in ALL_STATUSES]
    inserted.append(insert_campaign(stack, "completed", archived=True))
    inserted.append(insert_campaign(stack, "draft", tenant_id=OTHER_CLOUD_ID))

    after = staff.get("/api/dashboard").json()["campaigns"]
    stack.runtime.db.campaigns.delete_many({"_id": {"$in": inserted}})

    added = {stage: after[stage] - before[stage] for stage in after}
    assert added == {"draft": 1, "scheduled": 1, "in_process": 2, "completed": 1, "cancelled": 1, "failed": 1,
                     "archived": 1}


def test_dashboard_archived_but_sending(stack, staff):
    """A campaign sent again after it was archived counts as in process, not archived."""
    before = staff.get("/api/dashboard").json()["campaigns"]
    campaign_id = insert_campaign(stack, "sending", archived=True)

    after = staff.get("/api/dashboard").json()["campaigns"]
    stack.runtime.db.campaigns.delete_one({"_id": campaign_id})

    assert after["in_process"] == before["in_process"] + 1
    assert after["archived"] == before["archived"]


def test_dashboard_requires_session(stack):
    response = requests.get(f"{stack.gateway_url}/api/dashboard")

    assert response.status_code == 401
    assert response.json()["error"] == "not_signed_in"


# ------------------------------------------------------------------ notices


@pytest.fixture
def notices(stack):
    """Three notices for the demo tenant, a minute apart, and one for the other tenant."""
    collection = stack.runtime.db.notifications
    ids = []
    for minute, subject in enumerate(["oldest", "middle", "newest"]):
        ids.append(collection.insert_one({"tenant_id": DEMO_CLOUD_ID, "to": ["admin@demo-association.example"],
                                          "subject": subject, "text": f"The {subject} notice.",
                                          "created_at": START + timedelta(minutes=minute)}).inserted_id)
    ids.append(collection.insert_one({"tenant_id": OTHER_CLOUD_ID, "to": [], "subject": "other tenant",
                                      "text": "Not for the demo tenant.", "created_at": START}).inserted_id)
    yield
    collection.delete_many({"_id": {"$in": ids}})


def test_notices_newest_first(staff, notices):
    body = staff.get("/api/notices").json()

    assert [notice["subject"] for notice in body["notices"]] == ["newest", "middle", "oldest"]
    assert body["total"] == 3


def test_notices_fields(staff, notices):
    notice = staff.get("/api/notices?limit=1").json()["notices"][0]

    assert notice["text"] == "The newest notice."
    assert notice["to"] == ["admin@demo-association.example"]
    assert datetime.fromisoformat(notice["created_at"]) == START + timedelta(minutes=2)
    assert isinstance(notice["id"], str)


def test_notices_paging(staff, notices):
    body = staff.get("/api/notices?limit=1&offset=1").json()

    assert [notice["subject"] for notice in body["notices"]] == ["middle"]
    assert body["total"] == 3


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "offset=-1", "limit=ten", "colour=blue"])
def test_notices_invalid_query(staff, query):
    response = staff.get(f"/api/notices?{query}")

    assert response.status_code == 422
    assert response.json()["error"] == "invalid_input"
    assert response.json()["details"]["fields"]


def test_dashboard_recent_problems(staff, notices):
    problems = staff.get("/api/dashboard").json()["recent_problems"]

    assert [notice["subject"] for notice in problems] == ["newest", "middle", "oldest"]


def test_notices_other_tenant(other_staff, notices):
    body = other_staff.get("/api/notices").json()

    assert [notice["subject"] for notice in body["notices"]] == ["other tenant"]
    assert body["total"] == 1


# ------------------------------------------------------------------ archive


@pytest.mark.parametrize("status", ALL_STATUSES)
def test_archive_by_status(stack, staff, status):
    campaign_id = insert_campaign(stack, status)

    response = staff.post(f"/api/campaigns/{campaign_id}/archive")
    stored = stack.runtime.db.campaigns.find_one({"_id": campaign_id})

    if status in ARCHIVABLE:
        assert response.status_code == 200, response.text
        assert response.json()["archived"] is True
        assert response.json()["status"] == status
        assert stored["archived"] is True
    else:
        assert response.status_code == 409, response.text
        assert response.json()["error"] == "conflict"
        assert status in response.json()["message"]
        assert "archived" not in stored


def test_archive_sent_campaign(stack, staff, sent_campaign):
    response = staff.post(f"/api/campaigns/{sent_campaign['id']}/archive")
    archived = staff.get("/api/archive").json()["campaigns"]
    staff.post(f"/api/campaigns/{sent_campaign['id']}/unarchive")

    assert response.status_code == 200
    assert response.json()["counts"] == sent_campaign["counts"]
    assert [campaign["id"] for campaign in archived if campaign["id"] == sent_campaign["id"]] == [sent_campaign["id"]]


def test_archive_scheduled_campaign(clock, staff):
    campaign_id = staff.create_campaign("Scheduled for tomorrow")
    send_at = (clock.now() + timedelta(days=1)).isoformat()
    assert staff.post(f"/api/campaigns/{campaign_id}/send", json={"send_at": send_at}).status_code == 202

    refused = staff.post(f"/api/campaigns/{campaign_id}/archive")
    assert staff.post(f"/api/campaigns/{campaign_id}/cancel").status_code == 200
    accepted = staff.post(f"/api/campaigns/{campaign_id}/archive")

    assert refused.status_code == 409
    assert accepted.status_code == 200
    assert accepted.json()["status"] == "cancelled"


def test_archive_twice_keeps_time(stack, staff):
    campaign_id = insert_campaign(stack, "completed")

    first = staff.post(f"/api/campaigns/{campaign_id}/archive")
    second = staff.post(f"/api/campaigns/{campaign_id}/archive")

    assert second.status_code == 200
    assert second.json()["archived_at"] == first.json()["archived_at"]


def test_unarchive(stack, staff):
    campaign_id = insert_campaign(stack, "completed")
    staff.post(f"/api/campaigns/{campaign_id}/archive")

    response = staff.post(f"/api/campaigns/{campaign_id}/unarchive")
    listed = [campaign["id"] for campaign in staff.get("/api/archive").json()["campaigns"]]

    assert response.status_code == 200
    assert response.json()["archived"] is False
    assert response.json()["archived_at"] is None
    assert campaign_id not in listed


def test_archive_list_newest_first(clock, stack, staff):
    first = insert_campaign(stack, "completed")
    second = insert_campaign(stack, "draft")
    staff.post(f"/api/campaigns/{first}/archive")
    clock.advance(1)
    staff.post(f"/api/campaigns/{second}/archive")

    listed = [campaign["id"] for campaign in staff.get("/api/archive").json()["campaigns"]]

    assert listed.index(second) < listed.index(first)


@pytest.mark.parametrize("action", ["archive", "unarchive"])
def test_archive_unknown_campaign(staff, action):
    response = staff.post(f"/api/campaigns/{'0' * 32}/{action}")

    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


@pytest.mark.parametrize("action", ["archive", "unarchive"])
def test_archive_needs_csrf(stack, staff, action):
    campaign_id = insert_campaign(stack, "completed", archived=action == "unarchive")

    response = staff.post(f"/api/campaigns/{campaign_id}/{action}", csrf=False)
    stored = stack.runtime.db.campaigns.find_one({"_id": campaign_id})

    assert response.status_code == 403
    assert stored.get("archived", False) is (action == "unarchive")


def test_archive_needs_session(stack):
    campaign_id = insert_campaign(stack, "completed")

    response = requests.post(f"{stack.gateway_url}/api/campaigns/{campaign_id}/archive")

    assert response.status_code == 401


# ------------------------------------------------------------------ tenant isolation


@pytest.mark.parametrize("action", ["archive", "unarchive"])
def test_archive_other_tenant(stack, other_staff, action):
    campaign_id = insert_campaign(stack, "completed", archived=action == "unarchive")

    response = other_staff.post(f"/api/campaigns/{campaign_id}/{action}")
    stored = stack.runtime.db.campaigns.find_one({"_id": campaign_id})

    assert response.status_code == 404
    assert stored.get("archived", False) is (action == "unarchive")


def test_archive_list_other_tenant(stack, staff, other_staff):
    campaign_id = insert_campaign(stack, "completed")
    staff.post(f"/api/campaigns/{campaign_id}/archive")

    listed = [campaign["id"] for campaign in other_staff.get("/api/archive").json()["campaigns"]]

    assert campaign_id not in listed


def test_dashboard_other_tenant(other_staff, sent_campaign):
    dashboard = other_staff.get("/api/dashboard").json()

    assert dashboard["texts_sent"] == {"today": 0, "this_month": 0}
    assert dashboard["lifetime"] == {"sent": 0, "delivered": 0, "failed": 0, "undeliverable": 0, "opted_out": 0,
                                     "cancelled": 0}
    assert dashboard["campaigns"]["completed"] == 0
    assert dashboard["daily_limit"]["used"] == 0
