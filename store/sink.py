"""The in-process sink: the core's outputs batched per table (on size or age) into the store.

Each batch is inserted with a deduplication token derived from its content, so a replay of the
same events leaves the same rows. ``pbxpipe run`` and ``pbxpipe replay`` write through it; the
store stage (store/stage.py) is its counterpart for the records topic.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import structlog

from contracts import metrics
from contracts.config import Settings
from contracts.logs import LogOnce
from contracts.records import CallLeg, CallRecord, Output
from contracts.tariffs import TariffAlert
from store.batching import Batcher
from store.clickhouse import ClickHouseStore
from store.schema import TARIFF_ALERTS, batch_token

log = structlog.get_logger("store.sink")

RecordHook = Callable[[CallRecord], None]


class RecordWatch(Protocol):
    """What watches the stored call records (enrich.rating.RatingStage: unusual traffic)."""

    def observe(self, record: CallRecord) -> list[TariffAlert]: ...


class Sink:
    """Routes core outputs into per-table batches and writes them to the store."""

    def __init__(self, store: ClickHouseStore, settings: Settings,
                 clock: Callable[[], float] = time.monotonic,
                 on_record: RecordHook | None = None, rating: RecordWatch | None = None) -> None:
        self.store = store
        self.on_record = on_record
        self.rating = rating  # tariffs: unusual-traffic alerts over the rated records
        self._batchers: dict[str, Batcher[Any]] = {
            t: Batcher(settings.batch_rows, settings.batch_age_s, clock=clock)
            for t in ("calls", "call_legs", "quarantine", "tariff_alerts")
        }
        self._ready: deque[tuple[str, list[Any]]] = deque()
        self._warn = LogOnce(log)

    def add(self, item: Output) -> None:
        if isinstance(item, CallRecord):
            table = "calls"
            metrics.ENRICH_CALLS.labels(item.pbx_id, item.status).inc()
            if item.incomplete:
                metrics.ENRICH_INCOMPLETE.labels(item.pbx_id).inc()
            if self.on_record:
                self.on_record(item)
            for alert in self.rating.observe(item) if self.rating else ():
                alerts = self._batchers["tariff_alerts"].add(alert)
                if alerts:
                    self._ready.append(("tariff_alerts", alerts))
        elif isinstance(item, CallLeg):
            table = "call_legs"
        else:
            table = "quarantine"
            self._warn.warning(item.reason, "input_quarantined", pbx=item.pbx_id,
                               reason=item.reason, detail=item.detail[:200])
        batch = self._batchers[table].add(item)
        if batch:
            self._ready.append((table, batch))

    def ready(self, *, flush: bool = False) -> list[tuple[str, list[Any]]]:
        """Batches due now (by size or age); all of them when ``flush``."""
        for table, b in self._batchers.items():
            batch = b.flush() if flush else b.poll()
            if batch:
                self._ready.append((table, batch))
        out = list(self._ready)
        self._ready.clear()
        return out

    def write(self, table: str, batch: list[Any]) -> None:
        token = batch_token(table, batch)
        if table == "calls":
            self.store.write_calls(batch, token)
        elif table == "call_legs":
            self.store.write_legs(batch, token)
        elif table == "tariff_alerts":
            self.store.write_structs(TARIFF_ALERTS, batch, token)
        else:
            self.store.write_quarantine(batch, token)
        log.info("batch_flushed", table=table, rows=len(batch))

    def write_all(self, batches: Iterable[tuple[str, list[Any]]]) -> None:
        for table, batch in batches:
            self.write(table, batch)
