"""Expand one campaign run into one job per text, resumably and within the limits."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

from pymongo.database import Database

from libs.common.broker import QUEUE_JOBS, EncodedBatch, Reject, Retry, tenant_jobs_queue
from libs.common.imis import ImisError, ImisUnavailable
from libs.common.logs import log_context
from libs.common.message_ids import MessageIds
from libs.common.notices import notify_run_failed
from libs.common.progress import RunProgress
from libs.common.tenants import Tenant, TenantNotFound, TenantRepository
from services.recipients.errors import CampaignSetupError, ExpansionSuperseded, RunFailed
from services.recipients.expansion import (
    PAGE_SIZE, RowProcessor, build_job, build_processor, campaign_pages, process_pages, segment_limit_message,
)
from services.recipients.prefetch import prefetched
from services.recipients.repository import ExpansionStore

logger = logging.getLogger(__name__)

# Jobs per publish_many call. Each call opens a connection and waits for every
# confirm, so larger batches publish faster. Up to three batches are in memory at
# once (one publishing, two read ahead), about 5 MB each.
PUBLISH_BATCH_JOBS = 5000
# Deliveries of a run message that may end in "iMIS unavailable" before the run fails.
# Each one already retried inside the iMIS client with bounded backoff.
MAX_UNAVAILABLE_ATTEMPTS = 3


class RunExpander:
    """Consume `tm.runs`: stage every IQA page, check the limits, then publish the jobs.

    Staging stores each processed page as one `run_pages` document and moves a
    checkpoint on the run, so staging makes two store calls per page (page and
    checkpoint) and none per recipient. Publishing reads the pages back
    in batches and moves a second checkpoint after the broker confirmed each batch,
    then drops the published jobs from their pages. A redelivered run resumes at the
    checkpoints. A batch published twice still gives one text per number, because
    each message id is built from the run id and the number alone (`MessageIds`), and
    the sender sends each id once.
    """

    def __init__(self, db: Database, *, broker, tenants: TenantRepository, imis_factory, notifier, clock,
                 message_ids: MessageIds, page_size: int = PAGE_SIZE, publish_batch: int = PUBLISH_BATCH_JOBS):
        self._store = ExpansionStore(db, clock)
        self._message_ids = message_ids
        self._broker = broker
        self._tenants = tenants
        self._imis_factory = imis_factory
        self._notifier = notifier
        self._page_size = page_size
        self._publish_batch = publish_batch
        self._progress = RunProgress(db, clock)

    def handle(self, delivery) -> None:
        """Expand the run named by a `tm.runs` message; raise Reject when the message is invalid."""
        body = delivery.body
        if not isinstance(body, dict) or not all(isinstance(body.get(key), str) for key in ("tenant_id", "run_id")):
            raise Reject("run message needs string tenant_id and run_id")
        with log_context(tenant_id=body["tenant_id"], run_id=body["run_id"], campaign_id=body.get("campaign_id")):
            self.expand(body["tenant_id"], body["run_id"], attempt=delivery.attempt)

    def expand(self, tenant_id: str, run_id: str, *, attempt: int = 1) -> None:
        """Stage and publish a run, resuming where an earlier delivery stopped.

        A run that needs no expansion is left alone. Raises Retry while iMIS is
        unavailable (the run fails after MAX_UNAVAILABLE_ATTEMPTS deliveries), and
        Reject for an unknown tenant.
        """
        token = uuid.uuid4().hex
        run = self._store.claim(tenant_id, run_id, token)
        if run is None:
            logger.info("run is not waiting for expansion; nothing to do")
            return
        try:
            self._expand_claimed(run, token)
        except ExpansionSuperseded as stopped:
            logger.info("expansion stopped: %s", stopped)
        except (CampaignSetupError, ImisError, RunFailed) as failure:
            self._on_failure(run, token, failure, attempt)
        except TenantNotFound:
            raise Reject(f"unknown tenant {tenant_id!r}") from None
        except Exception as error:
            if attempt >= self._broker.max_attempts:
                logger.exception("expansion failed on the last delivery of the run message")
                self._fail(run, token, f"Text Manager failed while preparing the texts ({type(error).__name__}). "
                                       "Send the campaign again; if it fails again, contact support.")
            raise

    def _expand_claimed(self, run: dict, token: str) -> None:
        tenant = self._tenants.get(run["tenant_id"])
        campaign = self._store.campaign(run)
        if campaign is None:
            raise RunFailed("The campaign of this run no longer exists.")
        if not run.get("staged"):
            run = self._stage(run, campaign, tenant, token)
        self._check_limits(run, tenant)
        self._publish(run, token)

    def _on_failure(self, run: dict, token: str, failure: Exception, attempt: int) -> None:
        if isinstance(failure, ImisUnavailable):
            if attempt < min(MAX_UNAVAILABLE_ATTEMPTS, self._broker.max_attempts):
                raise Retry(f"iMIS unavailable: {failure.message}") from None
            self._fail(run, token, f"iMIS was still unavailable after {attempt} tries of this run. {failure.message}")
        elif isinstance(failure, ImisError):
            self._fail(run, token, failure.message)
        elif isinstance(failure, RunFailed):
            self._fail(run, token, str(failure), **failure.run_fields)
        else:
            self._fail(run, token, str(failure))

    # -- staging

    def _stage(self, run: dict, campaign: dict, tenant: Tenant, token: str) -> dict:
        processor = build_processor(campaign, tenant.default_country)
        self._store.restore(run, processor)
        page_count = run.get("stage_page_no", 0)
        if run.get("stage_offset", 0) is not None:
            page_count = self._stage_pages(run, campaign, tenant, token, processor)
        staged = self._store.finish_staging(run, token, page_count)
        logger.info("staged %s pages: %s recipients, %s segments, %s rows skipped", page_count,
                    staged.get("staged_recipients", 0), staged.get("staged_segments", 0),
                    staged.get("counts", {}).get("skipped", 0))
        return staged

    def _stage_pages(self, run: dict, campaign: dict, tenant: Tenant, token: str, processor: RowProcessor) -> int:
        """Stage the pages from the checkpoint to the last; return the number of pages staged in all."""
        limit = tenant.run_segment_limit
        segments = run.get("staged_segments", 0)
        over_limit = bool(run.get("over_limit")) or segments > limit
        next_page = run.get("stage_page_no", 0)
        pages = campaign_pages(self._imis_factory(tenant), campaign, page_size=self._page_size,
                               start_offset=run.get("stage_offset", 0))
        opted_out = self._store.load_opted_out(tenant.cloud_id)
        logger.info("staging from page %s; the tenant's opt-out list has %s numbers", next_page, len(opted_out))

        with prefetched(pages, name=f"iqa-pages-{run['_id'][:8]}") as fetched:
            for page_no, page, result in process_pages(fetched, processor, campaign, opted_out.intersection,
                                                       first_page_no=next_page):
                segments += result.segments
                self._store.stage_page(run, token, page_no, result,
                                       next_offset=page.next_offset if page.has_next else None,
                                       keep_jobs=not over_limit, over_limit=segments > limit)
                over_limit = over_limit or segments > limit
                next_page = page_no + 1
                logger.debug("staged page %s: %s jobs, %s skipped", page_no, len(result.jobs), len(result.skipped))
        return next_page

    def _check_limits(self, run: dict, tenant: Tenant) -> None:
        segments = run.get("staged_segments", 0)
        if run.get("over_limit") or segments > tenant.run_segment_limit:
            raise RunFailed(segment_limit_message(segments, tenant.run_segment_limit), segments=segments)

    # -- publishing

    def _publish(self, run: dict, token: str) -> None:
        queue = jobs_queue(run["tenant_id"])
        batches = self._job_batches(run, run.get("publish_page_no", 0))
        # The next batch is read, built and encoded while the broker confirms the current one.
        with prefetched(batches, name=f"job-batches-{run['_id'][:8]}") as ready:
            for first_page, next_page, batch in ready:
                if batch.payloads:
                    self._broker.publish_many(queue, batch)
                self._store.checkpoint_published(run, token, next_page)
                self._store.drop_published_jobs(run, range(first_page, next_page))

        finished = self._store.finish_expansion(run, token)
        logger.info("run expanded: %s recipients, %s segments", finished["counts"].get("recipients", 0),
                    finished.get("segments", 0))
        self._progress.complete_if_done(finished)

    def _job_batches(self, run: dict, page_no: int) -> Iterator[tuple[int, int, EncodedBatch]]:
        """Yield (first page, page after the last, encoded jobs) for each batch of about `publish_batch` jobs."""
        job_base = {"tenant_id": run["tenant_id"], "campaign_id": run["campaign_id"], "run_id": run["_id"]}
        while page_no < run["page_count"]:
            staged, next_page = self._store.staged_jobs(run, page_no, self._publish_batch)
            jobs = [build_job(job_base, entry, self._message_ids) for entry in staged]
            yield page_no, next_page, self._broker.encode_batch(jobs, [job["message_id"] for job in jobs])
            page_no = next_page

    # -- failing

    def _fail(self, run: dict, token: str, message: str, **run_fields) -> None:
        """Mark the run failed and send the notice to the tenant's administrator and the campaign's e-mail."""
        campaign = self._store.fail(run, token, message, **run_fields)
        if campaign is None:
            logger.info("not failing the run, which another expander took over or staff stopped: %s", message)
            return
        logger.warning("run failed: %s", message)
        try:
            admin_email = self._tenants.get(run["tenant_id"]).default_email
        except TenantNotFound:
            admin_email = ""
        notify_run_failed(self._notifier, run=run, campaign=campaign, admin_email=admin_email, reason=message)


def jobs_queue(tenant_id: str) -> str:
    """Return the tenant's partition of `tm.jobs`, which the sender's workers for that tenant consume.

    A Cloud ID that cannot name a queue gets `tm.jobs` itself, where the sender decides.
    """
    try:
        return tenant_jobs_queue(tenant_id)
    except ValueError:
        logger.warning("tenant %r cannot have a job queue; publishing its jobs to %s", tenant_id, QUEUE_JOBS)
        return QUEUE_JOBS
