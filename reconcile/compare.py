"""The comparison of one PBX's stored calls with Asterisk's own records of a period: which calls
Asterisk has that are not stored (missing), which are stored that Asterisk has not (phantoms),
which disagree, which are stored twice; and the share of Asterisk's calls stored exactly.

Pure: calls in, a report out. A call belongs to the period by its start in Asterisk's records
(by its stored start when Asterisk has no record of it). Compared fields: direction, caller, the
number dialled (when CEL told it), answered, first and last answered by, status, and the start,
answer and end times, each within the tolerance of what Asterisk wrote (a time written to the
second counts as the whole second).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from contracts.records import CallRecord
from reconcile.asterisk import AsteriskCall, Span
from reconcile.readers import Rejected

EXACT_FIELDS = ("direction", "caller", "called", "answered", "first_answered_by",
                "last_answered_by", "status")
TIME_FIELDS = ("start", "answer", "end")
COMPARED = EXACT_FIELDS + TIME_FIELDS


class Difference(msgspec.Struct, frozen=True):
    field: str
    stored: Any  # the stored value
    asterisk: Any  # Asterisk's: a value, or [earliest, latest] for a time


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    """One call the report names."""

    call_id: str
    linkedid: str
    start: float
    built_from: str = ""  # of the stored record, when there is one
    differences: tuple[Difference, ...] = ()


class Report(msgspec.Struct, kw_only=True):
    pbx_id: str
    since: float
    until: float
    tolerance_s: float
    asterisk_calls: int = 0
    stored_calls: int = 0
    exact: int = 0
    from_cdr: int = 0  # of the exact ones, records rebuilt from the CDR (no legs, no hangup cause)
    with_cel: int = 0  # Asterisk's calls that CEL covered (the number dialled compared)
    missing: list[Finding] = []
    phantoms: list[Finding] = []
    differing: list[Finding] = []
    duplicates: list[str] = []  # call ids stored in more than one row
    not_calls: list[str] = []  # Linkedids whose rows name no trunk or device: not PBX calls
    rejected: list[Rejected] = []  # rows of the sources that could not be read
    rebuilt: list[str] = []  # call ids written from the CDR by this run
    completeness: float = 1.0


def period_of(calls: Sequence[AsteriskCall]) -> tuple[float, float] | None:
    """The period Asterisk's records cover: from the first call's start to just after the last's."""
    if not calls:
        return None
    return min(c.start.lo for c in calls), max(c.start.hi for c in calls) + 0.001


def _within(t: float, span: Span, tol: float) -> bool:
    return span.lo - tol <= t <= span.hi + tol


def differences(call: AsteriskCall, stored: CallRecord, tolerance_s: float) -> list[Difference]:
    """The compared fields on which the stored record and Asterisk's disagree."""
    out = []
    for name in EXACT_FIELDS:
        want = getattr(call, name)
        if name == "called" and want is None:
            continue  # without CEL Asterisk's records do not say which number was dialled
        got = getattr(stored, name)
        if got != want:
            out.append(Difference(name, got, want))
    for name in TIME_FIELDS:
        span: Span | None = getattr(call, name)
        got = getattr(stored, name)
        if span is None or got is None:
            if (span is None) != (got is None):
                out.append(Difference(name, got, None if span is None else [span.lo, span.hi]))
        elif not _within(got, span, tolerance_s):
            out.append(Difference(name, got, [span.lo, span.hi]))
    return out


def compare(asterisk: Sequence[AsteriskCall], stored: Sequence[CallRecord], *, pbx_id: str,
            since: float, until: float, tolerance_s: float, not_calls: Sequence[str] = (),
            rejected: Sequence[Rejected] = ()) -> Report:
    """Asterisk's calls against the stored ones (read a little beyond the period, so that a call
    whose two starts straddle its edge is still found). Both sides may hold calls outside the
    period: they are looked up, not judged."""
    report = Report(pbx_id=pbx_id, since=since, until=until, tolerance_s=tolerance_s,
                    not_calls=list(not_calls), rejected=list(rejected))
    by_linkedid: dict[str, CallRecord] = {}
    twice: set[str] = set()
    for r in stored:
        kept = by_linkedid.get(r.linkedid)
        if kept is not None:
            twice.add(r.linkedid)
        if kept is None or r.version > kept.version:
            by_linkedid[r.linkedid] = r
    theirs = {c.linkedid for c in asterisk}
    for call in asterisk:
        if not since <= call.start.lo < until:
            continue
        report.asterisk_calls += 1
        report.with_cel += call.with_cel
        got = by_linkedid.get(call.linkedid)
        if got is None:
            report.missing.append(Finding(call_id=f"{pbx_id}:{call.linkedid}",
                                          linkedid=call.linkedid, start=call.start.lo))
            continue
        diffs = differences(call, got, tolerance_s)
        if diffs:
            report.differing.append(Finding(call_id=got.call_id, linkedid=call.linkedid,
                                            start=got.start, built_from=got.built_from,
                                            differences=tuple(diffs)))
        elif call.linkedid not in twice:  # stored twice is not stored exactly: see duplicates
            report.exact += 1
            report.from_cdr += got.built_from == "cdr"
    for r in by_linkedid.values():
        if since <= r.start < until:
            report.stored_calls += 1
            if r.linkedid in twice:
                report.duplicates.append(r.call_id)
            if r.linkedid not in theirs:
                report.phantoms.append(Finding(call_id=r.call_id, linkedid=r.linkedid,
                                               start=r.start, built_from=r.built_from))
    report.duplicates.sort()
    report.completeness = report.exact / report.asterisk_calls if report.asterisk_calls else 1.0
    return report
