"""Expand one campaign run into one job per text, resumably and within the limits."""

from __future__ import annotations

import logging

from pymongo import ReturnDocument
from pymongo.database import Database

from libs.common.broker import QUEUE_JOBS, Reject, Retry
from libs.common.imis import ImisError, ImisUnavailable
from libs.common.logs import log_context
from libs.common.progress import RunProgress
from libs.common.tenants import Tenant, TenantNotFound, TenantRepository
from libs.common.texts import Template, TemplateError
from services.recipients.expansion import PageResult, RowProcessor

logger = logging.getLogger(__name__)

PAGE_SIZE = 500
MAX_UNAVAILABLE_ATTEMPTS = 3


class RunFailed(Exception):
    """The run cannot go ahead; the message tells staff what to change."""


class RunExpander:
    """Consume `tm.runs`: stage every IQA page, check the limits, then publish the jobs.

    Staging stores each processed page as one `run_pages` document and moves a
    checkpoint on the run, so the store sees a few writes per page rather than one per
    recipient. Publishing moves a second checkpoint after the broker confirms each
    page. A redelivered run resumes at the checkpoints; a page published twice is
    harmless because message ids are `{run_id}:{number}`.
    """

    def __init__(self, db: Database, *, broker, tenants: TenantRepository, imis_factory, notifier, clock,
                 page_size: int = PAGE_SIZE):
        self._db = db
        self._broker = broker
        self._tenants = tenants
        self._imis_factory = imis_factory
        self._notifier = notifier
        self._clock = clock
        self._page_size = page_size
        self._progress = RunProgress(db, clock)

    def handle(self, delivery) -> None:
        body = delivery.body
        if not isinstance(body, dict) or not all(isinstance(body.get(key), str) for key in ("tenant_id", "run_id")):
            raise Reject("run message needs string tenant_id and run_id")
        with log_context(tenant_id=body["tenant_id"], run_id=body["run_id"], campaign_id=body.get("campaign_id")):
            self.expand(body["tenant_id"], body["run_id"], attempt=delivery.attempt)

    def expand(self, tenant_id: str, run_id: str, *, attempt: int = 1) -> None:
        """Stage and publish a run; a run past expansion is left alone."""
        run = self._db.runs.find_one_and_update(
            {"_id": run_id, "tenant_id": tenant_id, "status": {"$in": ["queued", "expanding"]}},
            {"$set": {"status": "expanding", "expansion_started_at": self._clock.now()}},
            return_document=ReturnDocument.AFTER,
        )
        if run is None:
            logger.info("run is not waiting for expansion; nothing to do")
            return
        try:
            tenant = self._tenants.get(tenant_id)
            campaign = self._db.campaigns.find_one({"_id": run["campaign_id"], "tenant_id": tenant_id})
            if campaign is None:
                raise RunFailed("the campaign of this run no longer exists")
            self._stage(run, campaign, tenant)
            run = self._check_limits(run_id, tenant)
            self._publish(run)
        except RunFailed as failure:
            self._fail(run, str(failure))
        except TenantNotFound:
            raise Reject(f"unknown tenant {tenant_id!r}") from None
        except ImisUnavailable as error:
            if attempt >= MAX_UNAVAILABLE_ATTEMPTS:
                self._fail(run, f"iMIS did not answer after {attempt} attempts: {error.message}")
                return
            raise Retry(f"iMIS unavailable: {error.message}") from None
        except ImisError as error:
            self._fail(run, error.message)

    def _stage(self, run: dict, campaign: dict, tenant: Tenant) -> None:
        if run.get("staged"):
            return
        processor = self._processor(run, campaign, tenant)
        page_no = run.get("stage_page_no", 0)
        self._restore_seen(run["_id"], page_no, processor)
        imis = self._imis_factory(tenant)
        if page_no == 0:
            self._check_merge_fields(imis, campaign, processor)
        start_offset = run.get("stage_offset", 0)
        pages = [] if start_offset is None else imis.iter_query_pages(
            campaign["iqa_path"], prompts=campaign.get("prompts") or None,
            page_size=self._page_size, start_offset=start_offset,
        )
        for page in pages:
            opted_out = self._opted_out(tenant.cloud_id, processor.numbers_of(page.rows))
            result = processor.process(page.rows, opted_out)
            self._store_page(run, page_no, result, next_offset=page.next_offset if page.has_next else None)
            page_no += 1
        self._db.runs.update_one({"_id": run["_id"]}, {"$set": {"staged": True, "page_count": page_no}})

    def _processor(self, run: dict, campaign: dict, tenant: Tenant) -> RowProcessor:
        try:
            template = Template.parse(campaign["body"])
        except TemplateError as error:
            raise RunFailed(str(error)) from None
        job_base = {"tenant_id": tenant.cloud_id, "campaign_id": campaign["_id"], "run_id": run["_id"]}
        return RowProcessor(template=template, default_country=tenant.default_country,
                            phone_column=campaign.get("phone_column") or "Mobile",
                            id_column=campaign.get("id_column") or "ID",
                            smart_encoding=bool(campaign.get("smart_encoding")), job_base=job_base)

    def _check_merge_fields(self, imis, campaign: dict, processor: RowProcessor) -> None:
        template = Template.parse(campaign["body"])
        if not template.fields:
            return
        columns = imis.query_columns(campaign["iqa_path"], prompts=campaign.get("prompts") or None)
        missing = template.missing_fields(columns)
        if missing and columns:
            raise RunFailed(
                f"the text uses {', '.join('{' + name + '}' for name in missing)}, which the query "
                f"{campaign['iqa_path']} does not return (its columns: {', '.join(columns)}); "
                "add the column to the IQA or change the text"
            )

    def _restore_seen(self, run_id: str, before_page: int, processor: RowProcessor) -> None:
        """Rebuild the de-duplication state from pages staged before a restart."""
        staged = self._db.run_pages.find({"run_id": run_id, "page_no": {"$lt": before_page}},
                                         {"jobs.to": 1, "jobs.member_id": 1, "skipped": 1})
        for page in staged:
            for job in page.get("jobs", []):
                processor.seen[job["to"]] = job["member_id"]
            for row in page.get("skipped", []):
                processor.seen_skipped.add((row["member_id"], row["reason"]))
                if row["e164"] and row["reason"] == "opted out":
                    processor.seen[row["e164"]] = row["member_id"]

    def _opted_out(self, tenant_id: str, numbers: list[str]) -> set[str]:
        if not numbers:
            return set()
        found = self._db.optouts.find({"_id": {"$in": [f"{tenant_id}:{number}" for number in numbers]}}, {"number": 1})
        return {document["number"] for document in found}

    def _store_page(self, run: dict, page_no: int, result: PageResult, *, next_offset: int | None) -> None:
        self._db.run_pages.replace_one(
            {"_id": f"{run['_id']}:{page_no}"},
            {"_id": f"{run['_id']}:{page_no}", "tenant_id": run["tenant_id"], "run_id": run["_id"], "page_no": page_no,
             "jobs": result.jobs, "skipped": result.skipped, "segments": result.segments},
            upsert=True,
        )
        increments = {"staged_recipients": len(result.jobs), "staged_segments": result.segments,
                      "counts.skipped": len(result.skipped)}
        for row in result.skipped:
            key = "skipped_by_reason." + row["reason"].replace(".", "")
            increments[key] = increments.get(key, 0) + 1
        for encoding, count in result.encodings.items():
            increments[f"encodings.{encoding}"] = count
        self._db.runs.update_one(
            {"_id": run["_id"]},
            {"$set": {"stage_page_no": page_no + 1, "stage_offset": next_offset}, "$inc": increments},
        )
        logger.info("staged page %s: %s jobs, %s skipped", page_no, len(result.jobs), len(result.skipped))

    def _check_limits(self, run_id: str, tenant: Tenant) -> dict:
        run = self._db.runs.find_one({"_id": run_id})
        segments = run.get("staged_segments", 0)
        if segments > tenant.run_segment_limit:
            raise RunFailed(
                f"this run needs {segments:,} segments, more than the limit of {tenant.run_segment_limit:,} per run; "
                "narrow the IQA, split the campaign, or shorten the text"
            )
        return run

    def _publish(self, run: dict) -> None:
        page_no = run.get("publish_page_no", 0)
        while page_no < run.get("page_count", 0):
            page = self._db.run_pages.find_one({"_id": f"{run['_id']}:{page_no}"})
            if page and page["jobs"]:
                self._broker.publish_many(QUEUE_JOBS, page["jobs"], message_ids=[job["message_id"] for job in page["jobs"]])
            page_no += 1
            self._db.runs.update_one({"_id": run["_id"]}, {"$set": {"publish_page_no": page_no}})
        self._finish_expansion(run)

    def _finish_expansion(self, run: dict) -> None:
        recipients = run.get("staged_recipients", 0)
        finished = self._db.runs.find_one_and_update(
            {"_id": run["_id"], "status": "expanding"},
            {"$set": {"status": "sending", "expanded": True, "counts.recipients": recipients,
                      "segments": run.get("staged_segments", 0), "expanded_at": self._clock.now()}},
            return_document=ReturnDocument.AFTER,
        )
        if finished is None:
            self._db.runs.update_one({"_id": run["_id"]}, {"$set": {"expanded": True, "counts.recipients": recipients}})
            finished = self._db.runs.find_one({"_id": run["_id"]})
        logger.info("run expanded: %s recipients, %s segments, %s skipped", recipients,
                    run.get("staged_segments", 0), run.get("counts", {}).get("skipped", 0))
        self._progress.complete_if_done(finished)

    def _fail(self, run: dict, message: str) -> None:
        logger.warning("run failed: %s", message)
        self._db.runs.update_one({"_id": run["_id"]}, {"$set": {"status": "failed", "error": message,
                                                               "failed_at": self._clock.now()}})
        campaign = self._db.campaigns.find_one_and_update(
            {"_id": run["campaign_id"], "tenant_id": run["tenant_id"], "current_run_id": run["_id"]},
            {"$set": {"status": "failed", "error": message}},
        ) or {}
        tenant_email = ""
        try:
            tenant_email = self._tenants.get(run["tenant_id"]).default_email
        except TenantNotFound:
            pass
        self._notifier.notify(
            tenant_id=run["tenant_id"], recipients=[tenant_email, campaign.get("email", "")],
            subject=f"Text Manager could not send the campaign {campaign.get('name', run['campaign_id'])!r}",
            text=f"The run did not start: {message}.", dedupe_key=f"run-failed:{run['_id']}",
        )
