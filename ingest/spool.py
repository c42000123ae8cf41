"""Ingest's local append-only spool: where frames wait, in order, while Kafka is unreachable.

Segment files ``<n>.spool`` of length-prefixed msgpack records; a ``cursor`` file (replaced
atomically) says how far the records were acknowledged by Kafka, so a restarted ingest sends
the rest first. A record torn by a crash mid-write is cut off on open. Bounded: past
``max_bytes`` new records are refused (the caller counts them as dropped).

What :meth:`Spool.sync` has made durable survives a power loss. A cursor left unreadable anyway
(empty, garbage, pointing where no record starts) is not fatal: the spool opens at its oldest
record and says so (``cursor_recovered``); records Kafka already had are sent again, and enrich
drops them by their (epoch, seq).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import msgspec

from contracts.kafka import Message

Record = Message  # key, value, kind, timestamp

_LEN = struct.Struct(">I")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


class Spool:
    """FIFO of records on disk: ``append``, then ``peek`` and ``consume`` what was delivered;
    ``sync`` makes it durable.

    ``append``, ``peek`` and ``consume`` never wait for the disk: :meth:`sync` does all the waiting
    and may run in another thread meanwhile, one at a time. Only ``sync`` and ``close`` close
    segment files, so a file is never closed under a running sync.
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int = 1 << 30,
                 segment_bytes: int = 64 << 20) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._cursor_path = self.dir / "cursor"
        segments = sorted(int(p.stem) for p in self.dir.glob("*.spool"))
        if not segments:
            segments = [0]
            self._path(0).touch()
        self._repair(segments[-1])
        head = (segments[0], 0)  # the oldest record
        cursor = self._cursor_path
        saved = _parse_cursor(cursor.read_bytes()) if cursor.exists() else head
        if saved is not None and self._starts_record(*saved, segments):
            head = saved
        # unreadable (a power loss): empty or garbage, or pointing where no record starts
        self.cursor_recovered = saved != head
        if self.cursor_recovered:
            self._write_cursor(head)  # once: the next open finds a good cursor
        for n in segments:
            if n < head[0]:  # consumed; a crash came between saving the cursor and deleting them
                self._path(n).unlink()
        self._segments = [n for n in segments if n >= head[0]]
        self._head = head  # segment and position of the first record not consumed
        self._saved = head  # the head the cursor file holds
        self._peek_end: tuple[int, int, int] | None = None  # segment, position, records
        self._writer: Any = open(self._path(self._segments[-1]), "ab")  # noqa: SIM115
        self._finished: list[Any] = []  # segments written to the end: sync() persists, closes them
        self._appended = False  # since the last sync
        self.bytes = sum(self._path(n).stat().st_size for n in self._segments) - head[1]

    def _path(self, n: int) -> Path:
        return self.dir / f"{n:012d}.spool"

    def _starts_record(self, seg: int, pos: int, segments: list[int]) -> bool:
        """Whether segment ``seg`` exists and a record starts (or its records end) at ``pos``."""
        return seg in segments and _whole_records(self._path(seg).read_bytes(), pos) == pos

    def _repair(self, n: int) -> None:
        """Cut a record left half-written by a crash."""
        path = self._path(n)
        data = path.read_bytes()
        end = _whole_records(data, len(data))
        if end != len(data):
            with open(path, "r+b") as f:
                f.truncate(end)

    @property
    def empty(self) -> bool:
        return self.bytes <= 0

    @property
    def unsynced(self) -> bool:
        """Appended or consumed since the last :meth:`sync`."""
        return self._appended or bool(self._finished) or self._head != self._saved

    def append(self, records: list[Record]) -> int:
        """Append in order; returns how many were refused because the spool is full."""
        out = bytearray()
        refused = 0
        for rec in records:
            payload = _encoder.encode(rec)
            if self.bytes + len(out) + 4 + len(payload) > self.max_bytes:
                refused += 1
                continue
            out += _LEN.pack(len(payload))
            out += payload
        if out:
            self._writer.write(out)
            self._writer.flush()
            self._appended = True  # after the write: a sync that clears it first syncs this too
            self.bytes += len(out)
            if self._writer.tell() >= self.segment_bytes:
                self._roll()
        return refused

    def _roll(self) -> None:
        """Append to a new segment from now on; the finished one waits for :meth:`sync`."""
        n = self._segments[-1] + 1
        self._segments.append(n)
        writer = open(self._path(n), "ab")  # noqa: SIM115
        self._finished.append(self._writer)
        self._writer = writer
        self._appended = False  # all of it is in the finished segment

    def peek(self, limit: int) -> list[Record]:
        """Up to ``limit`` records from the head, not consumed until :meth:`consume`."""
        out: list[Record] = []
        seg, pos = self._head
        idx = self._segments.index(seg)
        while len(out) < limit:
            with open(self._path(seg), "rb") as f:
                f.seek(pos)
                while len(out) < limit:
                    head = f.read(4)
                    if len(head) < 4:
                        break
                    (size,) = _LEN.unpack(head)
                    payload = f.read(size)
                    if len(payload) < size:
                        break
                    out.append(_decoder.decode(payload))
                    pos += 4 + size
            if len(out) >= limit or idx + 1 >= len(self._segments):
                break
            idx += 1
            seg, pos = self._segments[idx], 0
        self._peek_end = (seg, pos, len(out))
        return out

    def consume(self) -> None:
        """Drop what the last :meth:`peek` returned: Kafka acknowledged it. Its segments are
        deleted by :meth:`sync`, once the cursor past them is durable."""
        if self._peek_end is None:
            return
        seg, pos, _ = self._peek_end
        self._peek_end = None
        consumed = 0
        s, p = self._head
        while s != seg:
            consumed += self._path(s).stat().st_size - p
            if s != self._segments[-1]:
                self._segments.remove(s)
            s, p = self._segments[0], 0
        consumed += pos - p
        self._head = (seg, pos)
        self.bytes -= consumed
        if self.bytes <= 0 and self._writer.tell() > 0 and self._segments[-1] == seg:
            # everything delivered: start an empty segment so the files do not grow forever
            self._roll()
            self._segments = self._segments[-1:]
            self._head, self.bytes = (self._segments[0], 0), 0

    def sync(self) -> None:
        """Make what was appended and consumed so far survive a power loss (fdatasync, then the
        cursor), then delete the consumed segments."""
        head, writer = self._head, self._writer  # first: what they cover was written before
        if self._appended:
            self._appended = False
            os.fdatasync(writer.fileno())
        if self._finished:
            while self._finished:
                os.fdatasync(self._finished[0].fileno())
                self._finished.pop(0).close()
            _fsync_dir(self.dir)  # the new segments' entries, before a cursor names them
        if head != self._saved:
            self._write_cursor(head)
            for n in range(self._saved[0], head[0]):  # segment numbers are consecutive
                self._path(n).unlink(missing_ok=True)
            self._saved = head

    def _write_cursor(self, head: tuple[int, int]) -> None:
        """Replace the cursor so that a power loss leaves the old one or the new one, whole."""
        tmp = self._cursor_path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(b"%d:%d" % head)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._cursor_path)
        _fsync_dir(self.dir)

    def close(self) -> None:
        """:meth:`sync`, then close the files (not while a sync runs elsewhere)."""
        self.sync()
        self._writer.close()


def _whole_records(data: bytes, stop: int) -> int:
    """Where the records of ``data`` that start before ``stop`` end (short of a torn one):
    ``stop`` itself when a record starts there."""
    pos = 0
    while pos < stop and pos + 4 <= len(data):
        (size,) = _LEN.unpack_from(data, pos)
        if pos + 4 + size > len(data):
            break
        pos += 4 + size
    return pos


def _parse_cursor(text: bytes) -> tuple[int, int] | None:
    """``<segment>:<position>``; None when a crash left it empty or garbage."""
    seg, _, pos = text.partition(b":")
    try:
        return int(seg), int(pos)
    except ValueError:
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
