"""Which recordings of a call to keep, where they go, and what is recorded about them. Pure.

A call's ``recordings`` are file names as the PBX gave them (MIXMONITOR_FILENAME's full path, or
a CDR userfield's bare name). Calls nobody answered are not kept: MixMonitor records while it
rings, and nobody needs minutes of ringback tone.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import PurePosixPath

import msgspec

from contracts.records import CallRecord

RECORDINGS_PREFIX = "rec/"
HELD_PREFIX = "held/"  # copies of held recordings: no lifecycle rule covers them

CONTENT_TYPES = {
    ".wav": "audio/wav", ".wav49": "audio/wav", ".gsm": "audio/gsm", ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg", ".opus": "audio/ogg", ".sln": "audio/L16",
}
_SAFE = re.compile(r"[^A-Za-z0-9._=-]")


class StoredRecording(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the ``recordings`` table: a call's recording, as stored."""

    call_id: str
    pbx_id: str
    start: float  # the call's start: partitions and expiry follow the call
    source: str  # the PBX's file name
    key: str
    size_bytes: int
    duration_s: float | None  # from the WAV header; None for other formats
    sha256: str
    content_type: str
    uploaded_at: float
    version: int


class Upload(msgspec.Struct, frozen=True, kw_only=True):
    """A recording to fetch from the spool and upload."""

    call_id: str
    pbx_id: str
    start: float
    source: str  # as the PBX named it
    spool_path: str  # relative to the mounted spool directory
    key: str
    content_type: str
    metadata: dict[str, str]


def safe_segment(text: str) -> str:
    """A key segment from any text: unsafe characters become ``_``."""
    return _SAFE.sub("_", text) or "_"


def object_key(pbx_id: str, start: float, call_id: str, source: str) -> str:
    """``rec/<tenant>/<YYYY>/<MM>/<DD>/<linkedid>/<file>``: deterministic, so a re-upload overwrites.

    The tenant comes first so lifecycle rules and exports can address one customer by prefix.
    """
    day = datetime.fromtimestamp(start, UTC)
    linkedid = call_id.split(":", 1)[1] if ":" in call_id else call_id
    name = PurePosixPath(source).name
    return (f"{RECORDINGS_PREFIX}{safe_segment(pbx_id)}/{day:%Y/%m/%d}/"
            f"{safe_segment(linkedid)}/{safe_segment(name)}")


def spool_relpath(source: str, pbx_dir: str) -> str | None:
    """Where the PBX's file is inside the mounted spool: the part under ``pbx_dir`` for a full
    path, the name itself for a bare name; None for anything that would leave the spool."""
    p = PurePosixPath(source)
    if p.is_absolute():
        try:
            p = p.relative_to(pbx_dir)
        except ValueError:
            return None  # a file outside the recording directory: not ours to read
    if not p.parts or any(part in ("..", ".") for part in p.parts):
        return None
    return p.as_posix()


def plan_uploads(record: CallRecord, pbx_dir: str) -> tuple[list[Upload], list[str]]:
    """The uploads of a call's recordings, and the sources not kept (unanswered call, or a name
    outside the spool). Empty for a call without recordings."""
    if not record.recordings:
        return [], []
    if not record.answered:
        return [], list(record.recordings)
    uploads, skipped = [], []
    for source in record.recordings:
        rel = spool_relpath(source, pbx_dir)
        if rel is None:
            skipped.append(source)
            continue
        suffix = PurePosixPath(rel).suffix.lower()
        uploads.append(Upload(
            call_id=record.call_id, pbx_id=record.pbx_id, start=record.start, source=source,
            spool_path=rel, key=object_key(record.pbx_id, record.start, record.call_id, source),
            content_type=CONTENT_TYPES.get(suffix, "application/octet-stream"),
            metadata=recording_metadata(record),
        ))
    return uploads, skipped


def recording_metadata(record: CallRecord) -> dict[str, str]:
    """Object metadata: who and what the recording is (ASCII only: S3 metadata is HTTP headers)."""
    def ascii_(s: str) -> str:
        return s.encode("ascii", "replace").decode()

    return {
        "call-id": record.call_id,
        "pbx": record.pbx_id,
        "direction": record.direction,
        "caller": ascii_(record.caller),
        "called": ascii_(record.called),
        "answered-by": ascii_(record.last_answered_by or ""),
        "start": datetime.fromtimestamp(record.start, UTC).isoformat(timespec="milliseconds"),
    }


def wav_duration(header: bytes) -> float | None:
    """Seconds of audio from a RIFF/WAVE header (the first few KiB of the file); None if not WAV.

    MixMonitor fixes the RIFF sizes when it closes the file, so a complete file's ``data`` chunk
    size is right; reading it needs only the header.
    """
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        return None
    pos, byte_rate = 12, 0
    while pos + 8 <= len(header):
        cid, size = header[pos:pos + 4], struct.unpack_from("<I", header, pos + 4)[0]
        if cid == b"fmt " and pos + 16 <= len(header):
            byte_rate = struct.unpack_from("<I", header, pos + 16)[0]
        elif cid == b"data":
            return round(size / byte_rate, 3) if byte_rate else None
        pos += 8 + size + (size & 1)
    return None


class SpoolObservation(msgspec.Struct, frozen=True):
    """What the uploader saw of a spool file: its size (-1: absent) and since when."""

    size: int
    since: float


def observe(prev: SpoolObservation | None, size: int, now: float,
            mtime: float | None = None) -> SpoolObservation:
    """Fold one look at the file in: the ``since`` clock restarts whenever the size changes.

    On the first look the file's modification time stands for the last change (every write by
    MixMonitor moves it), so a file closed long ago is complete at once instead of after
    ``stable_s`` of watching; a clock ahead of ours (an NFS server's) counts from now.
    """
    if prev is None and size >= 0 and mtime is not None:
        return SpoolObservation(size, min(mtime, now))
    if prev is None or prev.size != size:
        return SpoolObservation(size, now)
    return prev


def readiness(obs: SpoolObservation, now: float, *, stable_s: float, missing_s: float,
              first_seen: float) -> str:
    """``ready`` when the size held still for ``stable_s`` (Asterisk sends no MixMonitorStop on
    a plain hangup, so a quiet file is the sign it is closed), ``missing`` when the file has been
    absent for ``missing_s`` since the call ended, else ``wait``."""
    if obs.size < 0:
        return "missing" if now - first_seen >= missing_s else "wait"
    return "ready" if now - obs.since >= stable_s else "wait"


# -- the recordings pass: which stored calls still need what ------------------------------------


class SyncPlan(msgspec.Struct, frozen=True, kw_only=True):
    """What one page of stored calls asks of a recordings pass."""

    uploads: list[tuple[Upload, float]]  # not linked in the recordings table yet, with the call's end
    not_kept: list[tuple[str, str]]  # (pbx, source) of unanswered calls: not uploaded
    outside: list[tuple[str, str]]  # (pbx, source) of answered calls, named outside the spool


def plan_sync(calls: Iterable[CallRecord], stored: Mapping[str, Collection[str]],
              pbx_dir: str) -> SyncPlan:
    """The recordings of ``calls`` that still need an upload: every planned upload whose object key
    is not among ``stored[call_id]`` (the keys the ``recordings`` table links to the call), so a
    second pass over the same calls plans nothing. The same rules as :func:`plan_uploads`."""
    uploads: list[tuple[Upload, float]] = []
    not_kept: list[tuple[str, str]] = []
    outside: list[tuple[str, str]] = []
    for record in calls:
        planned, skipped = plan_uploads(record, pbx_dir)
        done = stored.get(record.call_id, ())
        uploads.extend((up, record.end) for up in planned if up.key not in done)
        for source in skipped:
            if record.answered:
                outside.append((record.pbx_id, source))
            else:
                not_kept.append((record.pbx_id, source))
    return SyncPlan(uploads=uploads, not_kept=not_kept, outside=outside)


def spool_state(size: int, mtime: float, *, now: float, ended: float, stable_s: float,
                missing_s: float) -> str:
    """One look at a spool file (``size`` -1: absent) as a pass sees it: ``ready`` (unchanged for
    ``stable_s``), ``wait`` (still being written, or absent for less than ``missing_s`` since the
    call ended) or ``missing``. The uploader's rules (:func:`observe`, :func:`readiness`), without
    the waiting: a pass moves on and a later pass looks again."""
    obs = observe(None, size, now, mtime)
    return readiness(obs, now, stable_s=stable_s, missing_s=missing_s, first_seen=ended)
