"""The recordings uploader: fetch a call's recordings from the PBX's spool, upload them to the
object store and link them to the call in the ``recordings`` table. ``retention.sync`` (the
recordings pass) decides what to hand over.

A bounded queue feeds ``recordings_concurrency`` worker threads (a full queue blocks the caller:
backpressure, never an unbounded buffer). The uploaded recordings are linked in one insert per
:meth:`RecordingUploader.drain` (one ClickHouse part per round, not one per file). Each upload is retried with capped jittered backoff; the
object key is derived from the call, so a retried or repeated upload overwrites the same object.
Nothing is deleted from the PBX before the stored object was read back and matched size and
SHA-256 and its row was written.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import structlog
import tenacity

from contracts import metrics
from contracts.config import Settings
from contracts.errors import ObjectStoreError
from retention.recordings import (
    StoredRecording,
    Upload,
    observe,
    readiness,
    spool_relpath,
    wav_duration,
)
from store.objects import ObjectStore, sha256_file
from store.schema import Table

log = structlog.get_logger("retention.uploader")

RECORDINGS_TABLE = Table("recordings", StoredRecording)


class RowWriter(Protocol):
    def write_structs(self, table: Table, items: Any, token: str) -> int: ...


class _HashingReader:
    """Reads through to a file and hashes what was actually sent."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.sent = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.sha.update(data)
        self.sent += len(data)
        return data


class RecordingUploader:
    def __init__(self, objects: ObjectStore, rows: RowWriter, settings: Settings, *,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 open_source: Callable[[Path], BinaryIO] | None = None,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 10.0,
                 retain_until: Callable[[Upload], float | None] | None = None) -> None:
        self.objects = objects
        self.rows = rows
        self.spool = Path(settings.recordings_spool)
        self.pbx_dir = settings.recordings_pbx_dir
        self.stable_s = settings.recordings_stable_s
        self.missing_s = settings.recordings_missing_s
        self.attempts = max(settings.recordings_retries, 1)
        self.delete_source = settings.recordings_delete_source
        self.clock = clock
        self.sleep = sleep
        self.open_source = open_source or (lambda p: open(p, "rb"))  # noqa: SIM115 (closed by the caller)
        self.backoff = (backoff_initial_s, backoff_max_s)
        # object lock (recordings_object_lock): until when an upload is locked, None: not locked
        self.retain_until = retain_until or (lambda up: None)
        self.results: list[StoredRecording] = []  # uploaded and linked
        self._unlinked: list[StoredRecording] = []  # uploaded, row not written yet
        self.failed: list[tuple[str, str]] = []  # (source, reason) nothing silent
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[Upload, float] | None] = queue.Queue(settings.queue_size)
        self._workers = [
            threading.Thread(target=self._work, name=f"recordings-{i}", daemon=True)
            for i in range(max(settings.recordings_concurrency, 1))
        ]
        for w in self._workers:
            w.start()

    # -- the stage's interface ----------------------------------------------------------------

    def submit(self, up: Upload, since: float) -> None:
        """Queue an upload (``since``: when the call ended, the start of its ``missing_s``);
        returns at once unless the queue is full (backpressure)."""
        self._queue.put((up, since))

    def drain(self) -> list[StoredRecording]:
        """Wait until every upload queued so far is done (uploaded or failed), then link the
        uploaded ones; returns those rows."""
        self._queue.join()
        return self.link()

    def link(self) -> list[StoredRecording]:
        """Write the rows of the recordings uploaded since the last call in one insert, then
        (``recordings_delete_source``) delete their files from the PBX's spool."""
        with self._lock:
            rows, self._unlinked = self._unlinked, []
        if not rows:
            return []
        token = hashlib.blake2b(digest_size=16)
        for r in rows:
            token.update(f"{r.key}\x00{r.sha256}\x01".encode())
        self.rows.write_structs(RECORDINGS_TABLE, rows, f"recordings:{token.hexdigest()}")
        for r in rows:
            metrics.RECORDINGS.labels(r.pbx_id, "uploaded").inc()
            metrics.RECORDINGS_BYTES.labels(r.pbx_id).inc(r.size_bytes)
            if self.delete_source and (rel := spool_relpath(r.source, self.pbx_dir)) is not None:
                (self.spool / rel).unlink(missing_ok=True)
        with self._lock:
            self.results.extend(rows)
        return rows

    def discard(self, source: str) -> bool:
        """Delete the PBX's file of a recording not kept (with ``recordings_delete_source``);
        True when there was one."""
        rel = spool_relpath(source, self.pbx_dir)
        if not self.delete_source or rel is None:
            return False
        try:
            (self.spool / rel).unlink()
        except FileNotFoundError:
            return False
        return True

    def close(self) -> None:
        """Finish every queued upload and link it, then stop the workers."""
        for _ in self._workers:
            self._queue.put(None)
        for w in self._workers:
            w.join()
        self.link()

    # -- workers ------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            up, submitted = item
            try:
                self.process(up, submitted)
            except (ObjectStoreError, OSError) as e:  # retried already; a later pass tries again
                self._failed(up.source, str(e), up.pbx_id)
            except Exception as e:  # one bad recording never stops the stage
                self._failed(up.source, str(e), up.pbx_id)
                log.exception("recording_failed", call_id=up.call_id, key=up.key)
            finally:
                self._queue.task_done()

    def _failed(self, source: str, reason: str, pbx: str) -> None:
        metrics.RECORDINGS.labels(pbx, "failed").inc()
        with self._lock:
            self.failed.append((source, reason))
        log.error("recording_not_uploaded", source=source, reason=reason, pbx=pbx)

    def wait_complete(self, path: Path, since: float) -> bool:
        """Poll until the file's size held still for ``stable_s``; False when it never appears."""
        obs = None
        while True:
            now = self.clock()
            try:
                st = path.stat()
                size, mtime = st.st_size, st.st_mtime
            except FileNotFoundError:
                size, mtime = -1, now
            obs = observe(obs, size, now, mtime)
            state = readiness(obs, now, stable_s=self.stable_s, missing_s=self.missing_s,
                              first_seen=since)
            if state != "wait":
                return state == "ready"
            self.sleep(min(max(self.stable_s / 4, 0.05), 1.0))

    def process(self, up: Upload, submitted: float | None = None) -> StoredRecording | None:
        path = self.spool / up.spool_path
        bound = log.bind(call_id=up.call_id, pbx=up.pbx_id, key=up.key)
        if not self.wait_complete(path, self.clock() if submitted is None else submitted):
            metrics.RECORDINGS.labels(up.pbx_id, "missing").inc()
            with self._lock:
                self.failed.append((up.source, "missing"))
            bound.error("recording_missing", path=str(path), waited_s=self.missing_s)
            return None
        sha, size = sha256_file(path)
        with open(path, "rb") as f:
            duration = wav_duration(f.read(1 << 16))
        metadata = {**up.metadata, "sha256": sha}
        retain_until = self.retain_until(up)

        def attempt() -> None:
            with self.open_source(path) as f:
                reader = _HashingReader(f)
                self.objects.put(up.key, reader, size, content_type=up.content_type,  # type: ignore[arg-type]
                                 metadata=metadata, retain_until=retain_until)
            if reader.sent != size or reader.sha.hexdigest() != sha:
                raise ObjectStoreError(f"{path} changed while uploading")
            self._verify(up.key, size, sha)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            metrics.RECORDINGS_RETRIES.labels(up.pbx_id).inc()
            exc = state.outcome.exception() if state.outcome else None
            bound.warning("recording_upload_retried", attempt=state.attempt_number, error=str(exc))

        tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_random_exponential(multiplier=self.backoff[0], max=self.backoff[1]),
            retry=tenacity.retry_if_exception_type((ObjectStoreError, OSError)),
            before_sleep=before_sleep, sleep=self.sleep, reraise=True,
        )(attempt)
        now = self.clock()
        row = StoredRecording(
            call_id=up.call_id, pbx_id=up.pbx_id, start=up.start, source=up.source, key=up.key,
            size_bytes=size, duration_s=duration, sha256=sha, content_type=up.content_type,
            uploaded_at=now, version=int(now * 1000),
        )
        with self._lock:
            self._unlinked.append(row)  # linked (and the PBX's file deleted) by drain/close
        bound.debug("recording_uploaded", bytes=size, duration_s=duration)  # the pass logs a line
        return row

    def _verify(self, key: str, size: int, sha: str) -> None:
        info = self.objects.stat(key)
        if info is None or info.size != size:
            raise ObjectStoreError(f"{key}: stored object missing or {info and info.size} != {size} bytes")
        if info.metadata.get("sha256", sha) != sha:
            raise ObjectStoreError(f"{key}: stored checksum differs")
        # the PBX's copy goes next: read the stored bytes back first
        if self.delete_source and hashlib.sha256(self.objects.get(key)).hexdigest() != sha:
            raise ObjectStoreError(f"{key}: stored bytes differ from the spool file")

