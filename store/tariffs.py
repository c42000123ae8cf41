"""The price list and re-rated calls in ClickHouse: the ``tariffs`` table and ``pbxpipe rerate``.

Rating is enrich's (enrich/tariffs.py): this module is given the price list and the rating
function, and reads and writes the tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import msgspec
import structlog

from contracts import metrics
from contracts.records import CallRecord
from contracts.tariffs import Rating, TariffRow
from store import queries
from store.clickhouse import ClickHouseStore
from store.schema import TARIFFS, batch_token
from store.tenancy import Scope

log = structlog.get_logger("store.tariffs")

RATING_REVISION_SHIFT = 32
"""``CallRecord.version`` of a re-rated row: the rating revision in the high 32 bits, the events
folded in below. A re-rated row beats every version the pipeline writes (events only) and each
re-rating beats the previous one, in ReplacingMergeTree(version)."""


def rerated_version(version: int) -> int:
    """The version of a call's row after one more re-rating (see RATING_REVISION_SHIFT)."""
    revision = (version >> RATING_REVISION_SHIFT) + 1
    return (revision << RATING_REVISION_SHIFT) | (version & ((1 << RATING_REVISION_SHIFT) - 1))


def rating_of(record: CallRecord) -> Rating:
    """The cost fields of a stored record."""
    return Rating(**{f: getattr(record, f) for f in Rating.__struct_fields__})


class PriceList(Protocol):
    """A validated price list (enrich.tariffs.Tariff), as the ``tariffs`` table stores it."""

    @property
    def version(self) -> str: ...

    def rows(self) -> list[TariffRow]: ...


def publish(store: ClickHouseStore, tariff: PriceList) -> int:
    """Load the price list into ClickHouse (table ``tariffs``) unless that version is there."""
    have = store.query("SELECT count() AS n FROM tariffs WHERE version = {v:String}", {"v": tariff.version})
    if have and int(have[0]["n"]):
        return 0
    rows = tariff.rows()
    store.write_structs(TARIFFS, rows, f"tariffs:{tariff.version}")
    log.info("tariff_loaded", version=tariff.version, rows=len(rows))
    return len(rows)


# -- re-rating stored calls ---------------------------------------------------------------------


@dataclass
class RerateReport:
    calls: int = 0  # outbound calls looked at
    changed: int = 0  # written as a new row version
    before: dict[str, Decimal] = field(default_factory=dict)  # currency -> sell total
    after: dict[str, Decimal] = field(default_factory=dict)
    margin_before: dict[str, Decimal] = field(default_factory=dict)
    margin_after: dict[str, Decimal] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        def m(d: dict[str, Decimal]) -> dict[str, str]:
            return {k or "-": queries.money_str(v) for k, v in sorted(d.items())}

        return {"calls": self.calls, "changed": self.changed, "cost_before": m(self.before),
                "cost_after": m(self.after), "margin_before": m(self.margin_before),
                "margin_after": m(self.margin_after)}


def _add(d: dict[str, Decimal], currency: str, amount: Decimal) -> None:
    d[currency] = d.get(currency, Decimal(0)) + amount


def rerate(store: ClickHouseStore, rate: Callable[[CallRecord], CallRecord], *, since: Any = None,
           until: Any = None,
           plan: str | None = None, pbx_id: str | None = None, tz: str = "UTC",
           page: int = 5_000, progress: Callable[[int, int], None] | None = None,
           dry_run: bool = False) -> RerateReport:
    """Rate the outbound calls that started in [since, until) again and write those whose rating
    changed as a new row version (see :func:`rerated_version`). Idempotent: with the same
    price list nothing changes the second time. ``plan``: only calls on that plan, before or after.
    ``progress(done, total)`` is called after each page."""
    report = RerateReport()
    scope = Scope.operator(tenant=pbx_id)  # re-rating reads every stored call, expired or not
    q = queries.outbound_calls_query(scope, since=since, until=until, tz=tz, count=True)
    total = int(store.query(q.sql, q.parameters)[0]["calls"])
    after: tuple[int, str] | None = None
    done = 0
    while True:
        q = queries.outbound_calls_query(scope, since=since, until=until, tz=tz,
                                         after=after, limit=page)
        rows = store.query(q.sql, q.parameters)
        if not rows:
            break
        after = (int(rows[-1]["start_ms"]), rows[-1]["call_id"])
        changed: list[CallRecord] = []
        for row in rows:
            old = queries.record_from_row(row)
            new = rate(old)
            if plan is not None and plan not in (old.tariff_plan, new.tariff_plan):
                continue
            report.calls += 1
            _add(report.before, old.currency, old.cost)
            _add(report.margin_before, old.currency, old.margin)
            _add(report.after, new.currency, new.cost)
            _add(report.margin_after, new.currency, new.margin)
            if rating_of(new) != rating_of(old):
                changed.append(msgspec.structs.replace(new, version=rerated_version(old.version)))
        if changed and not dry_run:
            store.write_calls(changed, batch_token("calls", changed))
        report.changed += len(changed)
        metrics.TARIFF_RERATED_CALLS.inc(0 if dry_run else len(changed))
        done += len(rows)
        if progress:
            progress(done, total)
    for d in (report.before, report.after, report.margin_before, report.margin_after):
        for k in [k for k, v in d.items() if k == "" and v == 0]:
            del d[k]  # calls that were never rated carry no currency and no cost
    log.info("calls_rerated", calls=report.calls, changed=report.changed, dry_run=dry_run)
    return report

