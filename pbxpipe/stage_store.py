"""store as a Kafka client: records topic -> ClickHouse.

Batches close on size or age; each insert carries deduplication tokens named by its offset
ranges; offsets are committed after ClickHouse acknowledged; fetching pauses while ClickHouse is
down, and nothing is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

import msgspec
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
from pbxpipe.stages import (
    Poison,
    Rebalance,
    group_lag,
    kind_of,
    observe_lag,
    poison_guard,
)

log = structlog.get_logger("pbxpipe.stage_store")


class StoreStage:
    """Records topic -> ClickHouse: batches by size or age, commit after the insert is acknowledged."""

    def __init__(self, settings: Settings, store: Any, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_written: Callable[[str, list[Any]], None] | None = None) -> None:
        self.settings = settings
        self.store = store  # ClickHouseStore or anything with write_calls/write_legs/write_quarantine
        self.clock = clock
        self.on_written = on_written
        self.consumer: AIOKafkaConsumer = make_consumer(
            settings, settings.kafka_records_topic, settings.kafka_store_group,
            Rebalance(self._on_revoked, self._on_assigned))
        self.producer = Producer(make_producer(settings), k.STAGE_STORE)
        self.dead = DeadLetters(self.producer, settings.kafka_dead_letter_topic, k.STAGE_STORE)
        self.rows = 0
        self.last_input = time.time()
        self._tables: dict[str, list[Any]] = {"calls": [], "call_legs": [], "quarantine": []}
        self._ranges: dict[TopicPartition, tuple[int, int]] = {}  # first, last offset pending
        self._pending = 0
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
        await ensure_topics(s, [s.kafka_records_topic, s.kafka_dead_letter_topic])
        await self.producer.start()
        await self.consumer.start()

    async def close(self) -> None:
        await self.consumer.stop()
        await self.producer.stop()

    @property
    def idle(self) -> bool:
        return self._caught_up and not self._pending

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        if self._pending and not self._flushing:
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

    def _write(self, table: str, rows: list[Any], token: str) -> None:
        if table == "calls":
            self.store.write_calls(rows, token)
        elif table == "call_legs":
            self.store.write_legs(rows, token)
        else:
            self.store.write_quarantine(rows, token)

    async def _flush(self, *, retry: bool = True) -> None:
        """Insert the pending batch (every table), then commit its offsets. While ClickHouse is
        down: stop fetching, back off (capped, jittered), try again; nothing is dropped."""
        attempt = 0
        paused = False
        started = time.perf_counter()
        self._flushing = True
        try:
            while True:
                try:
                    for table, rows in self._tables.items():
                        if rows:
                            await asyncio.to_thread(self._write, table, rows, self._token(table))
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
        if self.on_written:
            for table, rows in self._tables.items():
                if rows:
                    self.on_written(table, rows)
        offsets = {tp: last + 1 for tp, (_, last) in self._ranges.items()}
        try:
            await self.consumer.commit(offsets)
            self._commits.inc()
        except KafkaError as e:  # rebalanced meanwhile: the next owner inserts again (deduplicated)
            self._log.warning("commit_failed", error=str(e) or type(e).__name__)
        self.rows += self._pending
        self.calls += len(self._tables["calls"])
        self.last_at = time.perf_counter()
        self._log.info("batch_flushed", rows=self._pending,
                       calls=len(self._tables["calls"]), legs=len(self._tables["call_legs"]),
                       seconds=round(time.perf_counter() - started, 3), attempts=attempt + 1)
        self._drop_pending()

    async def step(self) -> int:
        s = self.settings
        due = 0.1
        if self._pending:
            due = max(0.0, min(due, self._opened_at + s.batch_age_s - self.clock()))
        fetched = await self.consumer.getmany(timeout_ms=int(due * 1000),
                                              max_records=s.kafka_poll_records)
        observe_lag(self.consumer, k.STAGE_STORE, fetched)
        poison: list[Poison] = []
        total = 0
        for tp, records in fetched.items():
            if not records:
                continue
            total += len(records)
            for r in records:
                entry = records_topic.DECODERS.get(kind_of(r))
                if entry is None:
                    poison.append((r, k.DLQ_UNKNOWN_KIND, f"kind header {kind_of(r)!r}"))
                    continue
                try:
                    self._tables[entry[0]].append(entry[1].decode(r.value or b""))
                except (msgspec.DecodeError, msgspec.ValidationError) as e:
                    poison.append((r, k.DLQ_UNDECODABLE, str(e)))
            first = self._ranges.get(tp, (records[0].offset, 0))[0]
            self._ranges[tp] = (first, records[-1].offset)
            if not self._pending:
                self._opened_at = self.clock()
            self._pending += len(records)
        if total:
            self.last_input = time.time()
            self._consumed.inc(total)
            self.first_at = self.first_at or time.perf_counter()
        self._caught_up = not total
        poison_guard(k.STAGE_STORE, len(poison), total, s.kafka_poison_ratio)
        await self.dead.send(poison)
        if self._pending and (self._pending >= s.batch_rows
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
            if self._pending:
                with contextlib.suppress(StoreError, KafkaError):
                    await self._flush(retry=False)
            self._log.info("store_stopped", rows=self.rows, calls=self.calls,
                           busy_s=round(max(self.last_at - self.first_at, 0.0), 3))
