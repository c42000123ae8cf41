"""One partition of the raw-events topic folded into calls, with the offset that is safe to commit.

Pure: offsets and the time come in as data. A partition holds the calls of several PBXs (one
:class:`CallBuilder` each). The safe commit point is the first offset of the oldest call still
open, so a restart from it replays every open call from its first event and rebuilds its state;
calls already emitted are re-emitted with the same ids, which the store collapses.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence

from contracts.envelope import Envelope
from contracts.records import Output
from enrich.calls import CallBuilder
from enrich.events import Event


class _Opened:
    """The calls one builder opened in this partition, in offset order, each with the offset of
    its first event; a call stays until it was emitted and every call before it too.

    Two flat arrays and a head, not a queue of tuples: this is held per open call.
    """

    __slots__ = ("builder", "head", "linkedids", "offsets")

    def __init__(self, builder: CallBuilder) -> None:
        self.builder = builder
        self.offsets = array("q")
        self.linkedids: list[str] = []  # the message key's string, which the builder shares
        self.head = 0  # entries before it were emitted

    def add(self, offset: int, linkedid: str) -> None:
        self.offsets.append(offset)
        self.linkedids.append(linkedid)

    def oldest(self) -> int | None:
        """The first offset of the oldest call still open, None when none is."""
        head, linkedids, is_open = self.head, self.linkedids, self.builder.is_open
        while head < len(linkedids) and not is_open(linkedids[head]):
            head += 1
        if head >= 1024 and 2 * head >= len(linkedids):  # drop what was emitted, amortized
            del self.offsets[:head], linkedids[:head]
            head = 0
        self.head = head
        return self.offsets[head] if head < len(linkedids) else None


class PartitionEnricher:
    """Folds one partition's envelopes, in offset order, into call records and legs."""

    def __init__(self, make_builder: Callable[[str], CallBuilder]) -> None:
        self._make_builder = make_builder
        self.builders: dict[str, CallBuilder] = {}
        self._opened: dict[str, _Opened] = {}  # pbx_id -> the calls its builder opened here
        self._last_seq: dict[str, tuple[int, int]] = {}  # pbx_id -> (epoch, seq) last taken
        self.next_offset: int | None = None  # one past the last offset taken in
        self.stream_time = 0.0  # latest receive time seen: the clock of a backlog
        self.duplicates = 0

    def builder(self, pbx_id: str) -> CallBuilder:
        b = self.builders.get(pbx_id)
        if b is None:
            b = self.builders[pbx_id] = self._make_builder(pbx_id)
            self._opened[pbx_id] = _Opened(b)
        return b

    def feed(self, offset: int, linkedid: str, env: Envelope) -> list[Output]:
        """Fold the envelope at ``offset`` (a message of one frame) whose key names ``linkedid``."""
        if not self.accept(offset, env.pbx_id, env.epoch, env.seq):
            return []
        return self.fold(offset, linkedid, env)

    def accept(self, offset: int, pbx_id: str, epoch: int, seq: int) -> bool:
        """Take the message at ``offset``, whose first frame is ``(epoch, seq)`` of ``pbx_id``:
        False when it was taken already.

        Along a partition, ingest's messages grow in (epoch, first seq) — its epochs grow across
        restarts too — so one that does not was folded already: a produce round sent again
        (after a timeout, from the spool) brings the same messages back.
        """
        self.next_offset = offset + 1
        mark = (epoch, seq)
        last = self._last_seq.get(pbx_id)
        if last is not None and mark <= last:
            self.duplicates += 1
            return False
        self._last_seq[pbx_id] = mark
        return True

    def fold(self, offset: int, linkedid: str, env: Envelope) -> list[Output]:
        """Fold one frame of the message at ``offset`` (see :meth:`accept`)."""
        self.stream_time = max(self.stream_time, env.recv_time)
        b = self.builder(env.pbx_id)
        held = not linkedid or b.is_open(linkedid)
        out = b.feed(env, linkedid)
        if not held and b.is_open(linkedid):
            self._opened[env.pbx_id].add(offset, linkedid)
        return out

    def fold_frames(self, offset: int, linkedid: str, pbx_id: str, recv_time: float,
                    frames: Sequence[Event | Envelope]) -> list[Output]:
        """Fold the frames of the message at ``offset`` (one call's, see :meth:`accept`), all
        received by ``recv_time``: decoded already (``enrich.events.read_events``), or as
        envelopes."""
        b = self.builder(pbx_id)
        held = not linkedid or b.is_open(linkedid)
        feed, fold = b.feed, b.fold
        out: list[Output] = []
        for frame in frames:
            out += fold(frame, linkedid) if isinstance(frame, Event) else feed(frame, linkedid)
        self.stream_time = max(self.stream_time, recv_time)
        if not held and b.is_open(linkedid):
            self._opened[pbx_id].add(offset, linkedid)
        return out

    def skip(self, offset: int) -> None:
        """An offset that carries nothing to fold (dead-lettered, passed through)."""
        self.next_offset = offset + 1

    def advance(self, wall_now: float | None = None) -> list[Output]:
        """Emit the calls due: by the stream's own time, or by ``wall_now`` once caught up.

        While a backlog is read, the stream time decides, so the same events give the same
        records however they were batched; ``wall_now`` closes calls once nothing more is coming.
        """
        now = self.stream_time if wall_now is None else max(self.stream_time, wall_now)
        out: list[Output] = []
        for b in self.builders.values():
            out += b.advance(now)
        return out

    @property
    def open_calls(self) -> int:
        return sum(b.open_calls for b in self.builders.values())

    def commit_offset(self) -> int | None:
        """The offset to commit: every message before it is reflected in emitted output."""
        oldest = [o for opened in self._opened.values() if (o := opened.oldest()) is not None]
        if not oldest:
            return self.next_offset
        offset = min(oldest)
        return offset if self.next_offset is None else min(offset, self.next_offset)


def fold_to_end(frames: Iterable[tuple[int, int, str, Envelope]],
                make_builder: Callable[[str], CallBuilder]) -> Iterator[Output]:
    """A bounded stream of frames — ``(partition, offset, key's linkedid, envelope)``, each
    partition in offset order, the frames of one message (offset) together; a capture is one
    partition of one-frame messages — folded as enrich folds the topic: per partition, messages
    sent twice dropped, calls emitted by the partition's own stream time; at the end every call
    still open is emitted (incomplete if a channel never hung up). ``pbxpipe rederive`` derives
    stored calls again with it."""
    parts: dict[int, PartitionEnricher] = {}
    message: dict[int, tuple[int, bool]] = {}  # partition -> (offset, taken) of its message
    for partition, offset, linkedid, env in frames:
        pe = parts.get(partition)
        if pe is None:
            pe = parts[partition] = PartitionEnricher(make_builder)
        at = message.get(partition)
        if at is None or at[0] != offset:  # a message's first frame decides for all of it
            yield from pe.advance()  # once the message before it is folded whole
            at = message[partition] = (offset, pe.accept(offset, env.pbx_id, env.epoch, env.seq))
        if at[1]:
            yield from pe.fold(offset, linkedid, env)
    for pe in parts.values():
        for b in pe.builders.values():
            yield from b.flush()
