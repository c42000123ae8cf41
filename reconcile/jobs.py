"""Reconciliation against ClickHouse: read the PBX's stored calls of the period, compare them with
Asterisk's records, optionally write the missing calls from the CDR, keep the run in
``reconcile_runs`` and set the completeness metrics."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import structlog

from contracts import metrics
from contracts.errors import InputError
from contracts.logs import LogOnce
from contracts.profile import PbxProfile
from contracts.reconcile import ReconcileRun
from contracts.records import CallRecord
from reconcile import queries
from reconcile.asterisk import CdrRow, CelEvent, asterisk_calls, rebuilt_record
from reconcile.compare import Report, compare, period_of
from reconcile.readers import Rejected
from store.clickhouse import ClickHouseStore
from store.queries import record_from_row
from store.schema import RECONCILE_RUNS, batch_token

log = structlog.get_logger("reconcile.jobs")

EDGE_S = 60.0
"""Stored calls are read this far beyond the period: a call whose stored start and Asterisk's
straddle the period's edge is still found (a time may differ by the tolerance, and by the
second Asterisk truncates)."""


def stored_calls(store: ClickHouseStore, pbx_id: str, since: float, until: float,
                 page: int = 5_000) -> list[CallRecord]:
    """The PBX's stored calls that started in [since, until), every row under FINAL."""
    out: list[CallRecord] = []
    after: tuple[int, str] | None = None
    while True:
        q = queries.stored_calls_query(pbx_id, since, until, after=after, limit=page)
        rows = store.query(q.sql, q.parameters)
        out += [record_from_row(r) for r in rows]
        if len(rows) < page:
            return out
        after = (int(rows[-1]["start_ms"]), rows[-1]["call_id"])


def reconcile(store: ClickHouseStore, *, pbx_id: str, profile: PbxProfile, rows: Sequence[CdrRow],
              cel: Sequence[CelEvent] = (), rejected: Sequence[Rejected] = (),
              since: float | None = None, until: float | None = None, tolerance_s: float = 1.0,
              threshold: float = 0.999, recording_patterns: Sequence[str] = (),
              write_missing: bool = False, rate: Callable[[CallRecord], CallRecord] | None = None,
              source: str = "", now: float | None = None) -> Report:
    """Compare the PBX's stored calls with Asterisk's records of [since, until) (default: the
    period the rows cover); with ``write_missing``, write the calls Asterisk has and the store
    lacks from its rows (``built_from="cdr"``, rated with ``rate``). The run is kept in
    ``reconcile_runs``; the completeness gauges are set for the PBX."""
    now = time.time() if now is None else now
    once = LogOnce(log.bind(pbx=pbx_id))
    for bad in rejected:
        once.warning(bad.reason, "source_row_rejected", where=bad.where, reason=bad.reason)
    calls, not_calls = asterisk_calls(rows, cel, profile, recording_patterns)
    if since is None or until is None:
        covered = period_of(calls)
        if covered is None:
            raise InputError("no call in the PBX's records and no period given (--since, "
                             "--until): nothing to compare")
        since = covered[0] if since is None else since
        until = covered[1] if until is None else until
    if until <= since:
        raise InputError(f"an empty period: until {until} is not after since {since}")
    stored = stored_calls(store, pbx_id, since - EDGE_S, until + EDGE_S)
    report = compare(calls, stored, pbx_id=pbx_id, since=since, until=until,
                     tolerance_s=tolerance_s, not_calls=not_calls, rejected=rejected)
    if write_missing and report.missing:
        wanted = {f.linkedid for f in report.missing}
        records = [rebuilt_record(c, pbx_id) for c in calls if c.linkedid in wanted]
        if rate is not None:
            records = [rate(r) for r in records]
        store.write_calls(records, batch_token("calls", records))
        report.rebuilt = [r.call_id for r in records]
    _keep(store, report, source, now)
    _observe(report, threshold, now)
    log.info("calls_reconciled", pbx=pbx_id, since=since, until=until,
             asterisk_calls=report.asterisk_calls, exact=report.exact,
             missing=len(report.missing), phantoms=len(report.phantoms),
             differing=len(report.differing), duplicates=len(report.duplicates),
             rebuilt=len(report.rebuilt), rejected_rows=len(report.rejected),
             completeness=round(report.completeness, 6))
    return report


def run_id(report: Report, source: str, now: float) -> str:
    """A run's id: the PBX, the period, the source and the time, hashed."""
    text = f"{report.pbx_id}\x00{report.since}\x00{report.until}\x00{source}\x00{now}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _keep(store: ClickHouseStore, report: Report, source: str, now: float) -> None:
    run = ReconcileRun(
        run_id=run_id(report, source, now), pbx_id=report.pbx_id, run_at=now,
        since=report.since, until=report.until, source=source,
        asterisk_calls=report.asterisk_calls, stored_calls=report.stored_calls,
        exact=report.exact, missing=len(report.missing), phantoms=len(report.phantoms),
        differing=len(report.differing), duplicates=len(report.duplicates),
        rebuilt=len(report.rebuilt), rejected_rows=len(report.rejected),
        completeness=report.completeness, report=msgspec.json.encode(report).decode(),
    )
    store.write_structs(RECONCILE_RUNS, [run], f"reconcile_runs:{run.run_id}")


def _observe(report: Report, threshold: float, now: float) -> None:
    pbx = report.pbx_id
    metrics.RECONCILE_COMPLETENESS.labels(pbx).set(report.completeness)
    metrics.RECONCILE_THRESHOLD.labels(pbx).set(threshold)
    counts: dict[str, Any] = {
        "asterisk": report.asterisk_calls, "exact": report.exact, "missing": len(report.missing),
        "phantom": len(report.phantoms), "differing": len(report.differing),
        "duplicate": len(report.duplicates), "rebuilt": len(report.rebuilt)}
    for outcome, n in counts.items():
        metrics.RECONCILE_CALLS.labels(pbx, outcome).set(n)
    metrics.RECONCILE_REJECTED_ROWS.labels(pbx).set(len(report.rejected))
    metrics.RECONCILE_LAST_RUN.labels(pbx).set(now)
