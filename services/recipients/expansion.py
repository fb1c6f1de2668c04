"""Turn IQA rows into send jobs: normalise, de-duplicate, filter opt-outs, render, measure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from libs.common.phones import check_number
from libs.common.texts import Template, measure, smart_encode

DUPLICATE_NUMBER = "duplicate number"
OPTED_OUT = "opted out"
EMPTY_TEXT = "the text is empty for this member"
TOO_LONG = "the text is longer than 1,600 characters for this member"


@dataclass
class PageResult:
    """What one IQA page produced: jobs to send and rows skipped with their reason."""

    jobs: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    segments: int = 0
    encodings: dict[str, int] = field(default_factory=dict)


class RowProcessor:
    """The per-row work of a run, shared by the pipeline and the preview.

    `seen` maps each normalised number already taken in this run to its member id, so
    a number gets one text however often it appears, and a row that offset paging
    repeated (same member, same number) is counted once.
    """

    def __init__(self, *, template: Template, default_country: str, phone_column: str, id_column: str,
                 smart_encoding: bool, job_base: Mapping[str, str]):
        self._template = template
        self._country = default_country
        self._phone_column = phone_column
        self._id_column = id_column
        self._smart = smart_encoding
        self._job_base = dict(job_base)
        self.seen: dict[str, str] = {}
        self.seen_skipped: set[tuple[str, str]] = set()

    def process(self, rows: Iterable[Mapping[str, object]], opted_out: set[str]) -> PageResult:
        result = PageResult()
        for row in rows:
            self._process_row(row, opted_out, result)
        return result

    def numbers_of(self, rows: Iterable[Mapping[str, object]]) -> list[str]:
        """Return the valid normalised numbers of rows, for the opt-out look-up."""
        numbers = []
        for row in rows:
            check = check_number(_cell(row, self._phone_column), self._country)
            if check.e164:
                numbers.append(check.e164)
        return numbers

    def _process_row(self, row: Mapping[str, object], opted_out: set[str], result: PageResult) -> None:
        member_id = str(_cell(row, self._id_column) or "")
        raw = _cell(row, self._phone_column)
        check = check_number(raw, self._country)
        if not check.sendable:
            self._skip(result, member_id, raw, check.e164, check.reason)
            return
        number = check.e164
        if number in self.seen:
            if self.seen[number] != member_id:
                self._skip(result, member_id, raw, number, DUPLICATE_NUMBER)
            return
        if number in opted_out:
            self.seen[number] = member_id
            self._skip(result, member_id, raw, number, OPTED_OUT)
            return

        body = self._template.render(row)
        if self._smart:
            body = smart_encode(body)
        measured = measure(body)
        if measured.segments == 0 or measured.too_long:
            self._skip(result, member_id, raw, number, EMPTY_TEXT if measured.segments == 0 else TOO_LONG)
            return
        self.seen[number] = member_id
        result.jobs.append(dict(self._job_base, message_id=f"{self._job_base['run_id']}:{number}", member_id=member_id,
                                to=number, body=body, segments=measured.segments, encoding=measured.encoding))
        result.segments += measured.segments
        result.encodings[measured.encoding] = result.encodings.get(measured.encoding, 0) + 1

    def _skip(self, result: PageResult, member_id: str, raw: object, number: str | None, reason: str) -> None:
        key = (member_id, reason)
        if key in self.seen_skipped:
            return
        self.seen_skipped.add(key)
        result.skipped.append({"member_id": member_id, "raw": "" if raw is None else str(raw), "e164": number, "reason": reason})


def _cell(row: Mapping[str, object], column: str) -> object:
    """Return a row's value for a column, matching the alias without regard to case as iMIS does."""
    if column in row:
        return row[column]
    lowered = column.lower()
    for key, value in row.items():
        if key.lower() == lowered:
            return value
    return None
