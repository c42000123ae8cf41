"""enrich as a Kafka client: raw topic -> call records and legs on the records topic.

Each partition is folded separately (:mod:`enrich.partition`); per partition it commits the first
offset of the oldest call still open, after the records it emitted were acknowledged. The raw
topic carries frames as AMI sent them (:class:`contracts.envelope.AmiFrames`): they are read
here, and a frame that cannot be read goes to the records topic as Quarantined, counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer

from contracts import kafka as k
from contracts import metrics
from contracts.config import Settings
from contracts.envelope import Envelope, envelope_decoder, frames_decoder
from contracts.errors import FrameError
from contracts.logs import LogOnce
from contracts.profile import PbxProfile
from contracts.records import CallRecord, Output, quarantined_decoder
from enrich.calls import CallBuilder
from enrich.events import Event, ignored_frame, read_events
from enrich.partition import PartitionEnricher
from ingest.framing import quarantined, read_frames
from kafkaio import records_topic
from kafkaio.client import (
    ConsumerRecord,
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
    send_until_acked,
)

log = structlog.get_logger("enrich.stage")


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
            Rebalance(self._on_revoked, self._on_assigned))
        self.producer = Producer(make_producer(settings), k.STAGE_ENRICH)
        self.dead = DeadLetters(self.producer, settings.kafka_dead_letter_topic, k.STAGE_ENRICH)
        self.emitted = 0
        self.events = 0
        self.last_input = clock()
        self._log = log.bind(stage=k.STAGE_ENRICH)
        self._once = LogOnce(self._log)
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
        await start_clients(s, [s.kafka_raw_topic, s.kafka_records_topic, s.kafka_dead_letter_topic],
                            self.producer, self.consumer)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._commit(set(self.parts))
        await stop_clients(self.consumer, self.producer)

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
        observe_lag(self.consumer, k.STAGE_ENRICH, fetched)
        async with self._lock:
            return await self._fold(fetched)

    async def _fold(self, fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> int:
        s = self.settings
        started = time.perf_counter()
        outputs: list[Output] = []
        poison: list[Poison] = []
        total = 0
        events = self.events
        for tp, records in fetched.items():
            pe = self.parts.get(tp)
            if pe is None:  # revoked while the fetch was in flight
                continue
            total += len(records)
            for r in records:
                kind = kind_of(r)
                try:
                    if kind == k.KIND_AMI:
                        problem = self._fold_frames(pe, r, outputs)
                        if problem:
                            poison.append((r, k.DLQ_UNDECODABLE, problem))
                        continue
                    if kind == k.KIND_ENVELOPE:
                        self.events += 1
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
            self.first_at = self.first_at or started  # the busy time includes this fold
        poison_guard(k.STAGE_ENRICH, len(poison), total, s.kafka_poison_ratio)
        now = self.clock()
        caught_up = True
        for tp, pe in self.parts.items():
            hw = self.consumer.highwater(tp)
            behind = hw is not None and pe.next_offset is not None and pe.next_offset < hw
            caught_up = caught_up and not behind
            outputs += pe.advance(None if behind else now)
        self._caught_up = caught_up and not total
        if outputs:
            await send_until_acked(self.producer, s.kafka_records_topic,
                                    records_topic.messages(outputs), self._log)
            self.emitted += len(outputs)
            self.last_at = time.perf_counter()
            calls = 0
            for o in outputs:
                if isinstance(o, CallRecord):
                    calls += 1
                    metrics.ENRICH_CALLS.labels(o.pbx_id, o.status).inc()
            self._log.info("records_emitted", records=len(outputs), calls=calls,
                           messages=total, events=self.events - events,
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

    def _fold_frames(self, pe: PartitionEnricher, r: ConsumerRecord[bytes, bytes],
                     outputs: list[Output]) -> str:
        """Fold a message of raw frames (KIND_AMI); returns what makes it poison, if anything."""
        batch = frames_decoder.decode(r.value or b"")
        self.events += len(batch.seqs)
        if not batch.seqs:
            pe.skip(r.offset)
            return "no frames"
        if not pe.accept(r.offset, batch.pbx_id, batch.epoch, batch.seqs[0]):
            return ""  # folded already: a produce round sent twice
        frames: Sequence[Event | Envelope] | None = read_events(batch, self.settings.max_frame_bytes)
        bad: list[tuple[int, FrameError]] = []
        if frames is None:  # not as Asterisk writes them: the general way, frame by frame
            try:
                envs, bad = read_frames(batch, self.settings.max_frame_bytes, ignored_frame)
            except ValueError as e:
                return str(e)
            frames = envs
        for seq, err in bad:  # unreadable: kept, counted, logged once per kind
            metrics.INGEST_QUARANTINED.labels(batch.pbx_id, err.reason).inc()
            self._once.warning(err.reason, "frame_quarantined", detail=err.detail,
                               raw_bytes=len(err.raw), pbx=batch.pbx_id, epoch=batch.epoch, seq=seq)
            outputs.append(quarantined(err, batch.pbx_id, batch.recv_time))
        outputs += pe.fold_frames(r.offset, k.split_key(r.key)[1], batch.pbx_id,
                                  batch.recv_time, frames)
        return ""

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


