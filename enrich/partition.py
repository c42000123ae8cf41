"""One partition of the raw-events topic folded into calls, with the offset that is safe to commit.

Pure: offsets and the time come in as data. A partition holds the calls of several PBXs (one
:class:`CallBuilder` each). The safe commit point is the first offset of the oldest call still
open, so a restart from it replays every open call from its first event and rebuilds its state;
calls already emitted are re-emitted with the same ids, which the store collapses.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from contracts.envelope import Envelope
from enrich.calls import CallBuilder, Output


class PartitionEnricher:
    """Folds one partition's envelopes, in offset order, into call records and legs."""

    def __init__(self, make_builder: Callable[[str], CallBuilder]) -> None:
        self._make_builder = make_builder
        self.builders: dict[str, CallBuilder] = {}
        # (pbx_id, linkedid) -> offset of the call's first event; insertion order = offset order
        self._first: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._last_seq: dict[str, tuple[int, int]] = {}  # pbx_id -> (epoch, seq) last folded
        self.next_offset: int | None = None  # one past the last offset taken in
        self.stream_time = 0.0  # latest receive time seen: the clock of a backlog
        self.duplicates = 0

    def builder(self, pbx_id: str) -> CallBuilder:
        b = self.builders.get(pbx_id)
        if b is None:
            b = self.builders[pbx_id] = self._make_builder(pbx_id)
        return b

    def feed(self, offset: int, linkedid: str, env: Envelope) -> list[Output]:
        """Fold the envelope at ``offset`` whose message key names call ``linkedid``.

        An envelope already folded — the same ``(epoch, seq)`` or older, as a re-sent produce
        batch brings it — is skipped: ingest's epochs grow across its restarts.
        """
        self.next_offset = offset + 1
        mark = (env.epoch, env.seq)
        last = self._last_seq.get(env.pbx_id)
        if last is not None and mark <= last:
            self.duplicates += 1
            return []
        self._last_seq[env.pbx_id] = mark
        if env.recv_time > self.stream_time:
            self.stream_time = env.recv_time
        b = self.builder(env.pbx_id)
        out = b.feed(env)
        if linkedid:
            key = (env.pbx_id, linkedid)
            if key not in self._first and b.is_open(linkedid):
                self._first[key] = offset
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
        first = self._first
        while first:
            (pbx_id, linkedid), offset = next(iter(first.items()))
            b = self.builders.get(pbx_id)
            if b is not None and b.is_open(linkedid):
                return offset if self.next_offset is None else min(offset, self.next_offset)
            first.popitem(last=False)
        return self.next_offset
