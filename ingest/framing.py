"""AMI framing, pure: bytes as read from the socket -> frames (ordered ``(key, value)`` headers).

A frame ends at a blank line. The byte stream is split on the blank line *before* decoding and
each complete frame is decoded once with strict UTF-8, so a character split across two reads is
never corrupted. Bad input never raises: it comes back as :class:`FrameError` items in order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from contracts.envelope import AmiFrames, Envelope
from contracts.errors import FrameError
from contracts.records import Quarantined, QuarantineReason

Frame = tuple[tuple[str, str], ...]

MALFORMED: QuarantineReason = "malformed_frame"
INVALID_UTF8: QuarantineReason = "invalid_utf8"
OVERSIZED: QuarantineReason = "oversized_frame"

RAW_KEEP_BYTES = 4096
"""An oversized frame keeps only its head in the quarantine: the rest is dropped unread."""

_BANNER_RE = re.compile(rb"^[^:\r\n]+/[^\s:]+$")
_BLANK_LINE_RE = re.compile(rb"\r?\n\r?\n")
CRLF2 = b"\r\n\r\n"
_Line = TypeVar("_Line", str, bytes)


class AmiFramer:
    """Incremental AMI framer for one connection: ``feed`` bytes, get frames and errors back."""

    __slots__ = ("_at_start", "_buf", "_discarding", "banner", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = 1 << 20, *, banner: bool = True) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.banner: str | None = None
        self._buf = bytearray()
        self._at_start = banner  # the first line of a connection may be the banner
        self._discarding = False  # inside an oversized frame: drop until the next blank line

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        """Frames completed by ``data``, in order; an incomplete tail is kept for the next call."""
        out: list[Frame | FrameError] = []
        chunk = self._complete(data)
        if chunk is not None:
            self._frames(chunk, out)
        self._check_size(out)
        return out

    def feed_raw(self, data: bytes) -> tuple[list[bytes], list[FrameError]]:
        """Frames completed by ``data`` as the exact bytes received, each with its terminating
        blank line, unparsed and undecoded, and the oversized frames dropped (as errors).

        They are the frames :meth:`feed` would give, in order: :func:`split_frames` of their
        concatenation reads them back one for one. Blank lines between frames stay with the
        frame before them (or the one after, at the start of a read), so no byte is lost.
        """
        frames: list[bytes] = []
        errors: list[FrameError] = []
        chunk = self._complete(data)
        if chunk is not None:
            self._raw_frames(chunk, frames, errors)
        self._check_size(errors)
        return frames, errors

    def _complete(self, data: bytes) -> bytes | None:
        """The buffered bytes plus ``data`` up to the end of the last blank line, if any."""
        buf = self._buf
        if buf or self._at_start or self._discarding:
            scan_from = max(0, len(buf) - 3)  # a blank line may straddle the previous read
            buf += data
            if self._at_start:
                if not self._take_banner():
                    return None
                scan_from = 0  # the banner went: what was scanned moved
            if self._discarding:
                end = _first_blank_line_end(buf, scan_from)
                if end < 0:
                    del buf[: max(0, len(buf) - 3)]
                    return None
                del buf[:end]
                self._discarding = False
                scan_from = 0
            end = _last_blank_line_end(buf, scan_from)
            if end < 0:
                return None
            chunk = bytes(buf) if end == len(buf) else bytes(memoryview(buf)[:end])
            del buf[:end]
            return chunk
        # nothing pending: frame the read itself, no copy into the buffer
        end = _last_blank_line_end(data, 0)
        if end < 0:
            buf += data
            return None
        if end < len(data):
            buf += data[end:]
            return data[:end]
        return data

    def _check_size(self, out: list[Frame | FrameError] | list[FrameError]) -> None:
        buf = self._buf
        if len(buf) > self.max_frame_bytes:
            out.append(
                FrameError(
                    OVERSIZED,
                    f"unterminated frame over max_frame_bytes={self.max_frame_bytes}; "
                    "dropped up to the next blank line",
                    bytes(buf[:RAW_KEEP_BYTES]),
                )
            )
            del buf[: len(buf) - 3]
            self._discarding = True

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the end of a frame."""
        return len(self._buf)

    def close(self) -> list[FrameError]:
        """End of the stream: a frame cut short is reported, not silently dropped."""
        tail = bytes(self._buf)
        self._buf.clear()
        discarding, self._discarding = self._discarding, False
        if discarding or not tail.strip():
            return []
        return [FrameError(MALFORMED, f"stream ended inside a frame ({len(tail)} bytes)", tail)]

    def _take_banner(self) -> bool:
        """Consume the banner line if there is one; False while the first line is incomplete."""
        buf = self._buf
        nl = buf.find(b"\n")
        if nl < 0:
            if len(buf) <= self.max_frame_bytes:
                return False
            self._at_start = False  # no banner is this long: let the oversize check drop it
            return True
        self._at_start = False
        line = bytes(buf[:nl]).rstrip(b"\r")
        if _BANNER_RE.match(line):
            self.banner = line.decode("utf-8", "backslashreplace")
            del buf[: nl + 1]
        return True

    def _frames(self, chunk: bytes | bytearray, out: list[Frame | FrameError]) -> None:
        """Frames of ``chunk``, which ends with a blank line."""
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError:
            text = None  # find the bad frame(s) one by one, the slow way
        if text is not None:
            parts = text.split("\r\n\r\n")
            if not parts[-1]:
                parts.pop()  # what follows the final blank line: nothing
            limit = self.max_frame_bytes
            # A part's length in characters is its length in bytes when the text is ASCII.
            if len(chunk) <= limit or (
                len(text) == len(chunk) and max(map(len, parts), default=0) <= limit
            ):
                # Fast path: one decode per read, CRLF frames, header lines memoised. A frame
                # the memo cannot read (bare LF, extra blank lines, bad line) goes the slow way.
                get = _LINES.__getitem__
                append = out.append
                for part in parts:
                    try:
                        append(tuple(map(get, part.split("\r\n"))))
                    except Unreadable:
                        # with its blank line: a bare LF before it belongs to it, as in
                        # the slow way over the whole read
                        self._frames_slow(part.encode("utf-8") + CRLF2, out)
                return
        self._frames_slow(bytes(chunk), out)

    def _raw_frames(self, chunk: bytes, frames: list[bytes], errors: list[FrameError]) -> None:
        """The exact bytes of each frame of ``chunk``, which ends with a blank line."""
        # Fast path, AMI as Asterisk writes it: split at CRLF blank lines, one scan. A frame
        # that holds other blank lines (bare LFs) stays one raw frame here: the parse in
        # enrich reads it as the frames it holds (see split_frames).
        if chunk.endswith(CRLF2):
            parts = chunk.split(CRLF2)
            parts.pop()  # what follows the final blank line: nothing
            if len(chunk) <= self.max_frame_bytes or max(map(len, parts)) <= self.max_frame_bytes:
                frames += [part + CRLF2 for part in parts]
                return
        limit = self.max_frame_bytes
        start = pos = 0  # start: of the next frame's bytes; pos: of the next part
        last_kept = False
        for m in _BLANK_LINE_RE.finditer(chunk):
            part = chunk[pos : m.start()]
            pos = m.end()
            if not part.strip(b"\r\n"):
                continue  # blank lines only: they go with the next frame
            if len(part) > limit:
                errors.append(_oversized(part, limit))
                last_kept = False
            else:
                frames.append(chunk[start:pos])
                last_kept = True
            start = pos
        if start < len(chunk) and last_kept:
            frames[-1] += chunk[start:]  # blank lines at the end: with the frame before them

    def _frames_slow(self, chunk: bytes, out: list[Frame | FrameError]) -> None:
        limit = self.max_frame_bytes
        for part in _BLANK_LINE_RE.split(chunk):
            if not part.strip(b"\r\n"):
                continue
            if len(part) > limit:
                out.append(_oversized(part, limit))
                continue
            try:
                text = part.decode("utf-8")
            except UnicodeDecodeError as e:
                out.append(FrameError(INVALID_UTF8, f"{e.reason} at byte {e.start}", part))
                continue
            out.append(parse_frame(text, part))


class Unreadable(Exception):
    """A line the fast path will not decide on."""


class LineMemo(dict[_Line, tuple[str, str]]):
    """``line -> (key, value)`` for well-formed CRLF header lines, bounded.

    Most AMI lines repeat (``Privilege: call,all``, ``Context: …``, a call's channel name),
    and a dict hit is cheaper than splitting the line and building two strings and a tuple.
    When full, the memo starts afresh and keeps the previous generation as a fallback, so
    the lines still in use move over on their next hit instead of all missing at once.
    """

    __slots__ = ("_old",)
    max_entries = 1 << 15

    def __init__(self) -> None:
        super().__init__()
        self._old: dict[_Line, tuple[str, str]] = {}

    def __missing__(self, line: _Line) -> tuple[str, str]:
        pair = self._old.get(line)
        if pair is None:
            # as parse_frame reads the line of a CRLF frame; Unreadable (or UnicodeDecodeError)
            # for a line the memo does not decide on: no name, a stray CR or LF, no colon
            text = line if isinstance(line, str) else line.decode("utf-8")
            key, sep, value = text.partition(": ")
            if not sep:
                if text[-1:] != ":":
                    raise Unreadable
                key, value = text[:-1], ""
            if not key or "\n" in text or "\r" in text:
                raise Unreadable
            pair = (key, value)
            if key == "Timestamp":  # unique per event: would only crowd the others out
                return pair
        if len(self) >= self.max_entries:
            self._old = self.copy()
            self.clear()
        self[line] = pair
        return pair

    def reset(self) -> None:
        self.clear()
        self._old = {}


_LINES: LineMemo[str] = LineMemo()


def _last_blank_line_end(stream: bytes | bytearray, start: int) -> int:
    """Index just past the last blank line in ``stream[start:]``, -1 if none."""
    crlf = stream.rfind(b"\n\r\n", start)
    if crlf >= 0:  # a bare-LF blank line can only matter after it: search the tail only
        lf = stream.rfind(b"\n\n", crlf + 1)
        return lf + 2 if lf > crlf else crlf + 3
    lf = stream.rfind(b"\n\n", start)
    return lf + 2 if lf >= 0 else -1


def _first_blank_line_end(stream: bytes | bytearray, start: int) -> int:
    """Index just past the first blank line in ``stream[start:]``, -1 if none."""
    crlf = stream.find(b"\n\r\n", start)
    lf = stream.find(b"\n\n", start, crlf + 2 if crlf >= 0 else len(stream))
    if lf >= 0:
        return lf + 2
    return crlf + 3 if crlf >= 0 else -1


def _oversized(raw: bytes, limit: int) -> FrameError:
    return FrameError(
        OVERSIZED, f"frame of {len(raw)} bytes over max_frame_bytes={limit}", raw[:RAW_KEEP_BYTES]
    )


def parse_frame(text: str, raw: bytes) -> Frame | FrameError:
    """Slow path, one frame, any line ends: each line is ``Key: value`` or ``Key:``."""
    headers: list[tuple[str, str]] = []
    for n, line in enumerate(text.lstrip("\r\n").split("\n"), 1):
        line = line.removesuffix("\r")
        key, sep, value = line.partition(": ")
        if not sep:
            if line.endswith(":"):
                key, value = line[:-1], ""
            else:
                return FrameError(MALFORMED, f"line {n} is not 'Key: value': {line[:80]!r}", raw)
        if not key:
            return FrameError(MALFORMED, f"line {n} has no header name: {line[:80]!r}", raw)
        headers.append((key, value))
    return tuple(headers)


def split_frames(raw: bytes, sizes: list[int],
                 max_frame_bytes: int = 1 << 20) -> list[tuple[int, Frame | FrameError]]:
    """The frames of raw frames joined (a raw-topic message) as :meth:`AmiFramer.feed` reads
    them, each with the index of the raw frame (of ``sizes`` bytes each) it came from.

    A raw frame is usually one frame; one with bare-LF blank lines inside holds several, one of
    blank lines only none. Raises ValueError when ``sizes`` do not add up to ``raw``.
    """
    if sum(sizes) != len(raw):
        raise ValueError(f"frame sizes add up to {sum(sizes)} bytes, not {len(raw)}")
    framer = AmiFramer(max_frame_bytes, banner=False)
    items = framer.feed(raw) + framer.close()
    if len(items) == len(sizes):
        return list(enumerate(items))
    out: list[tuple[int, Frame | FrameError]] = []
    pos = 0
    for i, size in enumerate(sizes):
        framer = AmiFramer(max_frame_bytes, banner=False)
        out += [(i, item) for item in framer.feed(raw[pos : pos + size]) + framer.close()]
        pos += size
    return out


def read_frames(batch: AmiFrames, max_frame_bytes: int = 1 << 20,
                ignored: Callable[[bytes], bool] | None = None,
                ) -> tuple[list[Envelope], list[tuple[int, FrameError]]]:
    """A raw-topic message read raw frame by raw frame: its frames as envelopes, and those that
    cannot be read with their seq. Raises ValueError when the message does not hold the frames
    it numbers. (Enrich reads a message as Asterisk writes it in one pass,
    ``enrich.events.read_events``; this is the general way, for any other.)

    ``ignored`` judges a raw frame from its bytes; those it is true of are passed over unparsed
    (the reader's own judgement that it would drop them unread) if they hold exactly one CRLF
    frame, so that no other frame can hide behind a blank line in them."""
    if len(batch.sizes) != len(batch.seqs):
        raise ValueError(f"{len(batch.sizes)} frame sizes for {len(batch.seqs)} frames")
    seqs, sizes, raw = batch.seqs, batch.sizes, batch.raw
    if ignored is not None and sum(sizes) == len(raw):
        kept_seqs: list[int] = []
        kept_sizes: list[int] = []
        kept: list[bytes] = []
        pos = 0
        for seq, size in zip(seqs, sizes):
            frame = raw[pos : pos + size]
            pos += size
            if not (ignored(frame) and _one_crlf_frame(frame)):
                kept_seqs.append(seq)
                kept_sizes.append(size)
                kept.append(frame)
        if len(kept) < len(seqs):
            seqs, sizes, raw = kept_seqs, kept_sizes, b"".join(kept)
    pbx, epoch, recv = batch.pbx_id, batch.epoch, batch.recv_time
    envs: list[Envelope] = []
    bad: list[tuple[int, FrameError]] = []
    for i, item in split_frames(raw, sizes, max_frame_bytes):
        if isinstance(item, FrameError):
            bad.append((seqs[i], item))
        else:
            envs.append(Envelope(pbx, epoch, seqs[i], recv, item))
    return envs, bad


def _one_crlf_frame(frame: bytes) -> bool:
    """Whether a raw frame is one frame ending with a CRLF blank line and holding no other."""
    # find, not ``in``: bytes.__contains__ first tries the operand as an int, at the cost of
    # formatting (and dropping) a TypeError each time
    return frame.endswith(CRLF2) and frame.find(b"\n\n") < 0 and frame.count(b"\n\r\n") == 1


def quarantined(err: FrameError, pbx_id: str, received_at: float) -> Quarantined:
    """The quarantine record of a frame that could not be read."""
    return Quarantined(
        pbx_id=pbx_id,
        received_at=received_at,
        reason=err.reason,  # type: ignore[arg-type]  # one of the framing reasons above
        detail=err.detail,
        raw=err.raw.decode("utf-8", "backslashreplace"),
    )
