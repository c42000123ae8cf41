"""Re-derivation: today's enrich rules re-run over a PBX's raw events (the raw topic while it
retains them, or a capture), written to a shadow table, compared field by field with what is
stored and, when asked, written over it as new row versions.

The way to recover after an enrich bug: fix enrich, run ``pbxpipe rederive`` for the period the
bug touched, read the diff, run it again with ``--apply``. Idempotent: once applied, a second
run finds nothing to change.

Versions (``CallRecord.version``, ReplacingMergeTree keeps the highest): the events folded in
are its low 32 bits, ``pbxpipe rerate``'s rating revision bits 32-47
(``store.tariffs.RATING_REVISION_SHIFT``), this derivation revision bits 48-63. A re-derived row
has the stored row's derivation revision + 1 over the events it folded: it beats every row the
pipeline, a re-rating or an earlier re-derivation wrote; a later re-rating adds to its rating
revision and beats it in turn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import msgspec
import structlog

from contracts import metrics
from contracts.envelope import Envelope
from contracts.records import CallLeg, CallRecord, Output
from reconcile import queries
from reconcile.queries import Statement
from store.clickhouse import ClickHouseStore
from store.queries import record_from_row
from store.schema import CALL_LEGS, CALLS, REDERIVED_CALLS, REDERIVED_LEGS, batch_token
from store.tariffs import RATING_REVISION_SHIFT
from store.tenancy import ScopedQuery

log = structlog.get_logger("reconcile.rederive")

REDERIVE_REVISION_SHIFT = 48
"""Where a version's derivation revision starts (see the module docstring)."""
assert REDERIVE_REVISION_SHIFT > RATING_REVISION_SHIFT
_EVENTS_MASK = (1 << RATING_REVISION_SHIFT) - 1

IGNORED = ("version",)
"""Fields a re-derivation does not compare: the version is what it sets."""
GROUPS: dict[str, tuple[str, ...]] = {
    "status": ("status", "answered"),
    "direction": ("direction",),
    "parties": ("caller", "caller_name", "called", "first_answered_by", "last_answered_by",
                "extensions_rang"),
    "times": ("start", "answer", "end", "duration_s", "wait_s", "talk_s"),
    "cost": ("cost", "cost_buy", "margin", "currency", "billed_s", "rating", "called_e164",
             "tariff_plan", "tariff_version", "tariff_prefix", "destination",
             "destination_category", "tariff_band", "rate", "increments"),
}
"""How the report sums the fields that changed: calls whose status, direction, parties, times
or cost change (a call counts once per group)."""


def rederived_version(stored: int, derived: int) -> int:
    """The version of a re-derived row that replaces a stored row of version ``stored``."""
    revision = (stored >> REDERIVE_REVISION_SHIFT) + 1
    return (revision << REDERIVE_REVISION_SHIFT) | (derived & _EVENTS_MASK)


def changed_fields(old: CallRecord, new: CallRecord) -> list[str]:
    """The fields on which two records of a call differ (times to the millisecond)."""
    out = []
    for name in CallRecord.__struct_fields__:
        if name in IGNORED:
            continue
        a, b = getattr(old, name), getattr(new, name)
        if isinstance(a, float) and isinstance(b, float):
            if abs(a - b) >= 0.0005:
                out.append(name)
        elif a != b:
            out.append(name)
    return out


def leg_key(leg: CallLeg) -> tuple[Any, ...]:
    """A leg as compared: every field but its version."""
    return tuple(getattr(leg, f) for f in CallLeg.__struct_fields__ if f != "version")


class Change(msgspec.Struct, frozen=True):
    call_id: str
    field: str
    before: Any
    after: Any


class RederiveReport(msgspec.Struct, kw_only=True):
    run_id: str
    pbx_id: str
    since: float | None
    until: float | None
    applied: bool
    calls: int = 0  # derived again in the period
    unchanged: int = 0
    changed: int = 0  # stored, and a field or a leg differs
    new: int = 0  # derived, not stored
    gone: int = 0  # stored in the period, not derived again (no longer in the source?)
    gone_first: list[str] = []
    partial: int = 0  # calls whose first events the source no longer holds: not compared
    fields: dict[str, int] = {}  # field -> calls where it changes
    groups: dict[str, int] = {}  # GROUPS name -> calls where one of its fields changes
    legs: int = 0  # calls whose legs change
    twice: int = 0  # calls stored in more than one row (their extra rows removed on apply)
    written: int = 0  # calls written as new versions (applied)
    examples: list[Change] = []


class Partial:
    """The calls whose first frame in a source is not a ``Newchannel``: their first events are
    gone (the raw topic's retention, a capture started mid-call), so what a re-derivation makes
    of them is not the call."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self.calls: set[str] = set()

    def see(self, env: Envelope) -> None:
        linkedid = env.get("Linkedid")
        if not linkedid or linkedid in self._seen:
            return
        self._seen.add(linkedid)
        if env.name != "Newchannel":
            self.calls.add(linkedid)


def run_id_of(pbx_id: str, since: float | None, until: float | None, now: float) -> str:
    return hashlib.blake2b(f"{pbx_id}\x00{since}\x00{until}\x00{now}".encode(),
                           digest_size=8).hexdigest()


def derive_into_shadow(store: ClickHouseStore, outputs: Iterable[Output], partial: Partial, *,
                       run_id: str, run_at: float, pbx_id: str, since: float | None,
                       until: float | None, batch: int = 5_000) -> int:
    """Write the PBX's derived calls that started in [since, until) and their legs to the
    shadow tables under ``run_id``; calls ``partial`` names are left out. Returns calls written.
    Legs come with their call (the builder emits them together)."""
    calls: list[CallRecord] = []
    legs: list[CallLeg] = []
    kept: set[str] = set()
    written = 0

    def flush() -> None:
        nonlocal written
        lead = (run_id, run_at)
        if calls:
            store.write_led(REDERIVED_CALLS, lead, calls, f"{run_id}:{batch_token('c', calls)}")
            written += len(calls)
        if legs:
            store.write_led(REDERIVED_LEGS, lead, legs, f"{run_id}:{batch_token('l', legs)}")
        calls.clear()
        legs.clear()

    for o in outputs:
        if isinstance(o, CallRecord):
            if (o.pbx_id == pbx_id and o.linkedid not in partial.calls
                    and (since is None or o.start >= since) and (until is None or o.start < until)):
                calls.append(o)
                kept.add(o.call_id)
        elif isinstance(o, CallLeg) and o.call_id in kept:
            legs.append(o)
        if len(calls) >= batch:
            flush()
    flush()
    return written


def _pages(store: ClickHouseStore, run_id: str, page: int) -> Iterator[list[CallRecord]]:
    after = ""
    while True:
        q = queries.shadow_page_query(run_id, after=after, limit=page)
        rows = store.query(q.sql, q.parameters)
        if not rows:
            return
        yield [record_from_row(r) for r in rows]
        after = rows[-1]["call_id"]


def _legs(store: ClickHouseStore, q: Statement | ScopedQuery) -> dict[str, list[CallLeg]]:
    out: dict[str, list[CallLeg]] = {}
    for row in store.query(q.sql, q.parameters):
        fields = {}
        for f in CallLeg.__struct_fields__:
            if f in ("start", "answer", "end"):
                ms = row[f"{f}_ms"]
                fields[f] = None if ms is None else ms / 1000
            else:
                fields[f] = row[f]
        leg = msgspec.convert(fields, CallLeg)
        out.setdefault(leg.call_id, []).append(leg)
    return out


def compare_shadow(store: ClickHouseStore, *, run_id: str, pbx_id: str, since: float | None,
                   until: float | None, partial: int = 0, apply: bool = False,
                   page: int = 2_000, examples: int = 20) -> RederiveReport:
    """The run's calls against the stored ones, field by field and leg by leg; with ``apply``,
    each call that differs (or is not stored) written as a new version with its legs, the rows
    it replaces under another sorting key and the legs it no longer has removed."""
    report = RederiveReport(run_id=run_id, pbx_id=pbx_id, since=since, until=until,
                            applied=apply, partial=partial)
    for derived in _pages(store, run_id, page):
        ids = [r.call_id for r in derived]
        q = queries.calls_by_id_query(pbx_id, ids)
        stored: dict[str, list[CallRecord]] = {}
        for row in store.query(q.sql, q.parameters):
            rec = record_from_row(row)
            stored.setdefault(rec.call_id, []).append(rec)
        new_legs = _legs(store, queries.shadow_legs_query(run_id, ids))
        old_legs = _legs(store, queries.stored_legs_query(pbx_id, ids))
        write: list[CallRecord] = []
        write_legs: list[CallLeg] = []
        replaced: list[CallRecord] = []  # stored rows the new versions do not replace in FINAL
        for new in derived:
            report.calls += 1
            rows = stored.get(new.call_id, [])
            legs = sorted(new_legs.get(new.call_id, []), key=lambda x: x.leg_id)
            if not rows:
                report.new += 1
                write.append(new)
                write_legs += legs
                continue
            old = max(rows, key=lambda r: r.version)
            if len(rows) > 1:
                report.twice += 1
            fields = changed_fields(old, new)
            legs_differ = ({leg_key(x) for x in old_legs.get(new.call_id, [])}
                           != {leg_key(x) for x in legs})
            if not fields and not legs_differ and len(rows) == 1:
                report.unchanged += 1
                continue
            report.changed += 1
            for f in fields:
                report.fields[f] = report.fields.get(f, 0) + 1
                if len(report.examples) < examples:
                    report.examples.append(Change(new.call_id, f, getattr(old, f), getattr(new, f)))
            for group, members in GROUPS.items():
                if any(f in members for f in fields):
                    report.groups[group] = report.groups.get(group, 0) + 1
            report.legs += legs_differ
            version = rederived_version(max(r.version for r in rows), new.version)
            write.append(msgspec.structs.replace(new, version=version))
            write_legs += [msgspec.structs.replace(x, version=version) for x in legs]
            replaced += [r for r in rows if _day(r.start) != _day(new.start)]
        if apply and write:
            _write(store, pbx_id, write, write_legs, replaced)
            report.written += len(write)
    q = queries.gone_query(run_id, pbx_id, since if since is not None else 0.0,
                           until if until is not None else 2**40)
    gone = store.query(q.sql, q.parameters)[0]
    report.gone, report.gone_first = int(gone["calls"]), list(gone["first"])
    if apply:
        metrics.REDERIVE_REPLACED.labels(pbx_id).inc(report.written)
    log.info("calls_rederived", pbx=pbx_id, run_id=run_id, calls=report.calls,
             changed=report.changed, new=report.new, gone=report.gone, partial=report.partial,
             applied=apply, written=report.written)
    return report


def _day(t: float) -> int:
    """The UTC day of a start: the calls table's sorting key holds it (toDate(start))."""
    return int(t // 86400)


def _write(store: ClickHouseStore, pbx_id: str, calls: Sequence[CallRecord],
           legs: Sequence[CallLeg], replaced: Sequence[CallRecord]) -> None:
    """New versions first, then what they leave behind: stored rows under another sorting key,
    legs the calls no longer have. A crash in between is found and finished by the next run."""
    if legs:
        store.write_legs(legs, batch_token("call_legs", legs))
    store.write_calls(calls, batch_token("calls", calls))
    sync = {"mutations_sync": 2}
    if replaced:
        q = queries.delete_rows_query(CALLS, pbx_id, [r.call_id for r in replaced],
                                      start_ms=[round(r.start * 1000) for r in replaced],
                                      versions=[r.version for r in replaced])
        store.command(q.sql, q.parameters, settings=sync)
    q = queries.delete_rows_query(CALL_LEGS, pbx_id, [c.call_id for c in calls],
                                  keep_legs=[(x.leg_id, x.version) for x in legs])
    store.command(q.sql, q.parameters, settings=sync)
