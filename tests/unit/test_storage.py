"""The embedded store: the `_id` fast path agrees with a scan, and single-document writes are atomic."""

from __future__ import annotations

import sys
import threading

import pytest
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

THREADS = 8

DOCUMENTS = [
    {"_id": "r1", "tenant_id": "ACME", "status": "due", "n": 1, "tags": ["a", "b"]},
    {"_id": "r2", "tenant_id": "ACME", "status": "sending", "n": 5, "tags": ["b"]},
    {"_id": "r3", "tenant_id": "OTHER", "status": "due", "n": 9},
    {"_id": 7, "tenant_id": "ACME", "status": "due", "n": 2},
]

# Filters that pin `_id` to one value, so that they take the fast path, with extra conditions.
FILTERS = [
    {"_id": "r1"},
    {"_id": "missing"},
    {"_id": "r1", "status": "due"},
    {"_id": "r1", "status": "sending"},
    {"_id": "r1", "tenant_id": "OTHER"},
    {"_id": "r2", "status": {"$in": ["due", "sending"]}},
    {"_id": "r2", "n": {"$gt": 3}},
    {"_id": "r2", "n": {"$lt": 3}},
    {"_id": "r1", "tags": "a"},
    {"_id": "r3", "missing_field": {"$exists": False}},
    {"_id": "r3", "$or": [{"status": "sending"}, {"n": 9}]},
    {"_id": "r3", "$or": [{"status": "sending"}, {"n": 8}]},
    {"_id": 7},
    {"_id": 7, "status": "sending"},
    {"_id": "7"},
]


@pytest.fixture
def runs(db):
    db.runs.insert_many([dict(document) for document in DOCUMENTS])
    return db.runs


def _scan(filter: dict) -> dict:
    """The same filter wrapped in $and, so that it has no top-level `_id` and scans the collection."""
    return {"$and": [filter]}


@pytest.mark.parametrize("filter", FILTERS, ids=repr)
def test_fast_path_find(runs, filter):
    assert list(runs.find(filter)) == list(runs.find(_scan(filter)))


@pytest.mark.parametrize("filter", FILTERS, ids=repr)
def test_fast_path_count(runs, filter):
    assert runs.count_documents(filter) == runs.count_documents(_scan(filter))


@pytest.mark.parametrize("filter", FILTERS, ids=repr)
def test_fast_path_update(db, filter):
    """The same update through the fast path and through a scan leaves the same documents."""
    db.fast.insert_many([dict(document) for document in DOCUMENTS])
    db.scan.insert_many([dict(document) for document in DOCUMENTS])
    update = {"$set": {"status": "claimed"}, "$inc": {"n": 1}}

    fast = db.fast.find_one_and_update(filter, update, return_document=ReturnDocument.AFTER)
    scan = db.scan.find_one_and_update(_scan(filter), update, return_document=ReturnDocument.AFTER)

    assert fast == scan
    assert list(db.fast.find()) == list(db.scan.find())


def test_fast_path_returns_copies(runs):
    found = runs.find_one({"_id": "r1"})
    found["status"] = "changed here only"

    assert runs.find_one({"_id": "r1"})["status"] == "due"


@pytest.fixture
def frequent_thread_switches():
    """Switch threads every microsecond, so that a race shows up within a short test."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


def _race(work) -> list:
    """Run work(index) on THREADS threads released together; return their results in index order."""
    barrier = threading.Barrier(THREADS)
    results: list = [None] * THREADS

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work(index)
        except Exception as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


def test_concurrent_claims_one_winner(runs, frequent_thread_switches):
    def claim(index: int):
        return runs.find_one_and_update({"_id": "r1", "status": "due"},
                                        {"$set": {"status": "publishing", "claimed_by": index}},
                                        return_document=ReturnDocument.AFTER)

    results = _race(claim)

    winners = [result for result in results if result is not None]
    assert len(winners) == 1
    assert runs.find_one({"_id": "r1"})["claimed_by"] == winners[0]["claimed_by"]


def test_concurrent_claims_by_scan_one_winner(runs, frequent_thread_switches):
    def claim(index: int):
        return runs.find_one_and_update({"status": "due", "tenant_id": "OTHER"},
                                        {"$set": {"status": "publishing", "claimed_by": index}})

    results = _race(claim)

    assert len([result for result in results if result is not None]) == 1


def test_concurrent_upserts_one_insert(db, frequent_thread_switches):
    """The sender's claim: an upsert whose filter excludes a claimed message."""

    def claim(index: int):
        return db.messages.find_one_and_update(
            {"_id": "r1:+12025550142", "status": {"$in": ["retrying", "paused", "deferred"]}},
            {"$set": {"status": "sending", "claimed_by": index}, "$inc": {"attempts": 1}},
            upsert=True, return_document=ReturnDocument.AFTER)

    results = _race(claim)

    inserted = [result for result in results if isinstance(result, dict)]
    refused = [result for result in results if isinstance(result, DuplicateKeyError)]
    assert len(inserted) == 1
    assert len(refused) == THREADS - 1
    assert db.messages.find_one({"_id": "r1:+12025550142"})["attempts"] == 1


def test_concurrent_increments_all_counted(runs, frequent_thread_switches):
    def increment(index: int) -> None:
        for _ in range(50):
            runs.update_one({"_id": "r2"}, {"$inc": {"counts.done": 1}})

    _race(increment)

    assert runs.find_one({"_id": "r2"})["counts"]["done"] == THREADS * 50


def test_reads_during_writes(runs, frequent_thread_switches):
    """Readers copy documents that writers are changing, adding fields as they go."""
    stop = threading.Event()
    errors: list[Exception] = []

    def write(index: int) -> None:
        for step in range(40):
            runs.update_one({"_id": "r2"}, {"$set": {f"field_{index}_{step}": step}, "$inc": {"n": 1}})

    def read() -> None:
        while not stop.is_set():
            try:
                runs.find_one({"_id": "r2"})
                list(runs.find({"tenant_id": "ACME"}))
            except Exception as error:
                errors.append(error)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for reader in readers:
        reader.start()
    _race(write)
    stop.set()
    for reader in readers:
        reader.join(10)

    assert errors == []
    assert runs.find_one({"_id": "r2"})["n"] == 5 + THREADS * 40
