"""ingest as a Kafka client: AMI frames (or a capture) -> the raw topic, keyed by PBX and Linkedid.

Frames stay the bytes received: they are split at blank lines and routed by their Linkedid,
never parsed (enrich does that). It never blocks the AMI reader: frames gather in the open round
(bounded), which becomes one message per call (:class:`ingest.routing.CallBatcher`) when the
previous round was acknowledged; when a round fails (Kafka unreachable) its messages go to the
local spool, which is drained, in order, before anything newer once Kafka answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from contracts import kafka as k
from contracts import metrics
from contracts.config import Settings
from contracts.records import Quarantined, record_encoder
from ingest.framing import AmiFramer, quarantined
from ingest.routing import CallBatcher
from ingest.spool import Spool
from kafkaio.client import KafkaError, Message, Producer, make_producer, start_clients

log = structlog.get_logger("ingest.stage")



class IngestStage:
    """AMI frames (or a capture) -> the raw topic, keyed by PBX and Linkedid, spooled when needed."""

    ROUND = 20_000  # messages per produce round
    CAPTURE_READ = 1 << 16  # bytes per read of a capture file, as a socket read might be

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        # a message stays well within a produce batch (kafka_max_batch_bytes)
        self.batcher = CallBatcher(settings.pbx_id,
                                   max_message_bytes=max(settings.kafka_max_batch_bytes // 4, 4096))
        self.queue: deque[Message] = deque()  # messages of closed rounds, and quarantined frames
        self.spool = Spool(Path(settings.kafka_spool_dir) / settings.pbx_id,
                           max_bytes=settings.kafka_spool_max_bytes)
        self.producer = Producer(make_producer(settings), k.STAGE_INGEST)
        self.topic = settings.kafka_raw_topic
        self.sent = 0
        self.last_input = clock()
        self._wake = asyncio.Event()
        self._taken = asyncio.Event()  # the pump took a round: a capture reader may go on
        self.on_kinds: Callable[[dict[bytes, int]], None] | None = None  # frames per event name
        self._stop = asyncio.Event()
        self._spooling = not self.spool.empty  # a spool left by the last run drains first
        self._log = log.bind(stage=k.STAGE_INGEST, pbx=settings.pbx_id)
        self._spool_gauge = metrics.INGEST_SPOOL_BYTES.labels(settings.pbx_id)
        self._dropped = metrics.INGEST_SPOOL_DROPPED.labels(settings.pbx_id)
        self._spool_sync: asyncio.Task[None] | None = None  # the spool's sync, running or the last
        if self.spool.cursor_recovered:  # a machine crash left the cursor unreadable
            metrics.INGEST_SPOOL_CURSOR_RECOVERIES.labels(settings.pbx_id).inc()
            self._log.warning("spool_cursor_recovered", resent_bytes=self.spool.bytes)
        self._epoch_base = int(clock() * 1000)
        self.busy_s = 0.0

    # called from the socket reader: cheap, never blocks
    def on_frames(self, epoch: int, seq0: int, frames: list[bytes], recv_time: float) -> None:
        """Raw frames numbered ``seq0``… of connection ``epoch``, read at ``recv_time``."""
        self.batcher.add(epoch, seq0, frames, recv_time)
        self._after_put()

    def on_quarantine(self, item: Quarantined) -> None:
        self.queue.append((k.call_key(item.pbx_id, ""), record_encoder.encode(item),
                           k.KIND_QUARANTINED, item.received_at))
        self._after_put()

    def _after_put(self) -> None:
        self.last_input = self.clock()
        if self.pending >= self.settings.queue_size:
            # Kafka is slower than the PBX: spill to disk rather than grow without bound
            self._to_spool(self._take_all())
            self._spooling = True
        if not self._wake.is_set():
            self._wake.set()

    @property
    def pending(self) -> int:
        """Frames (and quarantined ones) in memory, not sent yet."""
        return self.batcher.frames + len(self.queue)

    def _close_round(self) -> None:
        if self.batcher.frames:
            self.queue.extend(self.batcher.take())
        kinds, self.batcher.kinds = self.batcher.kinds, {}
        if kinds and self.on_kinds is not None:
            self.on_kinds(kinds)
        self._taken.set()

    def _take(self, n: int) -> list[Message]:
        self._close_round()
        q = self.queue
        if n >= len(q):
            items = list(q)
            q.clear()
            return items
        return [q.popleft() for _ in range(n)]

    def _take_all(self) -> list[Message]:
        return self._take(len(self.queue) + self.batcher.frames)

    def _to_spool(self, items: list[Message]) -> None:
        if not items:
            return
        refused = self.spool.append(items)
        self._sync_spool_soon()
        if refused:
            self._dropped.inc(refused)
            self._log.error("spool_full_frames_dropped", dropped=refused,
                            max_bytes=self.settings.kafka_spool_max_bytes)
        self._spool_gauge.set(self.spool.bytes)

    def _sync_spool_soon(self) -> None:
        """Have the spool synced within kafka_spool_fsync_s (a sync on its way covers this too)."""
        if self._spool_sync is not None:
            if not self._spool_sync.done():
                return
            self._spool_sync.result()  # a failed sync stops ingest, as a failed write does
        self._spool_sync = asyncio.create_task(self._sync_spool(), name="spool-sync")

    async def _sync_spool(self) -> None:
        # fdatasync can take long on a busy disk: in a thread, or the AMI reader would stall and
        # Asterisk drop it
        while self.spool.unsynced:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.kafka_spool_fsync_s)
            await asyncio.to_thread(self.spool.sync)

    @property
    def idle(self) -> bool:
        return not self.pending and self.spool.empty

    async def start(self) -> None:
        await start_clients(self.settings, [self.topic, self.settings.kafka_records_topic,
                                            self.settings.kafka_dead_letter_topic], self.producer)

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
            self._to_spool(self._take_all())
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
            self._sync_spool_soon()
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
        if self._spool_sync is not None:
            await self._spool_sync  # one sync at a time
        await asyncio.to_thread(self.spool.close)  # syncs what is left, off the event loop

    async def run_capture(self, paths: Sequence[Path]) -> int:
        """A raw AMI capture into the raw topic, as if it came from the PBX: one connection (an
        epoch) per file, frames numbered from 1. Returns the frames (quarantined ones too).

        A capture keeps no receive times: a read's is the last ``Timestamp`` header in it.
        """
        pump = asyncio.create_task(self.pump())
        n = 0
        epoch = self._epoch_base
        pbx = self.settings.pbx_id
        mark = self.settings.queue_size // 2  # a file reads faster than Kafka takes: stay below
        started = time.perf_counter()
        for path in paths:
            framer = AmiFramer(self.settings.max_frame_bytes)
            seq, recv = 1, 0.0
            with open(path, "rb") as f:  # noqa: ASYNC230  # a local file: 64 KiB reads do not stall
                while chunk := f.read(self.CAPTURE_READ):
                    frames, errors = framer.feed_raw(chunk)
                    recv = _last_timestamp(frames, recv)
                    for err in errors:
                        self.on_quarantine(quarantined(err, pbx, recv))
                    if frames:
                        self.on_frames(epoch, seq, frames, recv)
                        seq += len(frames)
                    n += len(frames) + len(errors)
                    while self.pending > mark and not self._spooling:
                        self._taken.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._taken.wait(), 0.05)
            for err in framer.close():  # a capture cut mid-frame
                self.on_quarantine(quarantined(err, pbx, recv))
                n += 1
            epoch += 1
        self.stop()
        await pump
        self.busy_s = time.perf_counter() - started
        return n

    async def run_ami(self, stop: asyncio.Event, idle_exit: float | None = None) -> None:
        """Read the PBX's AMI until ``stop`` (or idle for ``idle_exit`` s), frames to Kafka."""
        from ingest.ami import AmiListener

        listener = AmiListener(self.settings, None, self.on_quarantine, on_frames=self.on_frames,
                               clock=self.clock)
        self.on_kinds = listener.count_kinds
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


def _last_timestamp(frames: list[bytes], default: float) -> float:
    """The value of the last ``Timestamp`` header among ``frames``, else ``default``."""
    for frame in reversed(frames):
        at = frame.find(b"\r\nTimestamp: ")
        if at >= 0:
            at += 13
            try:
                return float(frame[at : frame.find(b"\r\n", at)])
            except ValueError:
                continue
    return default
