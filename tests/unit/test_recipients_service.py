"""RunExpander on mongomock and the in-process broker, with a fake iMIS: no sockets."""

from __future__ import annotations

import json
import uuid
from collections import Counter

import pytest

from libs.common.broker import QUEUE_JOBS, Delivery, PublishError, Reject, Retry, tenant_jobs_queue
from libs.common.imis import ImisAuthError, ImisQueryNotAvailable, ImisQueryNotFound, ImisUnavailable, QueryPage
from services.recipients.errors import ExpansionSuperseded
from services.recipients.expansion import OPTED_OUT
from services.recipients.repository import ExpansionStore
from services.recipients.service import MAX_UNAVAILABLE_ATTEMPTS, RunExpander, jobs_queue

QUERY = "$/TextManager/Members"
ADMIN_EMAIL = "admin@acme.example"
CAMPAIGN_EMAIL = "events@acme.example"


def member(index: int, **overrides) -> dict:
    """Return IQA row `index` with a distinct valid US number (202-555-1000 and up)."""
    row = {"ID": str(10_000 + index), "FirstName": f"Member{index}", "Mobile": f"(202) 555-{1000 + index:04d}"}
    row.update(overrides)
    return row


def e164(index: int) -> str:
    return f"+1202555{1000 + index:04d}"


class FakeImis:
    """Serves rows in pages as ImisSession.iter_query_pages does, and fails on the pages a test names.

    `failures` maps a page number to the exception raised, once, instead of that page.
    """

    def __init__(self, rows: list[dict], failures: dict[int, Exception] | None = None):
        self.rows = rows
        self.failures = dict(failures or {})
        self.calls: list[dict] = []
        self.fetched_offsets: list[int] = []

    def iter_query_pages(self, query_path, *, prompts=None, page_size=500, start_offset=0):
        self.calls.append({"query_path": query_path, "prompts": prompts, "page_size": page_size,
                           "start_offset": start_offset})
        offset = start_offset
        while True:
            failure = self.failures.pop(offset // page_size, None)
            if failure is not None:
                raise failure
            self.fetched_offsets.append(offset)
            has_next = offset + page_size < len(self.rows)
            rows = tuple(self.rows[offset:offset + page_size])
            yield QueryPage(offset, offset + page_size if has_next else 0, rows, has_next, len(self.rows))
            if not has_next:
                return
            offset += page_size


class World:
    """One tenant, its campaigns and runs, a fake iMIS and the jobs published so far."""

    def __init__(self, runtime, tenant):
        self.runtime = runtime
        self.db = runtime.db
        self.tenant = tenant
        self.imis = FakeImis([])
        self.published: list[dict] = []

    def expander(self, **options) -> RunExpander:
        options.setdefault("page_size", 10)
        return RunExpander(self.db, broker=self.runtime.broker, tenants=self.runtime.tenants,
                           imis_factory=lambda tenant: self.imis, notifier=self.runtime.notifier,
                           clock=self.runtime.clock, message_ids=self.runtime.message_ids, **options)

    def create_run(self, campaign_id: str | None = None, status: str = "queued", **campaign_fields) -> str:
        """Insert a campaign (unless it exists) and a run of it; return the run id."""
        campaign_id = campaign_id or uuid.uuid4().hex
        run_id = uuid.uuid4().hex
        campaign = {"_id": campaign_id, "tenant_id": self.tenant.cloud_id, "name": "Spring meeting",
                    "body": "Hello {FirstName|member}", "iqa_path": QUERY, "email": CAMPAIGN_EMAIL,
                    "status": "sending", "current_run_id": run_id, **campaign_fields}
        if self.db.campaigns.find_one({"_id": campaign_id}) is None:
            self.db.campaigns.insert_one(campaign)
        else:
            self.db.campaigns.update_one({"_id": campaign_id}, {"$set": {"current_run_id": run_id}})
        self.db.runs.insert_one({"_id": run_id, "tenant_id": self.tenant.cloud_id, "campaign_id": campaign_id,
                                 "status": status, "counts": {"recipients": 0, "done": 0, "skipped": 0},
                                 "expanded": False})
        return run_id

    def run(self, run_id: str) -> dict:
        return self.db.runs.find_one({"_id": run_id})

    def campaign_of(self, run_id: str) -> dict:
        return self.db.campaigns.find_one({"_id": self.run(run_id)["campaign_id"]})

    def jobs(self) -> list[dict]:
        """Return every job published so far, in order, duplicates included."""
        try:
            messages = self.runtime.broker.server.take(tenant_jobs_queue(self.tenant.cloud_id), 1_000_000)
        except KeyError:
            # The broker declares a tenant's queue on its first publish, so none was published.
            messages = []
        self.published += [json.loads(message.payload) for message in messages]
        return list(self.published)

    def notices(self) -> list[dict]:
        return list(self.db.notifications.find())

    def opt_out(self, *numbers: str) -> None:
        for number in numbers:
            self.db.optouts.insert_one({"_id": f"{self.tenant.cloud_id}:{number}", "tenant_id": self.tenant.cloud_id,
                                        "number": number})


@pytest.fixture
def world(runtime, tenant_factory) -> World:
    return World(runtime, tenant_factory(default_email=ADMIN_EMAIL))


def delivery(run_id: str, tenant_id: str = "ACME", attempt: int = 1) -> Delivery:
    return Delivery(queue="tm.runs", body={"tenant_id": tenant_id, "campaign_id": "c", "run_id": run_id},
                    headers={}, attempt=attempt, redelivered=attempt > 1, message_id=run_id)


class FlakyPublisher:
    """Wrap publish_many: fail call number `fail_on`, before or after the messages went out."""

    def __init__(self, broker, fail_on: int, after_publishing: bool = False):
        self._publish_many = broker.publish_many
        self._fail_on = fail_on
        self._after_publishing = after_publishing
        self.calls = 0

    def __call__(self, queue, bodies, *, message_ids=None):
        self.calls += 1
        if self.calls == self._fail_on and not self._after_publishing:
            raise PublishError("connection lost before the confirms")
        count = self._publish_many(queue, bodies, message_ids=message_ids)
        if self.calls == self._fail_on:
            raise PublishError("connection lost after the confirms")
        return count


# ------------------------------------------------------------------ the happy path


def test_one_job_per_member(world):
    world.imis.rows = [member(i) for i in range(25)]
    run_id = world.create_run()
    world.expander().expand("ACME", run_id)

    jobs = world.jobs()
    assert [job["to"] for job in jobs] == [e164(i) for i in range(25)]
    assert jobs[0] == {"tenant_id": "ACME", "campaign_id": world.run(run_id)["campaign_id"], "run_id": run_id,
                       "message_id": world.runtime.message_ids.build(run_id, e164(0)), "member_id": "10000",
                       "to": e164(0), "body": "Hello Member0", "segments": 1, "encoding": "GSM-7"}


def test_jobs_go_to_tenant_queue(world):
    world.imis.rows = [member(0)]
    world.expander().expand("ACME", world.create_run())
    assert world.runtime.broker.queue_depth(tenant_jobs_queue("ACME")) == 1
    assert world.runtime.broker.queue_depth(QUEUE_JOBS) == 0


def test_jobs_queue_names():
    assert jobs_queue("ACME") == "tm.jobs.ACME"
    assert jobs_queue("ACME.ORG") == QUEUE_JOBS


def test_run_counts_after_expansion(world):
    world.imis.rows = [member(i) for i in range(25)] + [member(25, Mobile="12345"), member(26, Mobile="")]
    run_id = world.create_run()
    world.expander().expand("ACME", run_id)

    run = world.run(run_id)
    assert run["status"] == "sending"
    assert run["expanded"] is True
    assert run["counts"]["recipients"] == 25
    assert run["counts"]["skipped"] == 2
    assert run["skipped_by_reason"] == {"invalid number": 1, "no number": 1}
    assert run["segments"] == 25
    assert run["encodings"] == {"GSM-7": 25}


def test_query_and_prompts_passed(world):
    world.imis.rows = [member(0)]
    run_id = world.create_run(prompts={"Chapter": "North"})
    world.expander(page_size=200).expand("ACME", run_id)
    assert world.imis.calls == [{"query_path": QUERY, "prompts": {"Chapter": "North"}, "page_size": 200,
                                 "start_offset": 0}]


def test_no_prompts_passed_as_none(world):
    world.imis.rows = [member(0)]
    world.expander().expand("ACME", world.create_run())
    assert world.imis.calls[0]["prompts"] is None


def test_handle_decodes_message(world):
    world.imis.rows = [member(0)]
    run_id = world.create_run()
    world.expander().handle(delivery(run_id))
    assert len(world.jobs()) == 1


@pytest.mark.parametrize("body", [{"run_id": "r"}, {"tenant_id": "ACME", "run_id": 5}, {}])
def test_handle_rejects_invalid_message(world, body):
    with pytest.raises(Reject):
        world.expander().handle(Delivery("tm.runs", body, {}, 1, False, None))


def test_unknown_tenant_rejected(world):
    run_id = world.create_run()
    world.db.runs.update_one({"_id": run_id}, {"$set": {"tenant_id": "GONE"}})
    with pytest.raises(Reject, match="GONE"):
        world.expander().expand("GONE", run_id)


@pytest.mark.parametrize("status", ["due", "sending", "completed", "failed", "cancelled"])
def test_run_past_expansion_left_alone(world, status):
    world.imis.rows = [member(0)]
    run_id = world.create_run(status=status)
    world.expander().expand("ACME", run_id)
    assert world.jobs() == []
    assert world.run(run_id)["status"] == status


def test_run_still_publishing_is_expanded(world):
    # The scheduler marks a run queued after the broker confirmed its message, so the
    # message can arrive while the run's status is still publishing.
    world.imis.rows = [member(0)]
    run_id = world.create_run(status="publishing")
    world.expander().expand("ACME", run_id)
    assert len(world.jobs()) == 1
    assert world.run(run_id)["status"] == "sending"


def test_other_tenant_run_untouched(world, tenant_factory):
    tenant_factory(cloud_id="OTHER")
    world.imis.rows = [member(0)]
    run_id = world.create_run()
    world.expander().expand("OTHER", run_id)
    assert world.jobs() == []
    assert world.run(run_id)["status"] == "queued"


def test_empty_query_completes(world):
    run_id = world.create_run()
    world.expander().expand("ACME", run_id)
    run = world.run(run_id)
    assert run["status"] == "completed"
    assert run["counts"]["recipients"] == 0
    assert world.campaign_of(run_id)["status"] == "completed"


# ------------------------------------------------------------------ numbers and texts


def test_same_person_twice_one_text(world):
    world.imis.rows = [member(0, ID="10151", FirstName="Ben", Mobile="(202) 555-0188"), member(1),
                       member(2, ID="10300", FirstName="Ben", Mobile="+1 202-555-0188")]
    run_id = world.create_run()
    world.expander().expand("ACME", run_id)

    assert [job["to"] for job in world.jobs()].count("+12025550188") == 1
    assert world.run(run_id)["skipped_by_reason"] == {"duplicate number": 1}


def test_duplicate_on_later_page(world):
    world.imis.rows = [member(i) for i in range(10)] + [member(10, Mobile="202.555.1003")]
    run_id = world.create_run()
    world.expander(page_size=10).expand("ACME", run_id)
    assert len(world.jobs()) == 10
    assert world.run(run_id)["counts"]["skipped"] == 1


def test_first_page_all_opted_out(world):
    # 1,200 rows, the first 1,000 opted out: the pages that give no job must not end the run.
    world.imis.rows = [member(i) for i in range(1200)]
    world.opt_out(*(e164(i) for i in range(1000)))
    run_id = world.create_run()
    world.expander(page_size=500).expand("ACME", run_id)

    jobs = world.jobs()
    run = world.run(run_id)
    assert [job["to"] for job in jobs] == [e164(i) for i in range(1000, 1200)]
    assert run["counts"]["recipients"] == 200
    assert run["skipped_by_reason"] == {OPTED_OUT: 1000}
    assert run["status"] == "sending"
    assert run["expanded"] is True


def test_opt_outs_of_other_tenant_ignored(world):
    world.imis.rows = [member(0)]
    world.db.optouts.insert_one({"_id": f"OTHER:{e164(0)}", "tenant_id": "OTHER", "number": e164(0)})
    world.expander().expand("ACME", world.create_run())
    assert len(world.jobs()) == 1


def test_skipped_rows_kept_for_report(world):
    world.imis.rows = [member(0), member(1, Mobile="+1 (800) 555-0199"), member(2, Mobile=None)]
    run_id = world.create_run()
    world.expander().expand("ACME", run_id)
    pages = list(world.db.run_pages.find({"run_id": run_id}))
    assert [skip["reason"] for page in pages for skip in page["skipped"]] == [
        "not a mobile number (toll-free)", "no number"]


def test_published_jobs_dropped_from_pages(world):
    world.imis.rows = [member(i) for i in range(25)]
    run_id = world.create_run()
    world.expander().expand("ACME", run_id)
    pages = list(world.db.run_pages.find({"run_id": run_id}))
    assert len(pages) == 3
    assert all("jobs_json" not in page for page in pages)


def test_smart_encoding_switch(world):
    world.imis.rows = [member(0)]
    world.expander().expand("ACME", world.create_run(body="It\u2019s {FirstName}", smart_encoding=True))
    world.expander().expand("ACME", world.create_run(body="It\u2019s {FirstName}", smart_encoding=False))
    first, second = world.jobs()
    assert (first["body"], first["encoding"]) == ("It's Member0", "GSM-7")
    assert (second["body"], second["encoding"]) == ("It\u2019s Member0", "UCS-2")


def test_fallback_for_empty_field(world):
    world.imis.rows = [member(0, FirstName=None), member(1, FirstName="")]
    world.expander().expand("ACME", world.create_run(body="Hello {FirstName|member}"))
    assert [job["body"] for job in world.jobs()] == ["Hello member", "Hello member"]


def test_rows_without_member_id_not_texted(world):
    world.imis.rows = [member(i) for i in range(12)]
    world.imis.rows[4]["ID"] = None
    world.imis.rows[11]["ID"] = ""
    run_id = world.create_run()
    world.expander().expand("ACME", run_id)

    run = world.run(run_id)
    assert [job["member_id"] for job in world.jobs()] == [str(10_000 + i) for i in range(12) if i not in (4, 11)]
    assert run["counts"]["recipients"] == 10
    assert run["counts"]["skipped"] == 2
    assert run["skipped_by_reason"] == {"no member ID": 2}


def test_blank_merge_fields_counted_on_run(world):
    world.imis.rows = [member(i) for i in range(12)]
    world.imis.rows[2]["FirstName"] = None
    world.imis.rows[10]["FirstName"] = " "
    run_id = world.create_run(body="Hello {FirstName}!")
    world.expander().expand("ACME", run_id)

    bodies = [job["body"] for job in world.jobs()]
    assert bodies.count("Hello !") == 2
    assert len(bodies) == 12
    assert world.run(run_id)["blank_fields"] == {"FirstName": 2}


def test_no_blank_merge_fields_on_run(world):
    world.imis.rows = [member(0, FirstName=None)]
    run_id = world.create_run(body="Hello {FirstName|member}")
    world.expander().expand("ACME", run_id)
    assert "blank_fields" not in world.run(run_id)


def test_segments_per_text(world):
    world.imis.rows = [member(0, Note="x" * 200), member(1, Note="")]
    run_id = world.create_run(body="{Note|short}")
    world.expander().expand("ACME", run_id)
    assert [job["segments"] for job in world.jobs()] == [2, 1]
    assert world.run(run_id)["segments"] == 3


# ------------------------------------------------------------------ errors before sending


def test_missing_merge_field_fails_run(world):
    world.imis.rows = [member(0)]
    run_id = world.create_run(body="Hello {Nickname}")
    world.expander().expand("ACME", run_id)

    run = world.run(run_id)
    assert world.jobs() == []
    assert run["status"] == "failed"
    assert "{Nickname}" in run["error"]
    assert "add it to the IQA or change the text" in run["error"]
    assert world.campaign_of(run_id)["status"] == "failed"
    assert world.campaign_of(run_id)["error"] == run["error"]


def test_missing_phone_column_fails_run(world):
    world.imis.rows = [{"ID": "1", "FirstName": "Ana", "Phone": "(202) 555-0143"}]
    run_id = world.create_run()
    world.expander().expand("ACME", run_id)
    assert "phone numbers from the column Mobile" in world.run(run_id)["error"]


def test_bad_template_fails_run(world):
    run_id = world.create_run(body="Hello {FirstName")
    world.expander().expand("ACME", run_id)
    assert "not closed" in world.run(run_id)["error"]


def test_failure_notice_to_admin(world):
    world.imis.rows = [member(0)]
    run_id = world.create_run(body="Hello {Nickname}")
    world.expander().expand("ACME", run_id)

    notices = world.notices()
    assert len(notices) == 1
    assert notices[0]["to"] == sorted([ADMIN_EMAIL, CAMPAIGN_EMAIL])
    assert "Spring meeting" in notices[0]["subject"]
    assert "{Nickname}" in notices[0]["text"]


def test_deleted_campaign_fails_run(world):
    run_id = world.create_run()
    world.db.campaigns.delete_one({"_id": world.run(run_id)["campaign_id"]})
    world.expander().expand("ACME", run_id)
    assert world.run(run_id)["error"] == "The campaign of this run no longer exists."


# ------------------------------------------------------------------ the per-run segment limit


def test_run_over_segment_limit_does_not_start(world, tenant_factory):
    tenant_factory(default_email=ADMIN_EMAIL, run_segment_limit=30)
    world.imis.rows = [member(i, Note="x" * 200) for i in range(16)]
    run_id = world.create_run(body="{Note}")
    world.expander().expand("ACME", run_id)

    run = world.run(run_id)
    assert world.jobs() == []
    assert run["status"] == "failed"
    assert run["segments"] == 32
    assert "32 segments" in run["error"]
    assert "limit of 30 per run" in run["error"]
    assert "narrow the IQA, split the campaign, or shorten the text" in run["error"]
    assert world.campaign_of(run_id)["status"] == "failed"


def test_segment_limit_notice(world, tenant_factory):
    tenant_factory(default_email=ADMIN_EMAIL, run_segment_limit=5)
    world.imis.rows = [member(i) for i in range(6)]
    world.expander().expand("ACME", world.create_run())
    notices = world.notices()
    assert [notice["to"] for notice in notices] == [sorted([ADMIN_EMAIL, CAMPAIGN_EMAIL])]
    assert "6 segments" in notices[0]["text"]


def test_run_at_segment_limit_starts(world, tenant_factory):
    tenant_factory(default_email=ADMIN_EMAIL, run_segment_limit=6)
    world.imis.rows = [member(i) for i in range(6)]
    run_id = world.create_run()
    world.expander().expand("ACME", run_id)
    assert world.run(run_id)["status"] == "sending"
    assert len(world.jobs()) == 6


def test_each_run_has_own_limit(world, tenant_factory):
    tenant_factory(default_email=ADMIN_EMAIL, run_segment_limit=6)
    world.imis.rows = [member(i) for i in range(6)]
    first = world.create_run(campaign_id="weekly")
    world.expander().expand("ACME", first)
    second = world.create_run(campaign_id="weekly")
    world.expander().expand("ACME", second)
    assert world.run(first)["status"] == "sending"
    assert world.run(second)["status"] == "sending"
    assert len(world.jobs()) == 12


def test_over_limit_pages_keep_no_texts(world, tenant_factory):
    tenant_factory(default_email=ADMIN_EMAIL, run_segment_limit=10)
    world.imis.rows = [member(i) for i in range(40)]
    run_id = world.create_run()
    world.expander(page_size=10).expand("ACME", run_id)

    pages = {page["page_no"]: page for page in world.db.run_pages.find({"run_id": run_id})}
    assert world.run(run_id)["segments"] == 40
    assert len(json.loads(pages[1]["jobs_json"])) == 10
    assert "jobs_json" not in pages[2]
    assert json.loads(pages[2]["numbers_json"]) == [[str(10_020 + i), e164(20 + i)] for i in range(10)]


def test_over_limit_restart_keeps_duplicates(world, tenant_factory):
    tenant_factory(default_email=ADMIN_EMAIL, run_segment_limit=10)
    world.imis.rows = [member(i) for i in range(40)] + [member(25, ID="other")]
    world.imis.failures = {3: ImisUnavailable("down")}
    run_id = world.create_run()
    with pytest.raises(Retry):
        world.expander(page_size=10).expand("ACME", run_id)
    world.expander(page_size=10).expand("ACME", run_id, attempt=2)

    run = world.run(run_id)
    assert run["status"] == "failed"
    assert run["segments"] == 40
    assert run["skipped_by_reason"] == {"duplicate number": 1}


def test_over_limit_stays_failed_after_limit_raised(world, tenant_factory):
    tenant_factory(default_email=ADMIN_EMAIL, run_segment_limit=10)
    world.imis.rows = [member(i) for i in range(30)]
    world.imis.failures = {2: ImisUnavailable("iMIS is down")}
    run_id = world.create_run()
    with pytest.raises(Retry):
        world.expander(page_size=10).expand("ACME", run_id)
    tenant_factory(default_email=ADMIN_EMAIL, run_segment_limit=1000)
    world.expander(page_size=10).expand("ACME", run_id, attempt=2)

    assert world.run(run_id)["status"] == "failed"
    assert world.jobs() == []


# ------------------------------------------------------------------ iMIS failures


def test_imis_unavailable_retried(world):
    world.imis.failures = {0: ImisUnavailable("iMIS at http://imis is unavailable.")}
    run_id = world.create_run()
    with pytest.raises(Retry, match="unavailable"):
        world.expander().expand("ACME", run_id, attempt=1)
    assert world.run(run_id)["status"] == "expanding"
    assert world.notices() == []


def test_imis_unavailable_fails_at_last_attempt(world):
    world.imis.failures = {0: ImisUnavailable("iMIS at http://imis is unavailable (HTTP 503). Check the site.")}
    run_id = world.create_run()
    world.expander().expand("ACME", run_id, attempt=MAX_UNAVAILABLE_ATTEMPTS)

    run = world.run(run_id)
    assert run["status"] == "failed"
    assert run["error"] == (f"iMIS was still unavailable after {MAX_UNAVAILABLE_ATTEMPTS} tries of this run. "
                            "iMIS at http://imis is unavailable (HTTP 503). Check the site.")
    assert [notice["to"] for notice in world.notices()] == [sorted([ADMIN_EMAIL, CAMPAIGN_EMAIL])]


def test_unavailable_bound_by_broker_attempts(world, runtime):
    runtime.broker.max_attempts = 2
    world.imis.failures = {0: ImisUnavailable("down")}
    run_id = world.create_run()
    world.expander().expand("ACME", run_id, attempt=2)
    assert world.run(run_id)["status"] == "failed"


@pytest.mark.parametrize("error", [
    ImisQueryNotFound(f'iMIS found no query at {QUERY}. Check the query path, and that the query is marked '
                      '"Available via the REST API" in iMIS.'),
    ImisQueryNotAvailable(f'iMIS does not allow the query {QUERY} over REST (HTTP 403). In iMIS, mark the query '
                          '"Available via the REST API" and check that the user may run it.'),
    ImisAuthError("iMIS rejected the sign-in of user 'svc'. Check the iMIS user name and password."),
])
def test_imis_error_fails_run_with_its_message(world, error):
    world.imis.failures = {0: error}
    run_id = world.create_run()
    world.expander().expand("ACME", run_id)
    assert world.run(run_id)["error"] == error.message
    assert len(world.notices()) == 1


def test_unexpected_error_retried(world, monkeypatch):
    world.imis.rows = [member(0)]
    monkeypatch.setattr(world.runtime.broker, "publish_many", FlakyPublisher(world.runtime.broker, fail_on=1))
    run_id = world.create_run()
    with pytest.raises(PublishError):
        world.expander().expand("ACME", run_id, attempt=1)
    assert world.run(run_id)["status"] == "expanding"


def test_unexpected_error_fails_run_at_last_attempt(world, monkeypatch):
    world.imis.rows = [member(0)]
    monkeypatch.setattr(world.runtime.broker, "publish_many", FlakyPublisher(world.runtime.broker, fail_on=1))
    run_id = world.create_run()
    with pytest.raises(PublishError):
        world.expander().expand("ACME", run_id, attempt=world.runtime.broker.max_attempts)
    run = world.run(run_id)
    assert run["status"] == "failed"
    assert "PublishError" in run["error"]
    assert len(world.notices()) == 1


# ------------------------------------------------------------------ crash and redelivery


def expected_ids(world: World, run_id: str, count: int) -> list[str]:
    """Return the message ids of the first `count` members' texts in the run, in row order."""
    return [world.runtime.message_ids.build(run_id, e164(i)) for i in range(count)]


@pytest.mark.parametrize("after_publishing", [False, True], ids=["before-confirm", "after-confirm"])
def test_publish_failure_then_redelivery(world, monkeypatch, after_publishing):
    world.imis.rows = [member(i) for i in range(95)]
    flaky = FlakyPublisher(world.runtime.broker, fail_on=2, after_publishing=after_publishing)
    monkeypatch.setattr(world.runtime.broker, "publish_many", flaky)
    run_id = world.create_run()
    expander = world.expander(page_size=10, publish_batch=30)
    with pytest.raises(PublishError):
        expander.handle(delivery(run_id, attempt=1))
    expander.handle(delivery(run_id, attempt=2))

    ids = [job["message_id"] for job in world.jobs()]
    assert sorted(set(ids)) == sorted(expected_ids(world, run_id, 95))
    repeated = sorted(message_id for message_id, count in Counter(ids).items() if count > 1)
    assert repeated == (sorted(expected_ids(world, run_id, 60)[30:]) if after_publishing else [])
    assert world.run(run_id)["counts"]["recipients"] == 95


def test_publish_resumes_at_checkpoint(world, monkeypatch):
    world.imis.rows = [member(i) for i in range(95)]
    flaky = FlakyPublisher(world.runtime.broker, fail_on=3)
    monkeypatch.setattr(world.runtime.broker, "publish_many", flaky)
    run_id = world.create_run()
    with pytest.raises(PublishError):
        world.expander(page_size=10, publish_batch=30).expand("ACME", run_id)
    assert world.run(run_id)["publish_page_no"] == 6
    world.expander(page_size=10, publish_batch=30).expand("ACME", run_id, attempt=2)
    assert world.imis.fetched_offsets == list(range(0, 100, 10))


def test_imis_failure_then_redelivery(world):
    world.imis.rows = [member(i) for i in range(95)] + [member(3, ID="dup")]
    world.imis.failures = {4: ImisUnavailable("iMIS is down")}
    run_id = world.create_run()
    expander = world.expander(page_size=10)
    with pytest.raises(Retry):
        expander.handle(delivery(run_id, attempt=1))
    expander.handle(delivery(run_id, attempt=2))

    ids = [job["message_id"] for job in world.jobs()]
    run = world.run(run_id)
    assert world.imis.calls[1]["start_offset"] == 40
    assert ids == expected_ids(world, run_id, 95)
    assert run["counts"]["recipients"] == 95
    assert run["skipped_by_reason"] == {"duplicate number": 1}
    assert run["status"] == "sending"


def test_duplicates_found_across_restart(world):
    # The number of row 3 was staged before the restart, so its second member is a duplicate.
    world.imis.rows = [member(i) for i in range(20)] + [member(3, ID="other")]
    world.imis.failures = {1: ImisUnavailable("down")}
    run_id = world.create_run()
    with pytest.raises(Retry):
        world.expander(page_size=10).expand("ACME", run_id)
    world.expander(page_size=10).expand("ACME", run_id, attempt=2)
    assert len(world.jobs()) == 20
    assert world.run(run_id)["skipped_by_reason"] == {"duplicate number": 1}


def test_crash_between_page_and_checkpoint(world, monkeypatch):
    world.imis.rows = [member(i) for i in range(35)]
    run_id = world.create_run()
    original = ExpansionStore._advance
    calls = []

    def crash_on_third(self, run, token, update):
        calls.append(update)
        if len(calls) == 3:
            raise ConnectionError("store unreachable")
        return original(self, run, token, update)

    monkeypatch.setattr(ExpansionStore, "_advance", crash_on_third)
    with pytest.raises(ConnectionError):
        world.expander(page_size=10).expand("ACME", run_id)
    world.expander(page_size=10).expand("ACME", run_id, attempt=2)

    run = world.run(run_id)
    assert [job["to"] for job in world.jobs()] == [e164(i) for i in range(35)]
    assert run["counts"]["recipients"] == 35
    assert run["segments"] == 35
    assert run["encodings"] == {"GSM-7": 35}


def test_second_expander_takes_over(world, monkeypatch):
    world.imis.rows = [member(i) for i in range(40)] + [member(5, ID="other")]
    run_id = world.create_run()
    first = world.expander(page_size=10)
    second = world.expander(page_size=10)
    original = ExpansionStore.stage_page
    staged = []

    def stage_then_take_over(self, run, token, page_no, result, **options):
        original(self, run, token, page_no, result, **options)
        staged.append(page_no)
        if len(staged) == 2:
            second.expand("ACME", run_id, attempt=2)

    monkeypatch.setattr(first._store, "stage_page", stage_then_take_over.__get__(first._store))
    first.expand("ACME", run_id)

    run = world.run(run_id)
    assert staged == [0, 1]
    assert [job["to"] for job in world.jobs()] == [e164(i) for i in range(40)]
    assert run["counts"]["recipients"] == 40
    assert run["skipped_by_reason"] == {"duplicate number": 1}
    assert run["status"] == "sending"


def test_late_page_write_of_old_expander(world):
    world.imis.rows = [member(i) for i in range(20)]
    run_id = world.create_run()
    store = ExpansionStore(world.db, world.runtime.clock)
    old = store.claim("ACME", run_id, "old-token")
    store.claim("ACME", run_id, "new-token")
    from services.recipients.expansion import PageResult

    with pytest.raises(ExpansionSuperseded):
        store.stage_page(old, "old-token", 0, PageResult(jobs=[["x", "+12025550100", "hi", 1, "GSM-7"]]),
                         next_offset=10, keep_jobs=True, over_limit=False)
    world.expander(page_size=10).expand("ACME", run_id, attempt=2)
    assert len(world.jobs()) == 20


def test_page_left_by_crashed_expander_replaced(world):
    world.imis.rows = [member(i) for i in range(20)]
    run_id = world.create_run()
    world.db.run_pages.insert_one({"_id": f"{run_id}:0", "tenant_id": "ACME", "run_id": run_id, "page_no": 0,
                                   "expander": "crashed", "jobs_json": '[["x", "+12025550100", "stale", 1, "GSM-7"]]',
                                   "skipped": [], "segments": 1})
    world.expander(page_size=10).expand("ACME", run_id)
    assert [job["to"] for job in world.jobs()] == [e164(i) for i in range(20)]


# ------------------------------------------------------------------ staff steering during expansion


def test_paused_during_expansion_stays_paused(world, monkeypatch):
    world.imis.rows = [member(i) for i in range(30)]
    run_id = world.create_run()
    original = ExpansionStore.stage_page

    def pause_after_first(self, run, token, page_no, result, **options):
        original(self, run, token, page_no, result, **options)
        world.db.runs.update_one({"_id": run_id}, {"$set": {"status": "paused"}})

    monkeypatch.setattr(ExpansionStore, "stage_page", pause_after_first)
    world.expander(page_size=10).expand("ACME", run_id)

    run = world.run(run_id)
    assert run["status"] == "paused"
    assert run["expanded"] is True
    assert run["counts"]["recipients"] == 30
    assert len(world.jobs()) == 30


def test_paused_run_redelivered_is_expanded(world):
    world.imis.rows = [member(i) for i in range(5)]
    run_id = world.create_run(status="paused")
    world.expander().expand("ACME", run_id)
    assert world.run(run_id)["status"] == "paused"
    assert world.run(run_id)["expanded"] is True
    assert len(world.jobs()) == 5


def test_cancelled_during_expansion_stops(world, monkeypatch):
    world.imis.rows = [member(i) for i in range(30)]
    run_id = world.create_run()
    original = ExpansionStore.stage_page

    def cancel_after_first(self, run, token, page_no, result, **options):
        original(self, run, token, page_no, result, **options)
        world.db.runs.update_one({"_id": run_id}, {"$set": {"status": "cancelled"}})

    monkeypatch.setattr(ExpansionStore, "stage_page", cancel_after_first)
    world.expander(page_size=10).expand("ACME", run_id)

    assert world.run(run_id)["status"] == "cancelled"
    assert world.jobs() == []
    assert world.notices() == []


# ------------------------------------------------------------------ store cost per recipient


class CallCounter:
    """Counts store calls made through a database, as the benchmark does."""

    OPERATIONS = {"find", "find_one", "insert_one", "update_one", "replace_one", "delete_one",
                  "find_one_and_update", "update_many", "insert_many", "delete_many"}

    def __init__(self, db):
        self._db = db
        self.calls = 0

    def __getattr__(self, name):
        collection = self._db[name]
        counter = self

        class Counted:
            def __getattr__(self, attribute):
                value = getattr(collection, attribute)
                if attribute not in CallCounter.OPERATIONS:
                    return value

                def counted(*args, **kwargs):
                    counter.calls += 1
                    return value(*args, **kwargs)

                return counted

        return Counted()


@pytest.mark.parametrize("rows", [100, 1000])
def test_store_calls_per_page_not_per_recipient(world, rows):
    world.imis.rows = [member(i) for i in range(rows)]
    run_id = world.create_run()
    counter = CallCounter(world.db)
    expander = RunExpander(counter, broker=world.runtime.broker, tenants=world.runtime.tenants,
                           imis_factory=lambda tenant: world.imis, notifier=world.runtime.notifier,
                           clock=world.runtime.clock, message_ids=world.runtime.message_ids, page_size=100)
    expander.expand("ACME", run_id)

    pages = rows // 100
    assert len(world.jobs()) == rows
    # Each page costs four calls: page write, checkpoint, page read and job drop. Each
    # batch of jobs costs one checkpoint. The run costs a few more: claim, campaign,
    # opt-out list, end of staging, end of expansion and the completion check.
    assert counter.calls <= 4 * pages + 8
