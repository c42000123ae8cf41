"""The stages wired in one process: AMI (or a capture) -> enrich -> ClickHouse.

Bounded in-process queues stand between the stages; Kafka takes their place when the stages
run as separate processes. Every output of the core goes through one ``Sink`` (store/sink.py)
that batches per table on size or age and inserts with a deduplication token derived from the
batch's content, so a replay of the same events leaves the same rows.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

import structlog

from contracts import metrics
from contracts.config import Settings
from contracts.envelope import Envelope
from contracts.logs import LogOnce
from contracts.profile import PbxProfile
from contracts.records import CallLeg, CallRecord, Output, Quarantined
from enrich.calls import CallBuilder
from enrich.rating import RatingStage, rating_stage
from ingest.capture import read_capture
from retention.sync import recordings_sync
from store.clickhouse import ClickHouseStore
from store.sink import RecordHook, Sink
from store.tariffs import publish

log = structlog.get_logger("pbxpipe.pipeline")

def open_store(settings: Settings) -> ClickHouseStore:
    store = ClickHouseStore.connect(settings.clickhouse_dsn)
    store.migrate()
    return store


def load_rating(settings: Settings, profile: PbxProfile,
                store: ClickHouseStore) -> RatingStage | None:
    """The tariff stage of the settings (None when tariffs are off), its price list loaded into
    ClickHouse for dashboards to join."""
    rating = rating_stage(settings, profile)
    if rating is not None:
        publish(store, rating.tariff)
    return rating


def new_builder(settings: Settings, profile: PbxProfile,
                rating: RatingStage | None = None) -> CallBuilder:
    return CallBuilder(profile, pbx_id=settings.pbx_id, grace_s=settings.call_grace_s,
                       timeout_s=settings.call_timeout_s,
                       recording_patterns=settings.recordings_userfield_patterns.split(),
                       rate=rating.rate if rating else None)


def replay(paths: Iterable[Path], settings: Settings, profile: PbxProfile,
           store: ClickHouseStore | None = None) -> dict[str, int]:
    """Feed raw AMI captures through the same core and sink; returns counts."""
    store = store or open_store(settings)
    rating = load_rating(settings, profile, store)  # tariffs: cost of outbound calls
    sink = Sink(store, settings, rating=rating)
    builder = new_builder(settings, profile, rating)
    counts = {"frames": 0, "calls": 0, "legs": 0, "quarantined": 0}
    first_start = float("inf")

    def take(outputs: list[Output]) -> None:
        nonlocal first_start
        for o in outputs:
            if isinstance(o, CallRecord):
                first_start = min(first_start, o.start)
            counts["calls" if isinstance(o, CallRecord) else
                   "legs" if isinstance(o, CallLeg) else "quarantined"] += 1
            sink.add(o)

    for path in paths:
        for item in read_capture(path, settings.pbx_id):
            counts["frames"] += 1
            if isinstance(item, Quarantined):
                take([item])
                continue
            take(builder.feed(item))
            take(builder.advance(item.recv_time))
            sink.write_all(sink.ready())
    take(builder.flush())
    sink.write_all(sink.ready(flush=True))
    # recordings: the same pass as `pbxpipe recordings sync`, over the replayed calls' time range
    recordings = recordings_sync(settings, store)
    if recordings and counts["calls"]:
        recordings.settle(since=first_start)
    for reason, n in builder.rejected.items():
        metrics.ENRICH_REJECTED.labels(settings.pbx_id, reason).inc(n)
    return counts


class LivePipeline:
    """AMI listener -> bounded queue -> call builder -> sink, in one asyncio process."""

    def __init__(self, settings: Settings, profile: PbxProfile, store: ClickHouseStore,
                 *, on_record: RecordHook | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        from ingest.ami import AmiListener  # panoramisk is only needed for live AMI

        self.settings = settings
        self.clock = clock
        rating = load_rating(settings, profile, store)  # tariffs: cost of outbound calls
        self.builder = new_builder(settings, profile, rating)
        self.sink = Sink(store, settings, on_record=on_record, rating=rating)
        self.queue: asyncio.Queue[Envelope | Quarantined] = asyncio.Queue(settings.queue_size)
        self._overflow: deque[Envelope | Quarantined] = deque()
        self._warn = LogOnce(log)
        self.last_event = clock()
        self.listener = AmiListener(settings, self._on_input, self._on_input)

    def _on_input(self, item: Envelope | Quarantined) -> None:
        # Reading AMI must never block: Asterisk drops a manager client that stalls.
        # A full queue spills to memory (logged once) until the next stage catches up.
        if self._overflow:
            self._overflow.append(item)
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self._overflow.append(item)
            self._warn.warning("queue_full", "queue_overflowed", size=self.queue.maxsize)

    def _drain_overflow(self) -> None:
        while self._overflow and not self.queue.full():
            self.queue.put_nowait(self._overflow.popleft())

    async def _process(self, idle_exit: float | None, stop: asyncio.Event) -> None:
        pbx = self.settings.pbx_id
        while not stop.is_set():
            try:
                first = await asyncio.wait_for(self.queue.get(), timeout=0.1)
                items = [first]
                while len(items) < 1000 and not self.queue.empty():
                    items.append(self.queue.get_nowait())
            except TimeoutError:
                items = []
            self._drain_overflow()
            now = self.clock()
            for item in items:
                self.last_event = now
                if isinstance(item, Quarantined):
                    self.sink.add(item)
                else:
                    for o in self.builder.feed(item):
                        self.sink.add(o)
            for o in self.builder.advance(now):
                self.sink.add(o)
            metrics.ENRICH_OPEN_CALLS.labels(pbx).set(self.builder.open_calls)
            batches = self.sink.ready()
            if batches:
                await asyncio.to_thread(self.sink.write_all, batches)
            if (idle_exit is not None and self.builder.open_calls == 0 and not items
                    and now - self.last_event >= idle_exit):
                log.info("pipeline_idle", seconds=idle_exit)
                return

    async def run(self, *, idle_exit: float | None = None,
                  stop: asyncio.Event | None = None) -> None:
        """Stream until ``stop`` is set, or until idle for ``idle_exit`` seconds."""
        stop = stop or asyncio.Event()
        listener = asyncio.create_task(self.listener.run(), name="ami-listener")
        processor = asyncio.create_task(self._process(idle_exit, stop), name="enrich")
        try:
            done, _ = await asyncio.wait({listener, processor}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # an AMI auth/connect failure surfaces here
        finally:
            await self.listener.stop()
            listener.cancel()
            processor.cancel()
            await asyncio.gather(listener, processor, return_exceptions=True)
            self._drain_overflow()
            while not self.queue.empty():
                item = self.queue.get_nowait()
                for o in ([item] if isinstance(item, Quarantined) else self.builder.feed(item)):
                    self.sink.add(o)
            for o in self.builder.flush():
                self.sink.add(o)
            await asyncio.to_thread(self.sink.write_all, self.sink.ready(flush=True))
            for reason, n in self.builder.rejected.items():
                metrics.ENRICH_REJECTED.labels(self.settings.pbx_id, reason).inc(n)
