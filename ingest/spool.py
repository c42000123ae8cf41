"""Ingest's local append-only spool: where frames wait, in order, while Kafka is unreachable.

Segment files ``<n>.spool`` of length-prefixed msgpack records; a ``cursor`` file (replaced
atomically) says how far the records were acknowledged by Kafka, so a restarted ingest sends
the rest first. A record torn by a crash mid-write is cut off on open. Bounded: past
``max_bytes`` new records are refused (the caller counts them as dropped).
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
    """FIFO of records on disk: ``append``, then ``peek`` and ``consume`` what was delivered."""

    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int = 1 << 30,
                 segment_bytes: int = 64 << 20) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._cursor_path = self.dir / "cursor"
        segments = sorted(int(p.stem) for p in self.dir.glob("*.spool"))
        read_seg, read_pos = 0, 0
        if self._cursor_path.exists():
            seg_s, _, pos_s = self._cursor_path.read_text().partition(":")
            read_seg, read_pos = int(seg_s), int(pos_s)
        if not segments:
            segments = [read_seg]
            self._path(read_seg).touch()
        for n in segments:
            if n < read_seg:
                self._path(n).unlink()
        self._segments = [n for n in segments if n >= read_seg]
        if self._segments[0] != read_seg:
            read_seg, read_pos = self._segments[0], 0
        self._repair(self._segments[-1])
        self._read_seg, self._read_pos = read_seg, read_pos
        self._peek_end: tuple[int, int, int] | None = None  # segment, position, records
        self._writer: Any = open(self._path(self._segments[-1]), "ab")  # noqa: SIM115
        self.bytes = sum(self._path(n).stat().st_size for n in self._segments) - read_pos

    def _path(self, n: int) -> Path:
        return self.dir / f"{n:012d}.spool"

    def _repair(self, n: int) -> None:
        """Cut a record left half-written by a crash."""
        path = self._path(n)
        data = path.read_bytes()
        pos = 0
        while pos + 4 <= len(data):
            (size,) = _LEN.unpack_from(data, pos)
            if pos + 4 + size > len(data):
                break
            pos += 4 + size
        if pos != len(data):
            with open(path, "r+b") as f:
                f.truncate(pos)

    @property
    def empty(self) -> bool:
        return self.bytes <= 0

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
            self.bytes += len(out)
            if self._writer.tell() >= self.segment_bytes:
                self._writer.close()
                n = self._segments[-1] + 1
                self._segments.append(n)
                self._writer = open(self._path(n), "ab")  # noqa: SIM115
        return refused

    def peek(self, limit: int) -> list[Record]:
        """Up to ``limit`` records from the head, not consumed until :meth:`consume`."""
        out: list[Record] = []
        idx = self._segments.index(self._read_seg)
        seg, pos = self._read_seg, self._read_pos
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
        """Drop what the last :meth:`peek` returned: Kafka acknowledged it."""
        if self._peek_end is None:
            return
        seg, pos, _ = self._peek_end
        self._peek_end = None
        consumed = 0
        s, p = self._read_seg, self._read_pos
        while s != seg:
            consumed += self._path(s).stat().st_size - p
            if s != self._segments[-1]:
                self._path(s).unlink()
                self._segments.remove(s)
            s, p = self._segments[0], 0
        consumed += pos - p
        self._read_seg, self._read_pos = seg, pos
        self.bytes -= consumed
        if self.bytes <= 0 and self._writer.tell() > 0 and self._segments[-1] == seg:
            # everything delivered: start an empty segment so the files do not grow forever
            self._writer.close()
            old = self._segments[-1]
            n = old + 1
            self._segments = [n]
            self._writer = open(self._path(n), "ab")  # noqa: SIM115
            self._read_seg, self._read_pos, self.bytes = n, 0, 0
            self._save_cursor()
            self._path(old).unlink()
            return
        self._save_cursor()

    def _save_cursor(self) -> None:
        tmp = self._cursor_path.with_suffix(".tmp")
        tmp.write_text(f"{self._read_seg}:{self._read_pos}")
        os.replace(tmp, self._cursor_path)

    def close(self) -> None:
        self._writer.close()
