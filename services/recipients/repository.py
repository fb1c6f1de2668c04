"""Store access of the recipients service: run claims, staged pages and checkpoints.

Every write that moves a run forward filters on the run's `expander` token. When a
redelivered run message makes a second expander take the run over, the first one
finds out at its next write and stops, so its late writes change nothing.
"""

from __future__ import annotations

import json
import logging

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from services.recipients.errors import ExpansionSuperseded, RunFailed
from services.recipients.expansion import PageResult, RowProcessor

logger = logging.getLogger(__name__)

# Statuses in which a run message may start or resume expansion. `publishing` is
# included because the scheduler marks a run `queued` only after the broker
# confirmed the message, so the message can arrive first.
CLAIMABLE_STATUSES = ("publishing", "queued", "expanding")
# Statuses in which expansion goes on. Staff may pause a run while it expands, and the
# sender keeps the texts of a paused run back until staff resume it.
EXPANDING_STATUSES = ("expanding", "paused")
# Times a page write is tried when it finds a page left by an earlier expander.
_PAGE_WRITE_ATTEMPTS = 3


def load_opted_out(db: Database, tenant_id: str) -> set[str]:
    """Return every number on the tenant's opt-out list, read with one query.

    One read per run keeps the cost per recipient constant. mongomock runs a look-up
    by many ids as a scan of the whole collection, which per page would cost the
    size of the list again and again. An opt-out recorded after this read is
    missed by the run. Twilio rejects a text to a number that replied STOP with
    error 21610, which the sender records as an opt-out.
    """
    return {document["number"] for document in db.optouts.find({"tenant_id": tenant_id}, {"number": 1})}


def page_id(run_id: str, page_no: int) -> str:
    return f"{run_id}:{page_no}"


class ExpansionStore:
    """The runs, campaigns, run_pages and optouts collections as expansion uses them."""

    def __init__(self, db: Database, clock):
        self._db = db
        self._clock = clock

    # -- claiming

    def claim(self, tenant_id: str, run_id: str, token: str) -> dict | None:
        """Make `token` the run's expander and return the run; None when it needs no expansion.

        A run that an earlier expander claimed is taken over, because its message was
        delivered again: that expander crashed, or it stops at its next write.
        """
        now = self._clock.now()
        run = self._db.runs.find_one_and_update(
            {"_id": run_id, "tenant_id": tenant_id, "status": {"$in": list(CLAIMABLE_STATUSES)}},
            {"$set": {"status": "expanding", "expander": token, "expansion_claimed_at": now}},
            return_document=ReturnDocument.AFTER,
        )
        if run is not None:
            return run
        return self._db.runs.find_one_and_update(
            {"_id": run_id, "tenant_id": tenant_id, "status": "paused", "expanded": {"$ne": True}},
            {"$set": {"expander": token, "expansion_claimed_at": now}},
            return_document=ReturnDocument.AFTER,
        )

    def campaign(self, run: dict) -> dict | None:
        return self._db.campaigns.find_one({"_id": run["campaign_id"], "tenant_id": run["tenant_id"]})

    def load_opted_out(self, tenant_id: str) -> set[str]:
        return load_opted_out(self._db, tenant_id)

    # -- staging

    def restore(self, run: dict, processor: RowProcessor) -> None:
        """Give the processor the state of the pages staged before `stage_page_no`."""
        before = run.get("stage_page_no", 0)
        if before == 0:
            return
        staged = self._db.run_pages.find(
            {"run_id": run["_id"], "tenant_id": run["tenant_id"], "page_no": {"$lt": before}},
            {"jobs_json": 1, "numbers_json": 1, "skipped": 1},
        )
        for page in staged:
            processor.restore(_jobs_of(page), page.get("skipped", []))
            processor.restore(_numbers_of(page), [])
        logger.info("resuming staging at page %s with %s numbers already taken", before, len(processor.seen))

    def stage_page(self, run: dict, token: str, page_no: int, result: PageResult, *, next_offset: int | None,
                   keep_jobs: bool, over_limit: bool) -> None:
        """Store one processed page, then move the staging checkpoint past it.

        The jobs are only ever read back whole, to publish them, so they are stored as
        one JSON string. mongomock copies and walks every nested value on each write
        and read, which cost about 5 ms per page of 500 jobs as nested lists. With
        `keep_jobs` false (the run is already over its segment limit, so it will not
        start) only each job's member id and number are kept, in `numbers_json`, so a
        restart still finds the duplicates. Raises ExpansionSuperseded when another
        expander has taken the run over.
        """
        document = {
            "_id": page_id(run["_id"], page_no), "tenant_id": run["tenant_id"], "run_id": run["_id"],
            "page_no": page_no, "expander": token, "skipped": result.skipped, "segments": result.segments,
        }
        if keep_jobs:
            document["jobs_json"] = json.dumps(result.jobs, separators=(",", ":"), ensure_ascii=False)
        else:
            document["numbers_json"] = json.dumps([job[:2] for job in result.jobs], separators=(",", ":"))
        self._write_page(run, token, document)

        increments = {"staged_recipients": len(result.jobs), "staged_segments": result.segments,
                      "counts.skipped": len(result.skipped)}
        for reason, count in result.skipped_by_reason().items():
            increments[f"skipped_by_reason.{_field_name(reason)}"] = count
        for encoding, count in result.encodings.items():
            increments[f"encodings.{encoding}"] = count
        for name, count in result.blank_fields.items():
            increments[f"blank_fields.{_field_name(name)}"] = count
        checkpoint = {"stage_page_no": page_no + 1, "stage_offset": next_offset}
        if over_limit:
            checkpoint["over_limit"] = True
        self._advance(run, token, {"$set": checkpoint, "$inc": increments})

    def finish_staging(self, run: dict, token: str, page_count: int) -> dict:
        """Mark every page staged; return the run with its totals."""
        staged = self._db.runs.find_one_and_update(
            self._owned(run, token),
            {"$set": {"staged": True, "page_count": page_count, "stage_offset": None}},
            return_document=ReturnDocument.AFTER,
        )
        if staged is None:
            raise ExpansionSuperseded("another expander took the run over, or it was stopped, during staging")
        return staged

    def _write_page(self, run: dict, token: str, document: dict) -> None:
        """Insert or replace this expander's page; replace one that an earlier expander left."""
        for _ in range(_PAGE_WRITE_ATTEMPTS):
            try:
                self._db.run_pages.replace_one({"_id": document["_id"], "expander": token}, document, upsert=True)
                return
            except DuplicateKeyError:
                pass
            # The page was written by an expander that never moved the checkpoint past
            # it. It may still be alive, so the run must still be this expander's.
            if self._db.runs.find_one(self._owned(run, token), {"_id": 1}) is None:
                raise ExpansionSuperseded("another expander took the run over, or it was stopped, during staging")
            self._db.run_pages.delete_one({"_id": document["_id"], "expander": {"$ne": token}})
        raise ExpansionSuperseded(f"page {document['page_no']} kept being written by another expander")

    # -- publishing

    def staged_jobs(self, run: dict, first_page: int, max_jobs: int) -> tuple[list[list], int]:
        """Return the staged jobs of pages from `first_page` on, stopping once `max_jobs` are gathered.

        Returns the jobs and the number of the page after the last one read. Raises
        RunFailed when a page that staging stored is missing.
        """
        jobs: list[list] = []
        page_no = first_page
        while page_no < run["page_count"] and len(jobs) < max_jobs:
            page = self._db.run_pages.find_one({"_id": page_id(run["_id"], page_no), "tenant_id": run["tenant_id"]},
                                               {"jobs_json": 1})
            if page is None:
                raise RunFailed(f"Page {page_no} of the staged recipients is missing from the store, so the run "
                                "stopped before every member got a text. Check the run's report before sending "
                                "again, because a new run texts every member of the IQA again.")
            jobs.extend(_jobs_of(page))
            page_no += 1
        return jobs, page_no

    def checkpoint_published(self, run: dict, token: str, next_page: int) -> None:
        """Record that the broker confirmed every job of the pages before `next_page`."""
        self._advance(run, token, {"$max": {"publish_page_no": next_page}})

    def drop_published_jobs(self, run: dict, pages: range) -> None:
        """Remove published jobs, and the member data in their texts, from their pages."""
        for page_no in pages:
            self._db.run_pages.update_one({"_id": page_id(run["_id"], page_no), "tenant_id": run["tenant_id"]},
                                          {"$unset": {"jobs_json": ""}})

    def finish_expansion(self, run: dict, token: str) -> dict:
        """Record the run's recipients and mark it expanded; return the run.

        An expanding run moves on to `sending`; a paused run stays paused.
        """
        fields = {"expanded": True, "counts.recipients": run.get("staged_recipients", 0),
                  "segments": run.get("staged_segments", 0), "expanded_at": self._clock.now()}
        finished = self._db.runs.find_one_and_update(
            {"_id": run["_id"], "tenant_id": run["tenant_id"], "expander": token, "status": "expanding"},
            {"$set": dict(fields, status="sending")}, return_document=ReturnDocument.AFTER,
        )
        if finished is None:
            finished = self._db.runs.find_one_and_update(
                {"_id": run["_id"], "tenant_id": run["tenant_id"], "expander": token, "status": "paused"},
                {"$set": fields}, return_document=ReturnDocument.AFTER,
            )
        if finished is None:
            raise ExpansionSuperseded("another expander took the run over, or it was stopped, while publishing")
        return finished

    # -- failing

    def fail(self, run: dict, token: str, message: str, **fields) -> dict | None:
        """Mark the run and its campaign failed; return the campaign, or None when the run was not this expander's."""
        failed = self._db.runs.find_one_and_update(
            self._owned(run, token),
            {"$set": dict(fields, status="failed", error=message, failed_at=self._clock.now())},
        )
        if failed is None:
            return None
        campaign = self._db.campaigns.find_one_and_update(
            {"_id": run["campaign_id"], "tenant_id": run["tenant_id"], "current_run_id": run["_id"]},
            {"$set": {"status": "failed", "error": message, "updated_at": self._clock.now()}},
            return_document=ReturnDocument.AFTER,
        )
        return campaign or {"_id": run["campaign_id"]}

    # -- helpers

    def _owned(self, run: dict, token: str) -> dict:
        return {"_id": run["_id"], "tenant_id": run["tenant_id"], "expander": token,
                "status": {"$in": list(EXPANDING_STATUSES)}}

    def _advance(self, run: dict, token: str, update: dict) -> None:
        if self._db.runs.update_one(self._owned(run, token), update).matched_count == 0:
            raise ExpansionSuperseded("another expander took the run over, or it was stopped")


def _jobs_of(page: dict) -> list[list]:
    return json.loads(page["jobs_json"]) if page.get("jobs_json") else []


def _numbers_of(page: dict) -> list[list]:
    return json.loads(page["numbers_json"]) if page.get("numbers_json") else []


def _field_name(key: str) -> str:
    """Return a skip reason or merge field name as a MongoDB field name: no dots, no leading $, not empty."""
    return key.replace(".", "").lstrip("$") or "_"
