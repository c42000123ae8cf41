"""The three stages as Kafka clients: ingest (AMI -> raw topic), enrich (raw -> records topic),
store (records topic -> ClickHouse). Each commits only what its output already reflects.

* ingest never blocks the AMI reader: frames go to a bounded in-memory queue, and from there to
  Kafka in batched rounds; when a round fails (Kafka unreachable) they go to the local spool,
  which is drained, in order, before anything newer once Kafka answers again.
* enrich folds each partition separately (enrich.partition) and commits, per partition, the
  first offset of the oldest call still open, after the records it emitted were acknowledged.
* store inserts batches (size or age) with deduplication tokens named by their offset ranges,
  commits after ClickHouse acknowledged, and pauses fetching while ClickHouse is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

from contracts import kafka as k
from contracts import metrics
from contracts.config import Settings
from contracts.envelope import Envelope, envelope_decoder, envelope_encoder
from contracts.errors import PoisonBatch, StoreError
from contracts.profile import PbxProfile
from contracts.records import (
    CallLeg,
    CallRecord,
    Quarantined,
    call_leg_decoder,
    call_record_decoder,
    quarantined_decoder,
    record_encoder,
)
from enrich.calls import CallBuilder, Output
from enrich.partition import PartitionEnricher
from ingest.routing import CallRouter
from ingest.spool import Spool
from pbxpipe.kafka import (
    ConsumerRecord,
    DeadLetters,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
    ensure_topics,
    make_consumer,
    make_producer,
)

log = structlog.get_logger("pbxpipe.stages")

Poison = tuple[ConsumerRecord[bytes, bytes], str, str]

POISON_GUARD_MIN = 10
"""A batch must hold at least this many messages for the poison guard to stop a consumer."""


def _kind(record: ConsumerRecord[bytes, bytes]) -> bytes:
    for key, value in record.headers or ():
        if key == k.HEADER_KIND:
            return value
    return b""


def _guard(stage: str, poison: int, total: int, ratio: float) -> None:
    if total >= POISON_GUARD_MIN and poison > ratio * total:
        raise PoisonBatch(
            f"{stage}: {poison} of {total} fetched messages are poison (over "
            f"{ratio:.0%}): stopping rather than dead-lettering a whole topic; see the "
            "dead-letter topic and the producer"
        )


async def _send_until_acked(producer: Producer, topic: str, messages: list[Message],
                            logger: Any, max_delay_s: float = 5.0) -> None:
    """Send; while Kafka is unreachable retry with capped, jittered backoff. The caller commits
    nothing meanwhile, so a crash here replays instead of losing."""
    attempt = 0
    while True:
        try:
            await producer.send(topic, messages)
            return
        except (KafkaError, TimeoutError) as e:
            attempt += 1
            delay = min(max_delay_s, 0.1 * 2 ** attempt)
            logger.warning("produce_failed_retrying", topic=topic, messages=len(messages),
                           attempt=attempt, error=str(e) or type(e).__name__)
            await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))


async def group_lag(consumer: AIOKafkaConsumer, topic: str) -> int:
    """Messages of ``topic`` the whole group has not committed yet (every partition, not only
    ours: a dead member's partitions count until the group hands them over)."""
    parts = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in parts]
    if not tps:
        return 0
    ends = await consumer.end_offsets(tps)
    lag = 0
    for tp in tps:
        lag += max(0, ends[tp] - (await consumer.committed(tp) or 0))
    return lag


# ------------------------------------------------------------------------------------ ingest


class IngestStage:
    """AMI frames (or a capture) -> the raw topic, keyed by PBX and Linkedid, spooled when needed."""

    ROUND = 20_000  # messages per produce round

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.router = CallRouter()
        self.queue: deque[Message] = deque()
        self.spool = Spool(Path(settings.kafka_spool_dir) / settings.pbx_id,
                           max_bytes=settings.kafka_spool_max_bytes)
        self.producer = Producer(make_producer(settings), k.STAGE_INGEST)
        self.topic = settings.kafka_raw_topic
        self.sent = 0
        self.last_input = clock()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._spooling = not self.spool.empty  # a spool left by the last run drains first
        self._log = log.bind(stage=k.STAGE_INGEST, pbx=settings.pbx_id)
        self._spool_gauge = metrics.INGEST_SPOOL_BYTES.labels(settings.pbx_id)
        self._dropped = metrics.INGEST_SPOOL_DROPPED.labels(settings.pbx_id)
        self._epoch_base = int(clock() * 1000)
        self.busy_s = 0.0

    # called from the socket reader: cheap, never blocks
    def on_envelope(self, env: Envelope) -> None:
        key = k.call_key(env.pbx_id, self.router.linkedid(env.headers))
        self.queue.append((key, envelope_encoder.encode(env), k.KIND_ENVELOPE, env.recv_time))
        self._after_put()

    def on_quarantine(self, item: Quarantined) -> None:
        self.queue.append((k.call_key(item.pbx_id, ""), record_encoder.encode(item),
                           k.KIND_QUARANTINED, item.received_at))
        self._after_put()

    def _after_put(self) -> None:
        self.last_input = self.clock()
        if len(self.queue) >= self.settings.queue_size:
            # Kafka is slower than the PBX: spill to disk rather than grow without bound
            self._to_spool(self._take(len(self.queue)))
            self._spooling = True
        if not self._wake.is_set():
            self._wake.set()

    def _take(self, n: int) -> list[Message]:
        q = self.queue
        return [q.popleft() for _ in range(min(n, len(q)))]

    def _to_spool(self, items: list[Message]) -> None:
        if not items:
            return
        refused = self.spool.append(items)
        if refused:
            self._dropped.inc(refused)
            self._log.error("spool_full_frames_dropped", dropped=refused,
                            max_bytes=self.settings.kafka_spool_max_bytes)
        self._spool_gauge.set(self.spool.bytes)

    @property
    def idle(self) -> bool:
        return not self.queue and self.spool.empty

    async def start(self) -> None:
        await ensure_topics(self.settings, [self.topic, self.settings.kafka_records_topic,
                                            self.settings.kafka_dead_letter_topic])
        await self.producer.start()

    async def pump(self) -> None:
        """Move frames to Kafka until :meth:`stop`, then deliver (or spool) what is left."""
        backoff = 0.2
        while True:
            if self._stop.is_set() and self.idle:
                return
            if not self._spooling:
                items = self._take(self.ROUND)
                if not items:
                    if self._stop.is_set():
                        return
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), 0.05)
                    continue
                try:
                    await self._send(items)
                    self.sent += len(items)
                    self._log.debug("batch_produced", messages=len(items))
                except (KafkaError, TimeoutError) as e:
                    self._to_spool(items)
                    self._spooling = True
                    self._log.warning("kafka_unreachable_spooling", error=str(e) or type(e).__name__,
                                      spooled=len(items))
                continue
            # spooling: everything new goes behind the spool; the head goes to Kafka
            self._to_spool(self._take(len(self.queue)))
            head = self.spool.peek(self.ROUND)
            if not head:
                self._spooling = False
                continue
            try:
                await self._send(head)
            except (KafkaError, TimeoutError) as e:
                if self._stop.is_set():
                    self._log.warning("spool_left_for_next_run", bytes=self.spool.bytes)
                    return
                self._log.debug("spool_drain_failed", error=str(e) or type(e).__name__)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            self.spool.consume()
            self.sent += len(head)
            self._spool_gauge.set(self.spool.bytes)
            self._log.info("spool_drained", messages=len(head), left_bytes=self.spool.bytes)
            if self.spool.empty:
                self._spooling = False

    async def _send(self, items: list[Message]) -> None:
        # aiokafka retries a batch forever while the partition leader is known but unreachable:
        # past the deadline the frames go to the spool. Should the batch still land later, enrich
        # skips the second copy by its (epoch, seq).
        await asyncio.wait_for(self.producer.send(self.topic, items),
                               self.settings.kafka_request_timeout_s)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def close(self) -> None:
        await self.producer.stop()
        self.spool.close()

    async def run_capture(self, paths: Sequence[Path]) -> int:
        """A raw AMI capture into the raw topic, as if it came from the PBX; returns frames."""
        from ingest.capture import read_capture

        pump = asyncio.create_task(self.pump())
        n = 0
        epoch = self._epoch_base
        started = time.perf_counter()
        for path in paths:
            for item in read_capture(path, self.settings.pbx_id):
                n += 1
                if isinstance(item, Quarantined):
                    self.on_quarantine(item)
                else:
                    self.on_envelope(Envelope(item.pbx_id, epoch, item.seq, item.recv_time,
                                              item.headers))
                if n % 1000 == 0:  # a file reads faster than Kafka takes: keep below the spill mark
                    await asyncio.sleep(0)
                    while len(self.queue) > self.settings.queue_size // 2 and not self._spooling:
                        await asyncio.sleep(0.002)
            epoch += 1
        self.stop()
        await pump
        self.busy_s = time.perf_counter() - started
        return n

    async def run_ami(self, stop: asyncio.Event, idle_exit: float | None = None) -> None:
        """Read the PBX's AMI until ``stop`` (or idle for ``idle_exit`` s), frames to Kafka."""
        from ingest.ami import AmiListener

        listener = AmiListener(self.settings, self.on_envelope, self.on_quarantine,
                               clock=self.clock)
        listener.epoch = self._epoch_base  # (epoch, seq) never repeats across restarts
        reader = asyncio.create_task(listener.run(), name="ami-listener")
        pump = asyncio.create_task(self.pump(), name="ingest-pump")
        waiter = asyncio.create_task(stop.wait())
        try:
            while True:
                done, _ = await asyncio.wait({reader, pump, waiter}, timeout=0.2,
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done & {reader, pump}:
                    task.result()
                if waiter in done:
                    break
                if (idle_exit is not None and self.idle
                        and self.clock() - self.last_input >= idle_exit):
                    self._log.info("ingest_idle", seconds=idle_exit)
                    break
        finally:
            await listener.stop()
            reader.cancel()
            waiter.cancel()
            await asyncio.gather(reader, waiter, return_exceptions=True)
            self.stop()
            await pump


# ------------------------------------------------------------------------------------ enrich


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, on_revoked: Callable[[set[TopicPartition]], Any],
                 on_assigned: Callable[[set[TopicPartition]], Any]) -> None:
        self._revoked = on_revoked
        self._assigned = on_assigned

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._assigned(set(assigned))


def _output_message(o: Output) -> Message:
    if isinstance(o, CallRecord):
        return (k.call_key(o.pbx_id, o.linkedid), record_encoder.encode(o), k.KIND_CALL, o.end)
    if isinstance(o, CallLeg):
        return (k.call_key(o.pbx_id, o.linkedid), record_encoder.encode(o), k.KIND_LEG, o.end)
    return (k.call_key(o.pbx_id, ""), record_encoder.encode(o), k.KIND_QUARANTINED, o.received_at)


def _observe_lag(consumer: AIOKafkaConsumer, stage: str, fetched: dict[TopicPartition, list[Any]]) -> None:
    """Consumer lag per partition: the high watermark minus the next offset this fetch reached."""
    for tp, records in fetched.items():
        hw = consumer.highwater(tp)
        if records and hw is not None:
            metrics.KAFKA_CONSUMER_LAG.labels(stage, str(tp.partition)).set(
                max(hw - records[-1].offset - 1, 0))


class EnrichStage:
    """Raw topic -> call records and legs on the records topic, one consumer of a group."""

    def __init__(self, settings: Settings, profile: PbxProfile, *,
                 clock: Callable[[], float] = time.time,
                 rate: Callable[[CallRecord], CallRecord] | None = None) -> None:
        self.settings = settings
        self.profile = profile
        self.rate = rate  # the tariff's pure rating function, as in the in-process pipeline
        self.clock = clock
        self.parts: dict[TopicPartition, PartitionEnricher] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.consumer: AIOKafkaConsumer = make_consumer(
            settings, settings.kafka_raw_topic, settings.kafka_enrich_group,
            _Rebalance(self._on_revoked, self._on_assigned))
        self.producer = Producer(make_producer(settings), k.STAGE_ENRICH)
        self.dead = DeadLetters(self.producer, settings.kafka_dead_letter_topic, k.STAGE_ENRICH)
        self.emitted = 0
        self.events = 0
        self.last_input = clock()
        self._log = log.bind(stage=k.STAGE_ENRICH)
        self._consumed = metrics.KAFKA_CONSUMED.labels(k.STAGE_ENRICH)
        self._commits = metrics.KAFKA_COMMITS.labels(k.STAGE_ENRICH)
        self._caught_up = False
        self._lock = asyncio.Lock()  # a rebalance waits for the step in progress to commit
        self.first_at = 0.0  # perf_counter of the first message and of the last records sent
        self.last_at = 0.0

    def _builder(self, pbx_id: str) -> CallBuilder:
        return CallBuilder(self.profile, pbx_id=pbx_id, grace_s=self.settings.call_grace_s,
                           timeout_s=self.settings.call_timeout_s, rate=self.rate)

    async def start(self) -> None:
        s = self.settings
        await ensure_topics(s, [s.kafka_raw_topic, s.kafka_records_topic, s.kafka_dead_letter_topic])
        await self.producer.start()
        await self.consumer.start()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._commit(set(self.parts))
        await self.consumer.stop()
        await self.producer.stop()

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        # everything emitted is acknowledged at this point: commit, then forget the state
        async with self._lock:
            try:
                await self._commit(revoked & set(self.parts))
            except KafkaError as e:
                self._log.warning("commit_on_revoke_failed", error=str(e))
            for tp in revoked:
                self.parts.pop(tp, None)
                self.committed.pop(tp, None)
        self._log.info("partitions_revoked", partitions=sorted(tp.partition for tp in revoked))

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            self.parts[tp] = PartitionEnricher(self._builder)
        self._log.info("partitions_assigned", partitions=sorted(tp.partition for tp in assigned))

    async def _commit(self, tps: set[TopicPartition]) -> None:
        offsets = {}
        for tp in tps:
            pe = self.parts.get(tp)
            if pe is None:
                continue
            at = pe.commit_offset()
            if at is not None and at != self.committed.get(tp):
                offsets[tp] = at
        if offsets:
            await self.consumer.commit(offsets)
            self.committed.update(offsets)
            self._commits.inc()

    @property
    def open_calls(self) -> int:
        return sum(pe.open_calls for pe in self.parts.values())

    @property
    def idle(self) -> bool:
        return self._caught_up and self.open_calls == 0

    async def step(self) -> int:
        """One fetch: fold, emit, wait for the acknowledgements, commit. Returns messages taken."""
        s = self.settings
        fetched = await self.consumer.getmany(timeout_ms=100, max_records=s.kafka_poll_records)
        _observe_lag(self.consumer, k.STAGE_ENRICH, fetched)
        async with self._lock:
            return await self._fold(fetched)

    async def _fold(self, fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> int:
        s = self.settings
        outputs: list[Output] = []
        poison: list[Poison] = []
        total = 0
        for tp, records in fetched.items():
            pe = self.parts.get(tp)
            if pe is None:  # revoked while the fetch was in flight
                continue
            total += len(records)
            for r in records:
                kind = _kind(r)
                try:
                    if kind == k.KIND_ENVELOPE:
                        env = envelope_decoder.decode(r.value or b"")
                        outputs += pe.feed(r.offset, k.split_key(r.key)[1], env)
                        continue
                    if kind == k.KIND_QUARANTINED:
                        outputs.append(quarantined_decoder.decode(r.value or b""))
                    else:
                        poison.append((r, k.DLQ_UNKNOWN_KIND, f"kind header {kind!r}"))
                except (msgspec.DecodeError, msgspec.ValidationError) as e:
                    poison.append((r, k.DLQ_UNDECODABLE, str(e)))
                pe.skip(r.offset)
        if total:
            self.last_input = self.clock()
            self._consumed.inc(total)
            self.events += total
            self.first_at = self.first_at or time.perf_counter()
        _guard(k.STAGE_ENRICH, len(poison), total, s.kafka_poison_ratio)
        now = self.clock()
        caught_up = True
        for tp, pe in self.parts.items():
            hw = self.consumer.highwater(tp)
            behind = hw is not None and pe.next_offset is not None and pe.next_offset < hw
            caught_up = caught_up and not behind
            outputs += pe.advance(None if behind else now)
        self._caught_up = caught_up and not total
        if outputs:
            await _send_until_acked(self.producer, s.kafka_records_topic,
                                    [_output_message(o) for o in outputs], self._log)
            self.emitted += len(outputs)
            self.last_at = time.perf_counter()
            calls = 0
            for o in outputs:
                if isinstance(o, CallRecord):
                    calls += 1
                    metrics.ENRICH_CALLS.labels(o.pbx_id, o.status).inc()
            self._log.info("records_emitted", records=len(outputs), calls=calls, events=total,
                           open_calls=self.open_calls)
        await self.dead.send(poison)
        try:
            await self._commit(set(self.parts))
        except KafkaError as e:  # a rebalance under way: its revoke commits, or the next owner replays
            self._log.warning("commit_failed", error=str(e) or type(e).__name__)
        for pe in self.parts.values():
            for pbx, b in pe.builders.items():
                metrics.ENRICH_OPEN_CALLS.labels(pbx).set(b.open_calls)
        return total

    async def run(self, stop: asyncio.Event, idle_exit: float | None = None) -> None:
        try:
            while not stop.is_set():
                await self.step()
                if (idle_exit is not None and self.idle
                        and self.clock() - self.last_input >= idle_exit
                        and await group_lag(self.consumer, self.settings.kafka_raw_topic) == 0):
                    self._log.info("enrich_idle", seconds=idle_exit)
                    return
        finally:
            self._log.info("enrich_stopped", events=self.events, records=self.emitted,
                           busy_s=round(max(self.last_at - self.first_at, 0.0), 3))


# ------------------------------------------------------------------------------------ store


_DECODERS: dict[bytes, tuple[str, Any]] = {
    k.KIND_CALL: ("calls", call_record_decoder),
    k.KIND_LEG: ("call_legs", call_leg_decoder),
    k.KIND_QUARANTINED: ("quarantine", quarantined_decoder),
}


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
            _Rebalance(self._on_revoked, self._on_assigned))
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
        _observe_lag(self.consumer, k.STAGE_STORE, fetched)
        poison: list[Poison] = []
        total = 0
        for tp, records in fetched.items():
            if not records:
                continue
            total += len(records)
            for r in records:
                entry = _DECODERS.get(_kind(r))
                if entry is None:
                    poison.append((r, k.DLQ_UNKNOWN_KIND, f"kind header {_kind(r)!r}"))
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
        _guard(k.STAGE_STORE, len(poison), total, s.kafka_poison_ratio)
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
