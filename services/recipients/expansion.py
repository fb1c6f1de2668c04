"""The per-row work of a run, shared by the pipeline and the preview: check, de-duplicate, render, measure."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from libs.common.imis import MAX_PAGE_SIZE, QueryPage
from libs.common.message_ids import MessageIds
from libs.common.phones import PhoneCheck, check_number
from libs.common.texts import Template, TemplateError, render_and_measure
from services.recipients.errors import CampaignSetupError

NO_MEMBER_ID = "no member ID"
DUPLICATE_NUMBER = "duplicate number"
OPTED_OUT = "opted out"
EMPTY_TEXT = "the text is empty for this member"
TOO_LONG = "the text is longer than 1,600 characters for this member"

DEFAULT_PHONE_COLUMN = "Mobile"
DEFAULT_ID_COLUMN = "ID"
PAGE_SIZE = MAX_PAGE_SIZE

# Order of the values of a staged job. `run_pages` stores each job as a list in this
# order rather than as a dict, which keeps the page documents about half as large.
STAGED_JOB_FIELDS = ("member_id", "to", "body", "segments", "encoding")

# Takes the valid numbers of one page and returns those on the tenant's opt-out list.
OptOutLookup = Callable[[list[str]], set[str]]


@dataclass
class PageResult:
    """The output of one IQA page: staged jobs, and rows skipped with their reason.

    `blank_fields` counts, per merge field without a fallback, the staged texts in
    which that field rendered as nothing because the member's value is empty.
    """

    jobs: list[list] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    segments: int = 0
    encodings: dict[str, int] = field(default_factory=dict)
    blank_fields: dict[str, int] = field(default_factory=dict)

    def skipped_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.skipped:
            counts[row["reason"]] = counts.get(row["reason"], 0) + 1
        return counts


class RowProcessor:
    """Turn IQA rows into staged jobs: check the member ID and number, de-duplicate, render, measure.

    A row without a member ID is skipped, because its text could be neither logged in
    iMIS nor tied to the member's opt-out.

    One processor follows one run from its first page to its last. `seen` maps each
    number already given a text to its member id, so a number gets one text however
    often it appears, and a row that offset paging repeated (same member, same number)
    is counted once instead of being reported as a duplicate.
    """

    def __init__(self, *, template: Template, default_country: str, phone_column: str = DEFAULT_PHONE_COLUMN,
                 id_column: str = DEFAULT_ID_COLUMN, smart_encoding: bool = False):
        self.template = template
        self.default_country = default_country
        self.phone_column = phone_column
        self.id_column = id_column
        self.smart_encoding = smart_encoding
        self.seen: dict[str, str] = {}
        self._reported: set[tuple[str, str, str]] = set()

    def process(self, rows: Iterable[Mapping[str, object]], find_opted_out: OptOutLookup) -> PageResult:
        """Return the jobs and skipped rows of one page, in row order."""
        checked = [(row, check_number(_cell(row, self.phone_column), self.default_country)) for row in rows]
        numbers = [check.e164 for _, check in checked if check.sendable]
        opted_out = find_opted_out(numbers) if numbers else set()

        result = PageResult()
        for row, check in checked:
            self._process_row(row, check, opted_out, result)
        return result

    def restore(self, jobs: Iterable[Sequence], skipped: Iterable[Mapping]) -> None:
        """Take back the state of pages staged before a restart: their jobs and skipped rows."""
        for job in jobs:
            self.seen[job[1]] = job[0]
        for row in skipped:
            self._reported.add((row["member_id"], row["raw"], row["reason"]))

    def _process_row(self, row: Mapping[str, object], check: PhoneCheck, opted_out: set[str],
                     result: PageResult) -> None:
        member_id = _text(_cell(row, self.id_column)).strip()
        if not member_id:
            self._skip(result, member_id, check, NO_MEMBER_ID)
            return
        if not check.sendable:
            self._skip(result, member_id, check, check.reason)
            return
        number = check.e164
        if number in opted_out:
            self._skip(result, member_id, check, OPTED_OUT)
            return
        owner = self.seen.get(number)
        if owner is not None:
            if owner != member_id:
                self._skip(result, member_id, check, DUPLICATE_NUMBER)
            return

        body, measured = render_and_measure(self.template, row, self.smart_encoding)
        if measured.segments == 0 or measured.too_long:
            self._skip(result, member_id, check, EMPTY_TEXT if measured.segments == 0 else TOO_LONG)
            return
        self.seen[number] = member_id
        result.jobs.append([member_id, number, body, measured.segments, measured.encoding])
        result.segments += measured.segments
        result.encodings[measured.encoding] = result.encodings.get(measured.encoding, 0) + 1
        for name in self.template.blank_fields(row):
            result.blank_fields[name] = result.blank_fields.get(name, 0) + 1

    def _skip(self, result: PageResult, member_id: str, check: PhoneCheck, reason: str) -> None:
        key = (member_id, check.raw, reason)
        if key in self._reported:
            return
        self._reported.add(key)
        result.skipped.append({"member_id": member_id, "raw": check.raw, "e164": check.e164, "reason": reason})


def build_processor(campaign: Mapping, default_country: str) -> RowProcessor:
    """Return the row processor of a campaign.

    Raises CampaignSetupError when the text's merge fields cannot be parsed.
    """
    try:
        template = Template.parse(campaign["body"])
    except TemplateError as error:
        raise CampaignSetupError(f"The text of the campaign cannot be used. {error}") from None
    return RowProcessor(template=template, default_country=default_country,
                        phone_column=campaign.get("phone_column") or DEFAULT_PHONE_COLUMN,
                        id_column=campaign.get("id_column") or DEFAULT_ID_COLUMN,
                        smart_encoding=bool(campaign.get("smart_encoding")))


def campaign_pages(imis, campaign: Mapping, *, page_size: int = PAGE_SIZE,
                   start_offset: int = 0) -> Iterator[QueryPage]:
    """Return the pages of the campaign's IQA from `start_offset`, with its prompts passed through."""
    return imis.iter_query_pages(campaign["iqa_path"], prompts=campaign.get("prompts") or None,
                                 page_size=page_size, start_offset=start_offset)


def process_pages(pages: Iterable[QueryPage], processor: RowProcessor, campaign: Mapping, find_opted_out: OptOutLookup,
                  *, first_page_no: int = 0) -> Iterator[tuple[int, QueryPage, PageResult]]:
    """Yield (page number, page, result) for each page; the first page's columns are checked first.

    Raises CampaignSetupError when the query lacks a column the campaign needs.
    """
    for page_no, page in enumerate(pages, start=first_page_no):
        if page_no == 0:
            check_columns(campaign, processor.template, page.rows)
        yield page_no, page, processor.process(page.rows, find_opted_out)


def check_columns(campaign: Mapping, template: Template, rows: Iterable[Mapping[str, object]]) -> None:
    """Raise CampaignSetupError when the rows lack a column that the campaign uses.

    The columns are the keys of all the given rows, compared without regard to case as
    iMIS compares aliases. Without rows there is nothing to send, so nothing to check.
    """
    columns = _columns_of(rows)
    if not columns:
        return
    path = campaign["iqa_path"]
    folded = {column.casefold() for column in columns}
    problems = []

    missing = template.missing_fields(columns)
    if missing:
        names = ", ".join("{" + name + "}" for name in missing)
        problems.append(f"The text uses {names}, which the query {path} does not return: add "
                        f"{'them' if len(missing) > 1 else 'it'} to the IQA or change the text.")
    for role, setting, default in (("phone numbers", "phone_column", DEFAULT_PHONE_COLUMN),
                                   ("member IDs", "id_column", DEFAULT_ID_COLUMN)):
        column = campaign.get(setting) or default
        if column.casefold() not in folded:
            problems.append(f"The campaign takes {role} from the column {column}, which the query {path} does not "
                            f"return: add it to the IQA or pick one of the query's columns in the campaign.")
    if problems:
        problems.append(f"The query's columns are {', '.join(columns)}.")
        raise CampaignSetupError(" ".join(problems))


def segment_limit_message(segments: int, limit: int) -> str:
    """Return what staff read when a run needs more segments than one run may send."""
    return (f"This run needs {segments:,} segments, more than the limit of {limit:,} per run, so it does not "
            "start: narrow the IQA, split the campaign, or shorten the text.")


def build_job(job_base: Mapping[str, str], staged: Sequence, message_ids: MessageIds) -> dict:
    """Return the `tm.jobs` body of a staged job; `job_base` contains tenant_id, campaign_id and run_id."""
    job = dict(job_base)
    job.update(zip(STAGED_JOB_FIELDS, staged))
    job["message_id"] = message_ids.build(job_base["run_id"], job["to"])
    return job


def _columns_of(rows: Iterable[Mapping[str, object]]) -> list[str]:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _cell(row: Mapping[str, object], column: str) -> object:
    """Return a row's value for a column, matching the alias without regard to case as iMIS does."""
    if column in row:
        return row[column]
    folded = column.casefold()
    for key, value in row.items():
        if key.casefold() == folded:
            return value
    return None
