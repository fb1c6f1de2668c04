"""RunExpander against the iMIS simulator over HTTP: both endpoints, paging, tokens, failures."""

from __future__ import annotations

import json
import uuid

import pytest

from libs.common.broker import Retry, tenant_jobs_queue
from libs.common.imis import ImisClient, ImisSession
from local.simulators.imis import ImisSimulator
from services.recipients.service import MAX_UNAVAILABLE_ATTEMPTS, RunExpander

USER = "textmanager-svc"
PASSWORD = "svc-secret"
QUERY = "$/TextManager/Members"
COLUMNS = ["ID", "FirstName", "Mobile", "Chapter"]
ADMIN_EMAIL = "admin@acme.example"
PAGE_SIZE = 100


def member(index: int, **overrides) -> dict:
    row = {"ID": str(20_000 + index), "FirstName": f"First{index}", "Mobile": f"(202) 555-{1000 + index:04d}",
           "Chapter": "North" if index % 2 == 0 else "South"}
    row.update(overrides)
    return row


def e164(index: int) -> str:
    return f"+1202555{1000 + index:04d}"


class World:
    """The simulator, one tenant on it, and an expander whose iMIS client never really sleeps."""

    def __init__(self, runtime, tenant, sim: ImisSimulator):
        self.runtime = runtime
        self.db = runtime.db
        self.tenant = tenant
        self.sim = sim
        self.sleeps: list[float] = []
        self.client = ImisClient(sim.url, sleep=self.sleeps.append)
        self.session = ImisSession(self.client, tenant.imis_username, tenant.imis_password)
        self.published: list[dict] = []

    def expander(self) -> RunExpander:
        return RunExpander(self.db, broker=self.runtime.broker, tenants=self.runtime.tenants,
                           imis_factory=lambda tenant: self.session, notifier=self.runtime.notifier,
                           clock=self.runtime.clock, message_ids=self.runtime.message_ids, page_size=PAGE_SIZE)

    def create_run(self, **campaign_fields) -> str:
        run_id = uuid.uuid4().hex
        campaign_id = uuid.uuid4().hex
        self.db.campaigns.insert_one({"_id": campaign_id, "tenant_id": self.tenant.cloud_id, "name": "Members",
                                      "body": "Hi {FirstName|member}", "iqa_path": QUERY, "status": "sending",
                                      "current_run_id": run_id, **campaign_fields})
        self.db.runs.insert_one({"_id": run_id, "tenant_id": self.tenant.cloud_id, "campaign_id": campaign_id,
                                 "status": "queued", "counts": {"recipients": 0, "done": 0}, "expanded": False})
        return run_id

    def expand(self, run_id: str, attempt: int = 1) -> dict:
        self.expander().expand(self.tenant.cloud_id, run_id, attempt=attempt)
        return self.db.runs.find_one({"_id": run_id})

    def jobs(self) -> list[dict]:
        try:
            messages = self.runtime.broker.server.take(tenant_jobs_queue(self.tenant.cloud_id), 1_000_000)
        except KeyError:
            # The broker declares a tenant's queue on its first publish, so none was published.
            messages = []
        self.published += [json.loads(message.payload) for message in messages]
        return list(self.published)

    def query_requests(self, endpoint: str = "/api/query") -> list[dict]:
        return [entry for entry in self.sim.request_log() if entry["path"] == endpoint]

    def token_requests(self) -> list[dict]:
        return [entry for entry in self.sim.request_log() if entry["path"] == "/token"]


@pytest.fixture
def sim():
    simulator = ImisSimulator(users={USER: PASSWORD})
    simulator.start()
    simulator.add_query(QUERY, COLUMNS, [member(i) for i in range(250)], prompts=())
    yield simulator
    simulator.stop()


@pytest.fixture
def world(runtime, tenant_factory, sim) -> World:
    tenant = tenant_factory(imis_base_url=sim.url, imis_username=USER, imis_password=PASSWORD,
                            default_email=ADMIN_EMAIL)
    built = World(runtime, tenant, sim)
    yield built
    built.client.close()


def offsets(requests: list[dict]) -> list[int]:
    return [int(entry["args"]["offset"][0]) for entry in requests]


# ------------------------------------------------------------------ both endpoints and row shapes


def test_query_endpoint(world):
    run = world.expand(world.create_run())
    assert run["counts"]["recipients"] == 250
    assert [job["to"] for job in world.jobs()] == [e164(i) for i in range(250)]
    assert world.query_requests("/api/iqa") == []


def test_iqa_fallback_same_jobs(world, sim):
    world.expand(world.create_run())
    on_query = [(job["member_id"], job["to"], job["body"]) for job in world.jobs()]
    world.published.clear()

    sim.query_endpoint_missing = True
    world.client.query_endpoint = None
    run = world.expand(world.create_run())
    on_iqa = [(job["member_id"], job["to"], job["body"]) for job in world.jobs()]
    assert run["counts"]["recipients"] == 250
    assert on_iqa == on_query
    assert [entry["status"] for entry in world.query_requests("/api/query")][-1] == 404
    assert len(world.query_requests("/api/iqa")) == 3


def test_iqa_null_column_gets_fallback(world, sim):
    sim.add_query(QUERY, COLUMNS, [member(0, FirstName=None), member(1, ID=20001)])
    sim.query_endpoint_missing = True
    world.expand(world.create_run())
    assert [(job["member_id"], job["body"]) for job in world.jobs()] == [("20000", "Hi member"),
                                                                          ("20001", "Hi First1")]


@pytest.mark.parametrize("endpoint", ["/api/query", "/api/iqa"])
def test_null_member_ids_and_names(world, sim, endpoint):
    # /api/query writes a null as JSON null; /api/iqa leaves the property's Value out.
    rows = [member(0, ID=None), member(1, ID=""), member(2, ID="   "), member(3, FirstName=None), member(4),
            member(5, ID=None, FirstName=None, Mobile=None)]
    sim.add_query(QUERY, COLUMNS, rows)
    sim.query_endpoint_missing = endpoint == "/api/iqa"
    run = world.expand(world.create_run(body="Hi {FirstName}! Renew today"))

    assert [(job["member_id"], job["body"]) for job in world.jobs()] == [("20003", "Hi ! Renew today"),
                                                                          ("20004", "Hi First4! Renew today")]
    assert run["counts"]["recipients"] == 2
    assert run["skipped_by_reason"] == {"no member ID": 4}
    assert run["blank_fields"] == {"FirstName": 1}
    assert len(world.query_requests(endpoint)) == 1


def test_iqa_rows_typed_values(world, sim):
    sim.add_query(QUERY, COLUMNS, [member(0, ID=20000, Mobile=2025551000)])
    sim.query_endpoint_missing = True
    world.expand(world.create_run())
    assert [(job["member_id"], job["to"]) for job in world.jobs()] == [("20000", e164(0))]


# ------------------------------------------------------------------ paging


def test_site_serves_fewer_rows_than_asked(world, sim):
    sim.max_limit = 40
    run = world.expand(world.create_run())
    assert run["counts"]["recipients"] == 250
    assert offsets(world.query_requests()) == list(range(0, 250, 40))


def test_rows_repeated_across_pages_counted_once(world, sim):
    sim.repeat_rows_across_pages = 7
    run = world.expand(world.create_run())
    assert run["counts"]["recipients"] == 250
    assert run["counts"]["skipped"] == 0
    assert len(world.jobs()) == 250


def test_last_page_ends_paging(world):
    world.expand(world.create_run())
    requests = world.query_requests()
    assert offsets(requests) == [0, 100, 200]
    assert all(entry["args"]["limit"] == ["100"] for entry in requests)


# ------------------------------------------------------------------ tokens and retries


def test_token_renewed_mid_paging(world, sim):
    sim.fail_next("/api/query", 401, after=1)
    run = world.expand(world.create_run())

    requests = world.query_requests()
    assert run["counts"]["recipients"] == 250
    assert len(world.token_requests()) == 2
    assert [(offset, entry["status"]) for offset, entry in zip(offsets(requests), requests)] == [
        (0, 200), (100, 401), (100, 200), (200, 200)]


def test_rate_limit_backoff(world, sim):
    sim.fail_next("/api/query", 429, count=2, after=1)
    run = world.expand(world.create_run())
    assert run["counts"]["recipients"] == 250
    assert len(world.sleeps) == 2
    assert all(delay >= 1.0 for delay in world.sleeps)


def test_server_errors_exhausted_then_failed(world, sim):
    sim.fail_next("/api/query", 503, count=1000, after=1)
    run_id = world.create_run()
    for attempt in range(1, MAX_UNAVAILABLE_ATTEMPTS):
        with pytest.raises(Retry):
            world.expand(run_id, attempt=attempt)
    run = world.expand(run_id, attempt=MAX_UNAVAILABLE_ATTEMPTS)

    assert run["status"] == "failed"
    assert "iMIS was still unavailable after 3 tries of this run" in run["error"]
    assert "HTTP 503" in run["error"]
    assert "Check that the iMIS base URL in Settings is right" in run["error"]
    assert world.jobs() == []
    assert max(world.sleeps) <= 8.0
    notices = list(world.db.notifications.find())
    assert [notice["to"] for notice in notices] == [[ADMIN_EMAIL]]


def test_server_errors_then_redelivery_resumes(world, sim):
    sim.fail_next("/api/query", 500, count=5, after=2)
    run_id = world.create_run()
    with pytest.raises(Retry):
        world.expand(run_id)
    run = world.expand(run_id, attempt=2)

    ids = [job["message_id"] for job in world.jobs()]
    successful = [entry for entry in world.query_requests() if entry["status"] == 200]
    assert run["status"] == "sending"
    assert ids == [world.runtime.message_ids.build(run_id, e164(i)) for i in range(250)]
    assert offsets(successful) == [0, 100, 200]


# ------------------------------------------------------------------ prompts and query errors


def test_prompts_named_on_query(world, sim):
    sim.add_query(QUERY, COLUMNS, [member(i) for i in range(10)], prompts=("Chapter",))
    world.expand(world.create_run(prompts={"Chapter": "North"}))
    assert [job["to"] for job in world.jobs()] == [e164(i) for i in range(0, 10, 2)]
    assert world.query_requests()[0]["args"]["Chapter"] == ["North"]


def test_prompts_positional_on_iqa(world, sim):
    sim.add_query(QUERY, COLUMNS, [member(i) for i in range(10)], prompts=("Chapter",))
    sim.query_endpoint_missing = True
    world.expand(world.create_run(prompts={"Chapter": "South"}))
    assert [job["to"] for job in world.jobs()] == [e164(i) for i in range(1, 10, 2)]
    assert world.query_requests("/api/iqa")[0]["args"]["Parameter"] == ["South"]


def test_missing_prompt_fails_run(world, sim):
    sim.add_query(QUERY, COLUMNS, [member(0)], prompts=("Chapter",))
    run = world.expand(world.create_run())
    assert run["status"] == "failed"
    assert "A value for the required prompt 'Chapter' is missing." in run["error"]


def test_query_not_found(world):
    run = world.expand(world.create_run(iqa_path="$/TextManager/Gone"))
    assert run["status"] == "failed"
    assert "iMIS found no query at $/TextManager/Gone" in run["error"]
    assert 'marked "Available via the REST API" in iMIS' in run["error"]


def test_query_not_available_over_rest(world, sim):
    sim.set_rest_available(QUERY, False)
    run = world.expand(world.create_run())
    assert run["status"] == "failed"
    assert f"iMIS does not allow the query {QUERY} over REST" in run["error"]
    assert 'mark the query "Available via the REST API"' in run["error"]


def test_wrong_service_password(world, sim):
    world.session = ImisSession(world.client, USER, "wrong-password")
    run = world.expand(world.create_run())
    assert run["status"] == "failed"
    assert "Check the iMIS user name and password." in run["error"]


def test_missing_merge_field_names_columns(world):
    run = world.expand(world.create_run(body="Hi {Nickname}"))
    assert run["status"] == "failed"
    assert "The text uses {Nickname}, which the query $/TextManager/Members does not return" in run["error"]
    assert "The query's columns are ID, FirstName, Mobile, Chapter." in run["error"]
