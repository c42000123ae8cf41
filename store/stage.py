"""store as a Kafka client: records topic -> ClickHouse.

Each message is a batch of rows as Arrow (kafkaio.records_topic), checked against its schema and
inserted as Arrow columns, never one Python object per row. Batches close on size (rows) or age;
each insert carries deduplication tokens named by its offset ranges; offsets are committed after
ClickHouse acknowledged; fetching pauses while ClickHouse is down, and nothing is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import structlog
from aiokafka import AIOKafkaConsumer

from contracts import kafka as k
from contracts import metrics
from contracts.config import Settings
from contracts.errors import StoreError
from kafkaio import records_topic
from kafkaio.client import (
    DeadLetters,
    KafkaError,
    Producer,
    TopicPartition,
    make_consumer,
    make_producer,
    start_clients,
    stop_clients,
)
from kafkaio.consume import (
    Poison,
    Rebalance,
    group_lag,
    kind_of,
    observe_lag,
    poison_guard,
)
from kafkaio.records_topic import Kind, RecordsError
from store import schema

log = structlog.get_logger("store.stage")

_TABLES = {t.name: t for t in schema.TABLES}


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
        self._rows_per_message = 1.0  # in the last fetch
        self._opened_at = 0.0
        self._caught_up = False
        self._flushing = False
        self.calls = 0
        self.first_at = 0.0  # perf_counter of the first message and of the last insert
        self.last_at = 0.0
        self._log = log.bind(stage=k.STAGE_STORE)
        self._consumed = metrics.KAFKA_CONSUMED.labels(k.STAGE_STORE)
        self._commits = metrics.KAFKA_COMMITS.labels(k.STAGE_STORE)

    async def start(self) -> None:
        s = self.settings
        await start_clients(s, [s.kafka_records_topic, s.kafka_dead_letter_topic],
                            self.producer, self.consumer)

    async def close(self) -> None:
        await stop_clients(self.consumer, self.producer)

    @property
    def idle(self) -> bool:
        return self._caught_up and not self._ranges

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        if self._ranges and not self._flushing:
            try:
                await self._flush(retry=False)
            except (StoreError, KafkaError) as e:
                # not committed: the partitions' next owner inserts them again (same tokens)
                self._log.warning("batch_abandoned_on_revoke", rows=self._pending, error=str(e))
                self._drop_pending()
        self._log.info("partitions_revoked", partitions=sorted(tp.partition for tp in revoked))

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._log.info("partitions_assigned", partitions=sorted(tp.partition for tp in assigned))

    def _drop_pending(self) -> None:
        for rows in self._tables.values():
            rows.clear()
        self._ranges.clear()
        self._pending = 0

    def _token(self, table: str) -> str:
        ranges = ",".join(f"{tp.topic}/{tp.partition}/{a}-{b}"
                          for tp, (a, b) in sorted(self._ranges.items(),
                                                   key=lambda x: (x[0].topic, x[0].partition)))
        return f"{table}:{ranges}"

    def _write(self, kind: Kind, data: pa.Table, token: str) -> None:
        if kind is records_topic.QUARANTINE:  # rare, and its rows need an id: computed per item
            self.store.write_quarantine(records_topic.records(kind, data), token)
        else:  # one chunk, not one per message: ClickHouse parses one record batch (~15% less)
            self.store.write_arrow(_TABLES[kind.table], data.combine_chunks(), token)

    async def _flush(self, *, retry: bool = True) -> None:
        """Insert the pending batch (every table), then commit its offsets. While ClickHouse is
        down: stop fetching, back off (capped, jittered), try again; nothing is dropped."""
        attempt = 0
        paused = False
        started = time.perf_counter()
        self._flushing = True
        batch = {kind: pa.concat_tables(tables) for kind, tables in self._tables.items() if tables}
        try:
            while True:
                try:
                    insert_started = time.perf_counter()
                    for kind, data in batch.items():
                        await asyncio.to_thread(self._write, kind, data, self._token(kind.table))
                    inserted = time.perf_counter() - insert_started
                    break
                except StoreError as e:
                    if not retry:
                        raise
                    attempt += 1
                    if not paused:
                        self.consumer.pause(*self.consumer.assignment())
                        metrics.STORE_PAUSED.set(1)
                        paused = True
                    delay = min(self.settings.kafka_backoff_max_s, 0.2 * 2 ** attempt)
                    delay = delay / 2 + random.uniform(0, delay / 2)
                    self._log.warning("insert_failed_fetch_paused", attempt=attempt,
                                      delay_s=round(delay, 2), rows=self._pending, error=str(e))
                    # keep polling (nothing comes, partitions paused): the group keeps us
                    await self.consumer.getmany(timeout_ms=int(delay * 1000))
        finally:
            self._flushing = False
            if paused:
                self.consumer.resume(*self.consumer.assignment())
                metrics.STORE_PAUSED.set(0)
        calls = batch.get(records_topic.CALLS)
        if calls is not None:
            metrics.observe_many(metrics.STORE_CALL_LATENCY,
                                 time.time() - calls.column("end").to_numpy())
        if self.on_written:
            for kind, data in batch.items():
                self.on_written(kind.table, data)
        offsets = {tp: last + 1 for tp, (_, last) in self._ranges.items()}
        try:
            await self.consumer.commit(offsets)
            self._commits.inc()
        except KafkaError as e:  # rebalanced meanwhile: the next owner inserts again (deduplicated)
            self._log.warning("commit_failed", error=str(e) or type(e).__name__)
        n_calls = 0 if calls is None else calls.num_rows
        legs = batch.get(records_topic.LEGS)
        self.rows += self._pending
        self.calls += n_calls
        self.last_at = time.perf_counter()
        self._log.info("batch_flushed", rows=self._pending, calls=n_calls,
                       legs=0 if legs is None else legs.num_rows,
                       seconds=round(time.perf_counter() - started, 3),
                       insert_s=round(inserted, 3), attempts=attempt + 1)
        self._drop_pending()

    async def step(self) -> int:
        s = self.settings
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
        decoded: list[tuple[TopicPartition, int, Kind | None, pa.Table | None]] = []
        total = rows = 0
        for tp, records in fetched.items():
            total += len(records)
            for r in records:
                header = kind_of(r)
                kind = records_topic.BY_MESSAGE_KIND.get(header)
                data = None
                if kind is None:
                    poison.append((r, k.DLQ_UNKNOWN_KIND, f"kind header {header!r}"))
                else:
                    try:
                        if header == kind.batch_kind:
                            data = records_topic.decode(kind, r.value or b"")
                        else:
                            data = records_topic.decode_record(kind, r.value or b"")
                        rows += data.num_rows
                    except RecordsError as e:
                        poison.append((r, k.DLQ_UNDECODABLE, str(e)))
                decoded.append((tp, r.offset, kind, data))  # poison too: its offset is committed
        if total:
            self._rows_per_message = max(1.0, rows / total)
            self.last_input = time.time()
            self._consumed.inc(total)
            self.first_at = self.first_at or started  # the busy time includes this decode
        self._caught_up = not total
        poison_guard(k.STAGE_STORE, len(poison), total, s.kafka_poison_ratio)
        await self.dead.send(poison)  # before any commit that covers them
        for tp, offset, kind, data in decoded:
            if not self._ranges:
                self._opened_at = self.clock()
            self._ranges[tp] = (self._ranges.get(tp, (offset, 0))[0], offset)
            if kind is not None and data is not None:
                self._tables[kind].append(data)
                self._pending += data.num_rows
                if self._pending >= s.batch_rows:  # a fetch larger than a batch: split
                    await self._flush()
        if self._ranges and self.clock() - self._opened_at >= s.batch_age_s:
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
            if self._ranges:
                with contextlib.suppress(StoreError, KafkaError):
                    await self._flush(retry=False)
            self._log.info("store_stopped", rows=self.rows, calls=self.calls,
                           busy_s=round(max(self.last_at - self.first_at, 0.0), 3))
