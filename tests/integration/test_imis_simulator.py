"""ImisClient and ImisSession against the iMIS simulator over real HTTP."""

import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from libs.common.imis import (
    IQA_ENDPOINT,
    QUERY_ENDPOINT,
    ImisAuthError,
    ImisClient,
    ImisError,
    ImisNotFound,
    ImisOutcomeUnknown,
    ImisQueryError,
    ImisQueryNotAvailable,
    ImisQueryNotFound,
    ImisRequestError,
    ImisSession,
    ImisUnavailable,
)
from local import demo_data
from local.simulators.imis import ImisSimulator

REPO_ROOT = Path(__file__).resolve().parents[2]

USER = "textmanager-svc"
PASSWORD = "svc-secret"
MEMBERS = "$/TextManager/Members"
COLUMNS = ["ID", "FirstName", "LastName", "Mobile", "Email", "Dues"]
SENT_AT = datetime(2024, 5, 1, 13, 30, 5, tzinfo=timezone.utc)


def member(index: int) -> dict:
    return {
        "ID": str(20000 + index),
        "FirstName": f"First{index}",
        "LastName": "Ruiz" if index % 4 == 0 else "Kim",
        "Mobile": f"(202) 555-{index:04d}",
        "Email": None if index % 3 == 0 else f"m{index}@example.org",
        "Dues": index,
    }


ROWS = [member(i) for i in range(100)]


def ids(pages) -> list[str]:
    return [row["ID"] for page in pages for row in page.rows]


@pytest.fixture
def sim():
    simulator = ImisSimulator({USER: PASSWORD})
    simulator.add_query(MEMBERS, COLUMNS, ROWS)
    simulator.add_query("$/TextManager/By Name", COLUMNS, ROWS, prompts=["LastName", "FirstName"])
    simulator.start()
    yield simulator
    simulator.stop()


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def client(sim, sleeps):
    with ImisClient(sim.url, timeout_s=5.0, sleep=sleeps.append) as imis:
        yield imis


@pytest.fixture
def session(client):
    return ImisSession(client, USER, PASSWORD)


def query_requests(sim, endpoint=QUERY_ENDPOINT) -> list[dict]:
    return [r for r in sim.request_log() if r["path"] == f"/{endpoint}"]


# -- sign-in


def test_token_ok(client):
    assert len(client.get_token(USER, PASSWORD)) > 20


def test_token_bad_password(client):
    with pytest.raises(ImisAuthError) as caught:
        client.get_token(USER, "wrong-password")
    assert "Check the iMIS user name and password" in caught.value.message
    assert "wrong-password" not in caught.value.message


def test_token_unknown_user(client):
    with pytest.raises(ImisAuthError):
        client.get_token("nobody", PASSWORD)


def test_token_bad_grant(sim):
    response = requests.post(f"{sim.url}/token", data={"grant_type": "client_credentials"}, timeout=5)
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


def test_token_shape(sim):
    form = {"grant_type": "password", "username": USER, "password": PASSWORD}
    body = requests.post(f"{sim.url}/token", data=form, timeout=5).json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 1209599
    assert body["userName"] == USER


def test_token_server_error(client, sim, sleeps):
    sim.fail_next("/token", 500, count=10)
    with pytest.raises(ImisUnavailable) as caught:
        client.get_token(USER, PASSWORD)
    assert sim.url in caught.value.message
    assert len(sleeps) == 4


def test_token_wrong_base_url(sim, sleeps):
    with ImisClient(sim.url + "/not-imis", sleep=sleeps.append) as wrong:
        with pytest.raises(ImisUnavailable) as caught:
            wrong.get_token(USER, PASSWORD)
    assert f"{sim.url}/not-imis" in caught.value.message


def test_token_server_down(sim, sleeps):
    url = sim.url
    sim.stop()
    with ImisClient(url, sleep=sleeps.append, max_retries=1) as down:
        with pytest.raises(ImisUnavailable) as caught:
            down.get_token(USER, PASSWORD)
    assert url in caught.value.message
    assert sleeps == [0.5]


def test_errors_share_base(client):
    with pytest.raises(ImisError):
        client.get_token(USER, "wrong")


def test_api_needs_token(sim):
    response = requests.get(f"{sim.url}/api/query", params={"QueryName": MEMBERS}, timeout=5)
    assert response.status_code == 401


# -- queries: row shapes


def test_query_flat_rows(session, client, sim):
    pages = list(session.iter_query_pages(MEMBERS))
    assert [row for page in pages for row in page.rows] == ROWS
    assert client.query_endpoint == QUERY_ENDPOINT
    assert query_requests(sim, IQA_ENDPOINT) == []


def test_iqa_fallback_rows(session, client, sim):
    sim.query_endpoint_missing = True
    pages = list(session.iter_query_pages(MEMBERS))
    assert [row for page in pages for row in page.rows] == ROWS
    assert client.query_endpoint == IQA_ENDPOINT


def test_iqa_choice_remembered(session, sim):
    sim.query_endpoint_missing = True
    list(session.iter_query_pages(MEMBERS))
    list(session.iter_query_pages(MEMBERS))
    assert len(query_requests(sim, QUERY_ENDPOINT)) == 1
    assert len(query_requests(sim, IQA_ENDPOINT)) == 2


def test_iqa_choice_shared_by_sessions(client, sim):
    sim.query_endpoint_missing = True
    list(ImisSession(client, USER, PASSWORD).iter_query_pages(MEMBERS))
    list(ImisSession(client, USER, PASSWORD).iter_query_pages(MEMBERS))
    assert len(query_requests(sim, QUERY_ENDPOINT)) == 1


@pytest.mark.parametrize("missing", [False, True])
def test_null_columns(session, sim, missing):
    sim.query_endpoint_missing = missing
    rows = next(session.iter_query_pages(MEMBERS)).rows
    assert "Email" in rows[0]
    assert rows[0]["Email"] is None
    assert rows[1]["Email"] == "m1@example.org"


@pytest.mark.parametrize("missing", [False, True])
def test_int_column(session, sim, missing):
    sim.query_endpoint_missing = missing
    rows = next(session.iter_query_pages(MEMBERS)).rows
    assert rows[7]["Dues"] == 7


def test_iqa_raw_shape(sim, client):
    token = client.get_token(USER, PASSWORD)
    response = requests.get(
        f"{sim.url}/api/iqa",
        params={"QueryName": MEMBERS, "limit": 1},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    entity = response.json()["Items"]["$values"][0]
    properties = {p["Name"]: p for p in entity["Properties"]["$values"]}
    assert entity["$type"] == "Asi.Soa.Core.DataContracts.GenericEntityData, Asi.Contracts"
    assert properties["ResultRow"]["Value"] == {"$type": "System.Int32", "$value": 1}
    assert "Value" not in properties["Email"]


@pytest.mark.parametrize("missing", [False, True])
def test_query_columns(session, sim, missing):
    sim.query_endpoint_missing = missing
    assert session.query_columns(MEMBERS) == COLUMNS


# -- queries: paging


def test_paging_follows_limit(client, sim):
    sim.max_limit = 40
    pages = list(ImisSession(client, USER, PASSWORD).iter_query_pages(MEMBERS, page_size=500))
    assert [p.offset for p in pages] == [0, 40, 80]
    assert [len(p.rows) for p in pages] == [40, 40, 20]
    assert ids(pages) == [row["ID"] for row in ROWS]


def test_paging_last_page(session, sim):
    sim.max_limit = 40
    pages = list(session.iter_query_pages(MEMBERS))
    assert [p.has_next for p in pages] == [True, True, False]
    assert [p.next_offset for p in pages] == [40, 80, 0]
    assert pages[0].total_count == 100


def test_paging_asks_page_size(session, sim):
    list(session.iter_query_pages(MEMBERS, page_size=30))
    limits = [r["args"]["limit"] for r in query_requests(sim)]
    assert limits == [["30"]] * 4


def test_paging_caps_page_size(session, sim):
    list(session.iter_query_pages(MEMBERS, page_size=5000))
    assert query_requests(sim)[0]["args"]["limit"] == ["500"]


def test_paging_start_offset(session):
    pages = list(session.iter_query_pages(MEMBERS, page_size=30, start_offset=60))
    assert [p.offset for p in pages] == [60, 90]
    assert ids(pages)[0] == "20060"


def test_paging_repeated_rows(session, sim):
    sim.max_limit = 40
    sim.repeat_rows_across_pages = 3
    pages = list(session.iter_query_pages(MEMBERS))
    all_ids = ids(pages)
    assert len(all_ids) == 106
    assert set(all_ids) == {row["ID"] for row in ROWS}
    assert pages[1].rows[0]["ID"] == "20037"


def test_paging_empty_query(session, sim):
    sim.add_query("$/TextManager/Nobody", COLUMNS, [])
    pages = list(session.iter_query_pages("$/TextManager/Nobody"))
    assert len(pages) == 1
    assert pages[0].rows == ()


def test_paging_lazy_rows(session, sim):
    sim.add_query(
        demo_data.BENCH_QUERY_PATH,
        demo_data.MEMBER_COLUMNS,
        row_factory=demo_data.build_bench_member,
        total=2_000,
    )
    pages = list(session.iter_query_pages(demo_data.BENCH_QUERY_PATH))
    assert len(ids(pages)) == 2_000
    assert pages[3].rows[-1] == demo_data.build_bench_member(1_999)


# -- tokens expiring


def test_revoked_token_mid_paging(session, sim):
    sim.max_limit = 40
    pages = session.iter_query_pages(MEMBERS)
    first = next(pages)
    old_token = session.token()
    sim.revoke_tokens()
    second = next(pages)

    offsets = [(r["args"]["offset"], r["status"]) for r in query_requests(sim)]
    assert offsets == [(["0"], 200), (["40"], 401), (["40"], 200)]
    assert second.offset == first.next_offset
    assert session.token() != old_token


def test_one_token_request_per_401(session, sim):
    list(session.iter_query_pages(MEMBERS))
    sim.revoke_tokens()
    list(session.iter_query_pages(MEMBERS))
    token_requests = [r for r in sim.request_log() if r["path"] == "/token"]
    assert len(token_requests) == 2


def test_token_rejected_twice(session, sim):
    session.token()
    sim.fail_next("/api/query", 401, count=2)
    with pytest.raises(ImisAuthError):
        next(session.iter_query_pages(MEMBERS))


def test_token_only_session_expires(client, sim):
    session = ImisSession.from_token(client, USER, client.get_token(USER, PASSWORD))
    sim.revoke_tokens()
    with pytest.raises(ImisAuthError) as caught:
        next(session.iter_query_pages(MEMBERS))
    assert "Sign in again" in caught.value.message


def test_new_token_revokes_older(client, sim):
    sim.single_token_per_user = True
    staff = ImisSession(client, USER, PASSWORD)
    worker = ImisSession(client, USER, PASSWORD)
    staff.query_columns(MEMBERS)
    worker.query_columns(MEMBERS)
    assert staff.query_columns(MEMBERS) == COLUMNS


# -- retries


def test_retry_429(session, sim, sleeps):
    sim.fail_next("/api/query", 429, count=2)
    pages = list(session.iter_query_pages(MEMBERS))
    assert ids(pages) == [row["ID"] for row in ROWS]
    assert sleeps == [1.0, 1.0]


def test_retry_500(session, sim, sleeps):
    sim.fail_next("/api/query", 500, count=3)
    list(session.iter_query_pages(MEMBERS))
    assert sleeps == [0.5, 1.0, 2.0]


def test_retry_503_html(session, sim, sleeps):
    sim.fail_next("/api/query", 503, count=1)
    list(session.iter_query_pages(MEMBERS))
    assert sleeps == [0.5]


def test_retries_run_out(session, sim, sleeps):
    sim.fail_next("/api/query", 503, count=5)
    with pytest.raises(ImisUnavailable) as caught:
        list(session.iter_query_pages(MEMBERS))
    assert sleeps == [0.5, 1.0, 2.0, 4.0]
    assert sim.url in caught.value.message


def test_retry_backoff_bounded(sim, sleeps):
    with ImisClient(sim.url, sleep=sleeps.append, max_retries=6) as imis:
        sim.fail_next("/token", 500, count=7)
        with pytest.raises(ImisUnavailable):
            imis.get_token(USER, PASSWORD)
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


# -- prompts and query errors


@pytest.mark.parametrize("missing", [False, True])
def test_prompts_filter_rows(session, sim, missing):
    sim.query_endpoint_missing = missing
    prompts = {"LastName": "Ruiz", "FirstName": "First8"}
    rows = [row for page in session.iter_query_pages("$/TextManager/By Name", prompts=prompts) for row in page.rows]
    assert [row["ID"] for row in rows] == ["20008"]


def test_prompts_named_on_query(session, sim):
    list(session.iter_query_pages("$/TextManager/By Name", prompts={"LastName": "Ruiz", "FirstName": "x"}))
    args = query_requests(sim)[0]["args"]
    assert args["LastName"] == ["Ruiz"]
    assert args["FirstName"] == ["x"]


def test_prompts_positional_on_iqa(session, sim):
    sim.query_endpoint_missing = True
    list(session.iter_query_pages("$/TextManager/By Name", prompts={"LastName": "Ruiz", "FirstName": "x"}))
    args = query_requests(sim, IQA_ENDPOINT)[0]["args"]
    assert args["Parameter"] == ["Ruiz", "x"]


@pytest.mark.parametrize("missing", [False, True])
def test_prompt_missing(session, sim, missing):
    sim.query_endpoint_missing = missing
    with pytest.raises(ImisQueryError) as caught:
        next(session.iter_query_pages("$/TextManager/By Name", prompts={"LastName": "Ruiz"}))
    assert any("FirstName" in message for message in caught.value.errors)
    assert "FirstName" in caught.value.message


@pytest.mark.parametrize("missing", [False, True])
def test_unknown_query(session, sim, missing):
    sim.query_endpoint_missing = missing
    with pytest.raises(ImisQueryNotFound) as caught:
        next(session.iter_query_pages("$/TextManager/Gone"))
    assert "$/TextManager/Gone" in caught.value.message
    assert '"Available via the REST API"' in caught.value.message


def test_unknown_query_keeps_endpoint(session, client):
    with pytest.raises(ImisQueryNotFound):
        next(session.iter_query_pages("$/TextManager/Gone"))
    assert client.query_endpoint is None


def test_query_not_on_rest(session, sim):
    sim.set_rest_available(MEMBERS, False)
    with pytest.raises(ImisQueryNotAvailable) as caught:
        next(session.iter_query_pages(MEMBERS))
    assert '"Available via the REST API"' in caught.value.message


def test_query_not_on_rest_iqa(session, sim):
    sim.query_endpoint_missing = True
    sim.set_rest_available(MEMBERS, False)
    with pytest.raises(ImisQueryNotAvailable):
        next(session.iter_query_pages(MEMBERS))


# -- IQA picker


def test_picker_lists_folder(session, sim):
    sim.add_query("$/TextManager/Archive/Old", COLUMNS, ROWS)
    documents = session.list_folder("$/TextManager")
    assert [(d.name, d.type_code) for d in documents] == [
        ("Archive", "FOL"),
        ("By Name", "IQD"),
        ("Members", "IQD"),
    ]
    assert documents[2].path == MEMBERS


def test_picker_root_folder(session):
    assert [d.path for d in session.list_folder("$")] == ["$/TextManager"]


def test_picker_finds_query(session):
    document = session.find_document(MEMBERS)
    assert document.is_folder is False
    assert document.type_code == "IQD"


def test_picker_unknown_path(session):
    assert session.find_document("$/Nowhere") is None


def test_picker_unknown_folder(session):
    with pytest.raises(ImisNotFound):
        session.list_folder("$/Nowhere")


# -- activities


def create_unsub(session, party_id="10045", number="+12025550142", sent_at=SENT_AT) -> str:
    return session.create_activity(
        party_id=party_id,
        activity_type="TEXTUNSUB",
        transaction_date=sent_at,
        category="Text Manager",
        uf_1=number,
    )


def test_activity_created(session, sim):
    seqn = create_unsub(session)
    stored = sim.activities()
    assert len(stored) == 1
    assert stored[0]["seqn"] == seqn
    assert stored[0]["party_id"] == "10045"
    assert stored[0]["activity_type"] == "TEXTUNSUB"
    assert stored[0]["transaction_date"] == "2024-05-01T13:30:05"
    assert stored[0]["category"] == "Text Manager"
    assert stored[0]["uf_1"] == "+12025550142"


def test_activity_date_in_utc(session, sim):
    eastern = timezone(timedelta(hours=-4))
    create_unsub(session, sent_at=datetime(2024, 5, 1, 9, 30, 5, tzinfo=eastern))
    assert sim.activities()[0]["transaction_date"] == "2024-05-01T13:30:05"


def test_activity_seqn_increases(session):
    first = create_unsub(session)
    second = create_unsub(session, party_id="10046", number="+12025550143")
    assert int(second) > int(first)


def test_activity_found(session):
    seqn = create_unsub(session)
    create_unsub(session, party_id="10046", number="+12025550143")
    found = session.find_activities("10045", "TEXTUNSUB")
    assert [a["seqn"] for a in found] == [seqn]
    assert found[0]["uf_1"] == "+12025550142"
    assert found[0]["transaction_date"] == "2024-05-01T13:30:05"


def test_activity_found_by_type(session):
    create_unsub(session)
    assert session.find_activities("10045", "TEXTMSG") == []


def test_activity_search_pages(session, sim):
    sim.max_limit = 2
    for _ in range(5):
        create_unsub(session)
    assert len(session.find_activities("10045", "TEXTUNSUB")) == 5


def test_activity_deleted(session, sim):
    keep = create_unsub(session)
    seqn = create_unsub(session)
    assert session.delete_activity(seqn) is True
    assert [a["seqn"] for a in sim.activities()] == [keep]


def test_activity_delete_missing(session):
    assert session.delete_activity("999") is False


def test_activity_unknown_type(session, sim):
    with pytest.raises(ImisRequestError) as caught:
        session.create_activity(
            party_id="10045",
            activity_type="TEXTNOPE",
            transaction_date=SENT_AT,
            category="Text Manager",
            uf_1="+12025550142",
        )
    assert any("does not exist" in message for message in caught.value.errors)
    assert "Activity Types" in caught.value.message
    assert sim.activities() == []


def test_activity_naive_date_as_utc(session, sim):
    create_unsub(session, sent_at=datetime(2024, 5, 1, 13, 30))
    assert sim.activities()[0]["transaction_date"] == "2024-05-01T13:30:00"


def test_activity_503_retried(session, sim, sleeps):
    session.token()
    sim.fail_next("/api/Activity", 503, count=1)
    create_unsub(session)
    assert len(sim.activities()) == 1
    assert sleeps == [0.5]


def test_activity_500_not_retried(session, sim, sleeps):
    session.token()
    sim.fail_next("/api/Activity", 500, count=1)
    with pytest.raises(ImisOutcomeUnknown):
        create_unsub(session)
    assert sleeps == []


def test_activity_after_revoke(session, sim):
    create_unsub(session)
    sim.revoke_tokens()
    create_unsub(session)
    assert len(sim.activities()) == 2


def test_activity_sim_listing(session, sim):
    create_unsub(session)
    listed = requests.get(f"{sim.url}/_sim/activities", timeout=5).json()
    assert listed == sim.activities()


def test_activity_reset(session, sim):
    create_unsub(session)
    sim.reset_activities()
    assert sim.activities() == []


# -- virtual directory


def test_prefix_routes():
    with ImisSimulator({USER: PASSWORD}, prefix="/imis/") as prefixed:
        prefixed.add_query(MEMBERS, COLUMNS, ROWS)
        with ImisClient(prefixed.url) as imis:
            rows = next(ImisSession(imis, USER, PASSWORD).iter_query_pages(MEMBERS)).rows
        root = prefixed.url.removesuffix("/imis")
        status = requests.post(f"{root}/token", data={"grant_type": "password"}, timeout=5).status_code
    assert prefixed.url.endswith("/imis")
    assert len(rows) == 100
    assert status == 404


def test_prefix_failure_paths():
    with ImisSimulator({USER: PASSWORD}, prefix="imis") as prefixed:
        prefixed.fail_next("/token", 500, count=1)
        sleeps = []
        with ImisClient(prefixed.url, sleep=sleeps.append) as imis:
            imis.get_token(USER, PASSWORD)
    assert sleeps == [0.5]


# -- demo data and command line


def test_demo_seed(session):
    sim_demo = ImisSimulator()
    demo_data.seed_imis(sim_demo)
    with sim_demo:
        with ImisClient(sim_demo.url) as imis:
            staff = ImisSession(imis, *demo_data.DEMO_STAFF_USER)
            pages = list(staff.iter_query_pages(demo_data.DEMO_QUERY_PATH, page_size=100))
    assert len(ids(pages)) == demo_data.DEMO_MEMBER_COUNT


def test_cli_serves_until_sigterm():
    command = [sys.executable, "-m", "local.simulators.imis", "--port", "0", "--user", "extra:pw", "--rows", "1000"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        url = line.strip().rsplit(" ", 1)[-1]
        with ImisClient(url) as imis:
            session = ImisSession(imis, "extra", "pw")
            bench_rows = sum(len(p.rows) for p in session.iter_query_pages(demo_data.BENCH_QUERY_PATH))
            demo_columns = session.query_columns(demo_data.DEMO_QUERY_PATH)
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=10)
        process.stdout.close()
    assert line.startswith("iMIS simulator listening on http://127.0.0.1:")
    assert bench_rows == 1000
    assert demo_columns == demo_data.MEMBER_COLUMNS
    assert exit_code == 0
