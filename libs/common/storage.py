"""MongoDB access: the client, the indexes, and the embedded mongomock store."""

from __future__ import annotations

import copy
import functools
import logging
import threading
from urllib.parse import urlparse

import pymongo
from pymongo.database import Database

logger = logging.getLogger(__name__)

INDEXES: dict[str, list[tuple[list[tuple[str, int]], dict]]] = {
    "sessions": [([("expires_at", pymongo.ASCENDING)], {"expireAfterSeconds": 0})],
    "sign_in_failures": [([("expires_at", pymongo.ASCENDING)], {"expireAfterSeconds": 0})],
    "campaigns": [([("tenant_id", 1), ("created_at", -1)], {})],
    "runs": [
        ([("tenant_id", 1), ("campaign_id", 1)], {}),
        ([("status", 1), ("due_at", 1)], {}),
    ],
    "run_pages": [([("run_id", 1), ("page_no", 1)], {})],
    "messages": [
        ([("run_id", 1), ("status", 1)], {}),
        ([("tenant_id", 1), ("sid", 1)], {"sparse": True}),
        ([("tenant_id", 1), ("to", 1)], {}),
        ([("run_id", 1), ("to", 1)], {}),
    ],
    "callbacks": [([("tenant_id", 1), ("message_id", 1)], {})],
    "optouts": [([("tenant_id", 1), ("number", 1)], {}), ([("tenant_id", 1), ("opted_out_at", -1)], {})],
    "notifications": [([("tenant_id", 1), ("created_at", -1)], {})],
    "usage": [([("tenant_id", 1), ("day", 1)], {})],
}


def connect(mongo_url: str) -> Database:
    """Return the database named in the URL: MongoDB, or the embedded mongomock store."""
    name = (urlparse(mongo_url).path or "/").lstrip("/") or "textmanager"
    if mongo_url.startswith("mongomock://"):
        import mongomock

        _patch_mongomock()
        return mongomock.MongoClient(tz_aware=True)[name]
    client = pymongo.MongoClient(mongo_url, tz_aware=True, serverSelectionTimeoutMS=5000)
    return client.get_database(name)


def create_indexes(db: Database) -> None:
    """Create every index the services query by; safe to repeat at each start."""
    for collection, indexes in INDEXES.items():
        for keys, options in indexes:
            db[collection].create_index(keys, **options)


_patch_lock = threading.Lock()
_patched = False
_write_lock = threading.RLock()
# How many serialised writes the current thread is inside (the lock is re-entrant).
_write_depth = threading.local()

_WRITE_METHODS = (
    "insert_one", "insert_many", "update_one", "update_many", "replace_one",
    "delete_one", "delete_many", "find_one_and_update", "find_one_and_replace",
    "find_one_and_delete",
)


def _patch_mongomock() -> None:
    """Make mongomock keep MongoDB's guarantees and speed where the services rely on them.

    mongomock scans every document for every filter, so a lookup by `_id` grows with the
    collection, and the fast path reads the one document instead. Its find-and-modify is
    a find followed by an update, so two threads can both claim one document. One lock
    around writes makes each single-document update atomic, as it is in MongoDB.

    mongomock also updates stored documents in place while readers in other threads
    copy them, which raises "dictionary changed size during iteration". So reads pick
    their documents under the lock, and a write first replaces each document it touches
    with a copy: a document a reader holds never changes again.
    """
    global _patched
    with _patch_lock:
        if _patched:
            return
        from mongomock import collection as mongomock_collection
        from mongomock.filtering import filter_applies

        original_iter = mongomock_collection.Collection._iter_documents

        def matching(self, filter):
            doc_id = filter.get("_id") if isinstance(filter, dict) else None
            if isinstance(doc_id, (str, int)) and not isinstance(doc_id, bool):
                try:
                    document = self._store[doc_id]
                except KeyError:
                    return iter(())
                return iter([document] if filter_applies(filter, document) else [])
            return original_iter(self, filter)

        def iter_documents(self, filter):
            if getattr(_write_depth, "value", 0):
                return _copies_for_write(self, matching(self, filter))
            with _write_lock:
                return iter(list(matching(self, filter)))

        mongomock_collection.Collection._iter_documents = iter_documents
        for name in _WRITE_METHODS:
            setattr(mongomock_collection.Collection, name, _serialised(getattr(mongomock_collection.Collection, name)))
        _patched = True


def _copies_for_write(collection, documents):
    """Yield a stored copy of each document, for the write in progress to change in place."""
    for document in documents:
        fresh = copy.deepcopy(document)
        collection._store[document["_id"]] = fresh
        yield fresh


def _serialised(method):
    @functools.wraps(method)
    def locked(*args, **kwargs):
        with _write_lock:
            _write_depth.value = getattr(_write_depth, "value", 0) + 1
            try:
                return method(*args, **kwargs)
            finally:
                _write_depth.value -= 1

    return locked
