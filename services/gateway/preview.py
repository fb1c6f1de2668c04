"""Campaign preview: the recipients service's per-row work over the whole IQA, without sending."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from pymongo.database import Database

from libs.common.imis import ImisError, ImisUnavailable
from libs.common.tenants import Tenant, TenantRepository
from libs.common.texts import GSM7, UCS2, measure, smart_encode
from services.gateway.errors import ApiError, NotFound, UpstreamUnavailable
from services.recipients.errors import CampaignSetupError
from services.recipients.expansion import (
    PAGE_SIZE, STAGED_JOB_FIELDS, PageResult, build_processor, campaign_pages, process_pages, segment_limit_message,
)
from services.recipients.repository import load_opted_out

logger = logging.getLogger(__name__)

SAMPLE_SIZE = 5
MIXED_ENCODINGS = "mixed"


class CampaignNotSendable(ApiError):
    """The campaign cannot be sent as set up, or iMIS rejected its query. The message explains to staff what to change."""

    status = 422
    code = "campaign_not_sendable"


@dataclass
class PreviewTally:
    """Running totals of the pages processed so far, and the first rendered texts."""

    sample_size: int
    smart_encoding: bool
    rows: int = 0
    recipients: int = 0
    segments: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    encodings: dict[str, int] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    # Texts in which a merge field without a fallback renders as nothing, per field.
    blank_fields: dict[str, int] = field(default_factory=dict)
    # UCS-2 texts that Smart Encoding would turn into GSM-7 ones, counted only while it is off.
    smart_encoding_would_help: int = 0

    def add(self, rows: int, result: PageResult) -> None:
        self.rows += rows
        self.recipients += len(result.jobs)
        self.segments += result.segments
        for reason, count in result.skipped_by_reason().items():
            self.skipped_by_reason[reason] = self.skipped_by_reason.get(reason, 0) + count
        for encoding, count in result.encodings.items():
            self.encodings[encoding] = self.encodings.get(encoding, 0) + count
        for name, count in result.blank_fields.items():
            self.blank_fields[name] = self.blank_fields.get(name, 0) + count
        for job in result.jobs:
            self._look_at(dict(zip(STAGED_JOB_FIELDS, job)))

    def _look_at(self, job: dict) -> None:
        if len(self.samples) < self.sample_size:
            self.samples.append(job)
        if not self.smart_encoding and job["encoding"] == UCS2 and measure(smart_encode(job["body"])).encoding == GSM7:
            self.smart_encoding_would_help += 1


class CampaignPreview:
    """Build a campaign's preview with the same code the recipients service runs.

    NOTE: the whole IQA is read within one request, so a query of hundreds of thousands
    of rows can take longer than the web server lets a request run.
    """

    def __init__(self, db: Database, *, tenants: TenantRepository, imis_factory, clock,
                 sample_size: int = SAMPLE_SIZE, page_size: int = PAGE_SIZE):
        self._db = db
        self._tenants = tenants
        self._imis_factory = imis_factory
        self._clock = clock
        self._sample_size = sample_size
        self._page_size = page_size

    def build(self, tenant_id: str, campaign_id: str) -> dict:
        """Return what a run of the campaign would send now: counts, samples, limits and warnings.

        Raises NotFound for an unknown campaign, CampaignNotSendable when the text or
        the query cannot be used, and UpstreamUnavailable when iMIS does not respond.
        """
        campaign = self._db.campaigns.find_one({"_id": campaign_id, "tenant_id": tenant_id})
        if campaign is None:
            raise NotFound(f"no campaign {campaign_id} in this organisation")
        tenant = self._tenants.get(tenant_id)
        tally = self._tally(campaign, tenant)
        return self._summary(tenant, tally)

    def _tally(self, campaign: dict, tenant: Tenant) -> PreviewTally:
        tally = PreviewTally(self._sample_size, smart_encoding=bool(campaign.get("smart_encoding")))
        opted_out = load_opted_out(self._db, tenant.cloud_id)
        try:
            processor = build_processor(campaign, tenant.default_country)
            pages = campaign_pages(self._imis_factory(tenant), campaign, page_size=self._page_size)
            for _, page, result in process_pages(pages, processor, campaign, opted_out.intersection):
                tally.add(len(page.rows), result)
        except CampaignSetupError as error:
            raise CampaignNotSendable(str(error)) from None
        except ImisUnavailable as error:
            raise UpstreamUnavailable(error.message) from None
        except ImisError as error:
            raise CampaignNotSendable(error.message) from None
        logger.info("previewed campaign %s: %s rows, %s recipients", campaign["_id"], tally.rows, tally.recipients)
        return tally

    def _summary(self, tenant: Tenant, tally: PreviewTally) -> dict:
        used = self._texts_sent_today(tenant)
        remaining = max(tenant.daily_limit - used, 0)
        return {
            "rows": tally.rows,
            "recipients": tally.recipients,
            "skipped": sum(tally.skipped_by_reason.values()),
            "skipped_by_reason": tally.skipped_by_reason,
            "segments": tally.segments,
            "encoding": _overall_encoding(tally.encodings),
            "encodings": tally.encodings,
            "samples": tally.samples,
            "daily_limit": tenant.daily_limit,
            "daily_used": used,
            "daily_remaining": remaining,
            "run_segment_limit": tenant.run_segment_limit,
            "warnings": _warnings(tenant, tally, remaining),
        }

    def _texts_sent_today(self, tenant: Tenant) -> int:
        """Return the texts counted against today's allowance, the day running in the tenant's time zone."""
        day = self._clock.now().astimezone(ZoneInfo(tenant.timezone)).date().isoformat()
        usage = self._db.usage.find_one({"_id": f"{tenant.cloud_id}:{day}", "tenant_id": tenant.cloud_id})
        return int(usage.get("count", 0)) if usage else 0


def _overall_encoding(encodings: dict[str, int]) -> str | None:
    used = [encoding for encoding, count in encodings.items() if count]
    if not used:
        return None
    return used[0] if len(used) == 1 else MIXED_ENCODINGS


def _warnings(tenant: Tenant, tally: PreviewTally, remaining: int) -> list[dict]:
    warnings = []
    if tally.segments > tenant.run_segment_limit:
        warnings.append({"code": "run_segment_limit",
                         "message": segment_limit_message(tally.segments, tenant.run_segment_limit)})
    if tally.recipients > remaining:
        waiting = tally.recipients - remaining
        warnings.append({"code": "daily_allowance", "message": (
            f"This run has {tally.recipients:,} texts, but only {remaining:,} of today's allowance of "
            f"{tenant.daily_limit:,} texts remain, so {waiting:,} texts would wait until the allowance renews at "
            f"midnight ({tenant.timezone}). Send to fewer members, or send tomorrow.")})
    if tally.recipients == 0:
        warnings.append({"code": "no_recipients", "message": (
            "No member of this query can get a text: check the skipped rows, and that the campaign's phone "
            "column holds mobile numbers.")})
    warnings += _blank_field_warnings(tally)
    if tally.smart_encoding_would_help:
        warnings.append({"code": "smart_encoding", "message": (
            f"{tally.smart_encoding_would_help:,} texts are sent as UCS-2, at 70 characters a segment instead of "
            "160, only because of look-alike characters such as curly quotes: turn on Smart Encoding to send "
            "them as GSM-7.")})
    return warnings


def _blank_field_warnings(tally: PreviewTally) -> list[dict]:
    """Return one warning per merge field that some texts would leave blank.

    Such texts are still sent, because staff chose the body: the warning shows how to
    fill the gap before sending.
    """
    warnings = []
    for name, count in tally.blank_fields.items():
        warnings.append({"code": "blank_merge_field", "message": (
            f"{{{name}}} is empty for {count:,} of the {tally.recipients:,} members who would get a text, so "
            "their text leaves it out. These texts are still sent. To put a word in its place, add a fallback "
            f"after a bar, as in {{{name}|text to use instead}}, or fill in the value in iMIS.")})
    return warnings
