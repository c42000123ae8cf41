"""store as a Kafka client: records topic -> ClickHouse.

Each message is a batch of rows as Arrow (pbxpipe.records_topic), checked against its schema and
inserted as Arrow columns, never one Python object per row. Batches close on size (rows) or age;
each insert carries deduplication tokens named by its offset ranges; offsets are committed after
ClickHouse acknowledged; fetching pauses while ClickHouse is down, and nothing is dropped.

One batch is inserted (in a worker thread) while the next is fetched and decoded; at most one
insert is in flight, and each batch's commit waits for the one before, so commits stay in order.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import structlog
from aiokafka import AIOKafkaConsumer

from contracts import kafka as k
from contracts import metrics
from contracts.config import Settings
from contracts.errors import StoreError
from pbxpipe import records_topic
from pbxpipe.kafka import (
    DeadLetters,
    KafkaError,
    Producer,
    TopicPartition,
    ensure_topics,
    make_consumer,
    make_producer,
)
from pbxpipe.records_topic import Kind, RecordsError
from pbxpipe.stages import (
    Poison,
    Rebalance,
    group_lag,
    kind_of,
    observe_lag,
    poison_guard,
)
from store import schema

log = structlog.get_logger("pbxpipe.stage_store")

_TABLES = {t.name: t for t in schema.TABLES}


@dataclass(eq=False)
class _Batch:
    """A closed batch: its rows per kind and the offset ranges they came from."""

    tables: dict[Kind, pa.Table]
    ranges: dict[TopicPartition, tuple[int, int]]  # first, last offset
    rows: int
    retry: bool  # while ClickHouse is down: back off and retry (False: abandon, uncommitted)

    def token(self, table: str) -> str:
        """The insert's deduplication token: the table and the offset ranges of the rows."""
        ranges = ",".join(f"{tp.topic}/{tp.partition}/{a}-{b}"
                          for tp, (a, b) in sorted(self.ranges.items(),
                                                   key=lambda x: (x[0].topic, x[0].partition)))
        return f"{table}:{ranges}"


class StoreStage:
    """Records topic -> ClickHouse: batches by size or age, commit after the insert is acknowledged."""

    def __init__(self, settings: Settings, store: Any, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_written: Callable[[str, pa.Table], None] | None = None) -> None:
        self.settings = settings
        self.store = store  # ClickHouseStore or anything with write_arrow/write_quarantine
        self.clock = clock
        self.on_written = on_written  # (table name, the rows inserted) after each acknowledged insert
        self.consumer: AIOKafkaConsumer = make_consumer(
            settings, settings.kafka_records_topic, settings.kafka_store_group,
            Rebalance(self._on_revoked, self._on_assigned))
        self.producer = Producer(make_producer(settings), k.STAGE_STORE)
        self.dead = DeadLetters(self.producer, settings.kafka_dead_letter_topic, k.STAGE_STORE)
        self.rows = 0
        self.last_input = time.time()
        self._tables: dict[Kind, list[pa.Table]] = {kind: [] for kind in records_topic.KINDS}
        self._ranges: dict[TopicPartition, tuple[int, int]] = {}  # first, last offset pending
        self._pending = 0  # rows
        self._rows_per_message = 1.0  # in the last fetch (a fetch bigger than a batch is split)
        self._opened_at = 0.0
        self._caught_up = False
        self._writing: tuple[_Batch, asyncio.Task[bool]] | None = None  # the insert in flight
        self._committing: asyncio.Task[None] | None = None  # the last batch's commit
        self._paused = False  # fetching paused: the insert in flight is failing
        self.calls = 0
        self.first_at = 0.0  # perf_counter of the first message and of the last commit
        self.last_at = 0.0
        self._log = log.bind(stage=k.STAGE_STORE)
        self._consumed = metrics.KAFKA_CONSUMED.labels(k.STAGE_STORE)
        self._commits = metrics.KAFKA_COMMITS.labels(k.STAGE_STORE)

    async def start(self) -> None:
        s = self.settings
        await ensure_topics(s, [s.kafka_records_topic, s.kafka_dead_letter_topic])
        await self.producer.start()
        await self.consumer.start()

    async def close(self) -> None:
        await self.consumer.stop()
        await self.producer.stop()

    @property
    def idle(self) -> bool:
        return (self._caught_up and not self._ranges and self._writing is None
                and self._committing is None)

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._drain("revoke")
        self._log.info("partitions_revoked", partitions=sorted(tp.partition for tp in revoked))

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        if self._paused:  # ClickHouse is down: fetch nothing new until the batch in flight is in
            self.consumer.pause(*assigned)
        self._log.info("partitions_assigned", partitions=sorted(tp.partition for tp in assigned))

    def _drop_pending(self) -> None:
        for rows in self._tables.values():
            rows.clear()
        self._ranges.clear()
        self._pending = 0

    def _write(self, kind: Kind, data: pa.Table, token: str) -> None:
        if kind is records_topic.QUARANTINE:  # rare, and its rows need an id: computed per item
            self.store.write_quarantine(records_topic.records(kind, data), token)
        else:  # one chunk, not one per message: ClickHouse parses one record batch (~15% less)
            self.store.write_arrow(_TABLES[kind.table], data.combine_chunks(), token)

    def _start(self, *, retry: bool = True) -> None:
        """Close the pending batch and start inserting it; fetching goes on meanwhile, and so does
        the commit of the batch before (commits stay in order: each waits for the one before)."""
        batch = _Batch({kind: pa.concat_tables(t) for kind, t in self._tables.items() if t},
                       dict(self._ranges), self._pending, retry)
        self._drop_pending()
        inserted = asyncio.create_task(self._insert(batch), name="store-insert")
        self._writing = (batch, inserted)
        self._committing = asyncio.create_task(self._commit(batch, inserted, self._committing),
                                               name="store-commit")

    async def _insert(self, batch: _Batch) -> bool:
        """Insert a batch (every table); False if it was abandoned. While ClickHouse is down: stop
        fetching, back off (capped, jittered), try again; nothing is dropped. A batch whose
        ``retry`` was turned off (revoke, stop) is abandoned, uncommitted, at its next failure."""
        attempt = 0
        started = time.perf_counter()
        try:
            while True:
                try:
                    for kind, data in batch.tables.items():
                        await asyncio.to_thread(self._write, kind, data, batch.token(kind.table))
                    break
                except StoreError as e:
                    if not batch.retry:
                        # not committed: the partitions' next owner inserts them again (same tokens)
                        self._log.warning("batch_abandoned", rows=batch.rows, error=str(e))
                        return False
                    attempt += 1
                    if not self._paused:
                        self.consumer.pause(*self.consumer.assignment())
                        metrics.STORE_PAUSED.set(1)
                        self._paused = True
                    delay = min(self.settings.kafka_backoff_max_s, 0.2 * 2 ** attempt)
                    delay = delay / 2 + random.uniform(0, delay / 2)
                    self._log.warning("insert_failed_fetch_paused", attempt=attempt,
                                      delay_s=round(delay, 2), rows=batch.rows, error=str(e))
                    await asyncio.sleep(delay)
        finally:
            if self._paused:
                self._paused = False
                self.consumer.resume(*self.consumer.assignment())
                metrics.STORE_PAUSED.set(0)
        calls = batch.tables.get(records_topic.CALLS)
        if calls is not None:
            metrics.observe_many(metrics.STORE_CALL_LATENCY,
                                 time.time() - calls.column("end").to_numpy())
        legs = batch.tables.get(records_topic.LEGS)
        self._log.info("batch_flushed", rows=batch.rows,
                       calls=0 if calls is None else calls.num_rows,
                       legs=0 if legs is None else legs.num_rows,
                       seconds=round(time.perf_counter() - started, 3), attempts=attempt + 1)
        return True

    async def _commit(self, batch: _Batch, inserted: asyncio.Task[bool],
                      before: asyncio.Task[None] | None) -> None:
        """Once the batch before is committed and this one is inserted: the on_written hook, then
        commit its offsets (an error of either is raised from the stage's next step)."""
        if before is not None:
            await asyncio.wait({before})
            if not before.cancelled():
                before.result()
        await asyncio.wait({inserted})
        if inserted.cancelled() or not inserted.result():
            return
        if self.on_written:
            for kind, data in batch.tables.items():
                self.on_written(kind.table, data)
        try:
            await self.consumer.commit({tp: last + 1 for tp, (_, last) in batch.ranges.items()})
            self._commits.inc()
        except KafkaError as e:  # rebalanced meanwhile: the next owner inserts again (deduplicated)
            self._log.warning("commit_failed", error=str(e) or type(e).__name__)
        calls = batch.tables.get(records_topic.CALLS)
        self.rows += batch.rows
        self.calls += 0 if calls is None else calls.num_rows
        self.last_at = time.perf_counter()

    def _reap(self) -> None:
        """Forget the insert and the commit once done; their unexpected errors are raised here."""
        if self._writing is not None and self._writing[1].done():
            inserted = self._writing[1]
            self._writing = None
            if not inserted.cancelled():
                inserted.result()
        if self._committing is not None and self._committing.done():
            committed = self._committing
            self._committing = None
            if not committed.cancelled():
                committed.result()

    async def _flush(self) -> None:
        """Start inserting the pending batch once the insert in flight is done (at most one in
        flight: one batch inserting while the next fills)."""
        while self._writing is not None:
            await asyncio.wait({self._writing[1]}, timeout=1.0)
            if self._paused and not self._writing[1].done():
                # keep polling (nothing comes, partitions paused): the group keeps us
                await self.consumer.getmany(timeout_ms=100)
            self._reap()
        if self._ranges:
            self._start()

    async def _drain(self, why: str) -> None:
        """Before a revoke or a stop: finish the insert in flight and insert what is pending, each
        tried once, and commit what got in. While ClickHouse is down nothing more is tried: those
        batches stay uncommitted, to be fetched and inserted again (same rows, same tokens)."""
        while self._writing is not None or self._committing is not None or self._ranges:
            if self._paused:
                rows = self._pending + (self._writing[0].rows if self._writing is not None else 0)
                self._log.warning("batch_abandoned", why=why, rows=rows)
                self._drop_pending()
                if self._writing is not None:
                    self._writing[1].cancel()
            elif self._writing is None and self._ranges:
                self._start(retry=False)
            if self._writing is not None:
                self._writing[0].retry = False
            if self._committing is not None:
                await asyncio.wait({self._committing})
            self._reap()

    async def step(self) -> int:
        s = self.settings
        self._reap()
        due = 0.1
        if self._ranges:
            due = max(0.0, min(due, self._opened_at + s.batch_age_s - self.clock()))
        # a message holds one row (older enrich) up to records_topic.MESSAGE_ROWS: fetch about
        # what fills the batch, so batches stay near batch_rows rows
        room = max(s.batch_rows - self._pending, 1) / self._rows_per_message
        fetched = await self.consumer.getmany(timeout_ms=int(due * 1000),
                                              max_records=max(1, min(s.kafka_poll_records, int(room))))
        observe_lag(self.consumer, k.STAGE_STORE, fetched)
        started = time.perf_counter()
        poison: list[Poison] = []
        rows: list[tuple[TopicPartition, int, Kind | None, pa.Table | None]] = []
        for tp, records in fetched.items():
            for r in records:
                header = kind_of(r)
                kind = records_topic.BY_MESSAGE_KIND.get(header)
                if kind is None:
                    poison.append((r, k.DLQ_UNKNOWN_KIND, f"kind header {header!r}"))
                    rows.append((tp, r.offset, None, None))
                    continue
                try:
                    if header == kind.batch_kind:
                        data = records_topic.decode(kind, r.value or b"")
                    else:
                        data = records_topic.decode_record(kind, r.value or b"")
                except RecordsError as e:
                    poison.append((r, k.DLQ_UNDECODABLE, str(e)))
                    kind = data = None
                rows.append((tp, r.offset, kind, data))
        total = len(rows)
        if total:
            self.last_input = time.time()
            self._consumed.inc(total)
            self.first_at = self.first_at or started  # the busy time includes this decode
        self._caught_up = not total
        poison_guard(k.STAGE_STORE, len(poison), total, s.kafka_poison_ratio)
        await self.dead.send(poison)  # before any batch holding their offsets is committed
        added = 0
        for tp, offset, kind, data in rows:
            if not self._ranges:
                self._opened_at = self.clock()
            first = self._ranges.get(tp, (offset, 0))[0]
            self._ranges[tp] = (first, offset)
            if kind is not None:
                self._tables[kind].append(data)
                self._pending += data.num_rows
                added += data.num_rows
                if self._pending >= s.batch_rows:  # a fetch bigger than the batch: split it
                    await self._flush()
        if total:
            self._rows_per_message = max(1.0, added / total)
        if self._ranges and (self._pending >= s.batch_rows
                              or self.clock() - self._opened_at >= s.batch_age_s):
            await self._flush()
        return total

    async def run(self, stop: asyncio.Event, idle_exit: float | None = None) -> None:
        try:
            while not stop.is_set():
                await self.step()
                if (idle_exit is not None and self.idle
                        and time.time() - self.last_input >= idle_exit
                        and await group_lag(self.consumer, self.settings.kafka_records_topic) == 0):
                    self._log.info("store_idle", seconds=idle_exit)
                    return
        finally:
            await self._drain("stop")
            self._log.info("store_stopped", rows=self.rows, calls=self.calls,
                           busy_s=round(max(self.last_at - self.first_at, 0.0), 3))
