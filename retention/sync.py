"""The recordings service: upload the recordings of stored calls, restart-safe.

Its state is ClickHouse: a recording is done when the ``recordings`` table links it to its call.
A pass reads the calls within ``recordings_sync_lookback_days`` that name recordings not linked
yet, looks at each file in the spool (``retention.recordings.spool_state``: complete, still
being written, missing) and hands the complete ones to the uploader (bounded concurrency,
retries, verified upload before an optional delete). Nothing is remembered between passes but
what ClickHouse holds, so a crash, a restart or an object store that was down loses nothing: the
next pass finds the same work. ``pbxpipe recordings sync`` runs one pass, ``pbxpipe recordings
watch`` one every ``recordings_sync_interval_s``, and ``pbxpipe run``/``replay`` the same passes
in-process.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import structlog

from contracts import metrics
from contracts.config import Settings
from contracts.errors import ConfigError, PbxPipeError
from contracts.records import CallRecord
from retention.recordings import Upload, plan_sync, spool_state
from retention.uploader import RecordingUploader
from store.clickhouse import ClickHouseStore
from store.objects import ObjectStore
from store.queries import CALL_FIELDS, TIME_FIELDS, record_from_row

log = structlog.get_logger("retention.sync")

JOB = "recordings_sync"  # the job label of pbxpipe_retention_job_last_success_timestamp_seconds
PAGE = 1000  # calls read per query
ROUND_PER_WORKER = 8  # uploads per worker between two checks that the object store is up


class PassResult(msgspec.Struct, kw_only=True):
    """What one pass found and did (files, not calls)."""

    calls: int = 0  # calls read that still name a recording not linked
    uploaded: int = 0
    failed: int = 0  # upload failed after its retries: tried again next pass
    pending: int = 0  # not linked yet: being written, failed, or over the budget
    missing: int = 0  # absent from the spool past recordings_missing_s
    not_kept: int = 0  # files of unanswered calls deleted from the spool (delete_source only)
    more: bool = False  # stopped at recordings_sync_max_files: more work is ready
    aborted: str = ""  # why the pass stopped early (the object store is down)


def pending_calls_query(since_ms: int, after: tuple[int, str] | None, *, unanswered: bool,
                        pbx_ids: list[str] | None = None,
                        limit: int = PAGE) -> tuple[str, dict[str, Any]]:
    """Calls since ``since_ms`` that name more recordings than the ``recordings`` table links to
    them, oldest first, every CallRecord field (times as ``<name>_ms``) and ``stored_keys``;
    ``after`` = (start ms, call id) of the previous page's last row. Unanswered calls only when
    ``unanswered`` (their files are deleted, never linked, so they come back every pass); only
    the PBXs of ``pbx_ids`` when given (the ones whose spool this is)."""
    cols = ", ".join(f"toUnixTimestamp64Milli(c.`{f}`) AS `{f}_ms`" if f in TIME_FIELDS
                     else f"c.`{f}` AS `{f}`" for f in CALL_FIELDS)
    since = "fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')"
    conds = [f"start >= {since}", "notEmpty(recordings)"]
    if not unanswered:
        conds.append("answered")
    params: dict[str, Any] = {"since_ms": since_ms, "limit": limit}
    if pbx_ids:
        conds.append("pbx_id IN {pbx_ids:Array(String)}")
        params["pbx_ids"] = pbx_ids
    if after is not None:
        conds.append("(start, call_id) > (fromUnixTimestamp64Milli({after_ms:Int64}, 'UTC'), "
                     "{after_id:String})")
        params["after_ms"], params["after_id"] = after
    sql = (f"SELECT {cols}, r.keys AS stored_keys "
           f"FROM (SELECT * FROM calls FINAL WHERE {' AND '.join(conds)}) AS c "
           f"LEFT JOIN (SELECT call_id, groupArray(key) AS keys FROM recordings FINAL "
           f"WHERE start >= {since} GROUP BY call_id) AS r ON r.call_id = c.call_id "
           "WHERE length(r.keys) < length(c.recordings) "
           "ORDER BY c.start, c.call_id LIMIT {limit:UInt32}")
    return sql, params


class RecordingsSync:
    """Runs recordings passes against one store, object store and spool.

    Between passes it keeps only what to log once: the files already reported missing or
    unreadable, forgotten as soon as a complete pass no longer finds them.
    """

    def __init__(self, store: ClickHouseStore, objects: ObjectStore, settings: Settings, *,
                 clock: Callable[[], float] = time.time,
                 uploader: Callable[[], RecordingUploader] | None = None) -> None:
        self.store = store
        self.objects = objects
        self.settings = settings
        self.spool = Path(settings.recordings_spool)
        self.pbx_ids = [p.strip() for p in settings.recordings_sync_pbx_ids.split(",") if p.strip()]
        self.clock = clock
        self._new_uploader = uploader or (lambda: RecordingUploader(
            objects, store, settings, retain_until=self._lock_until()))
        self._reported: set[str] = set()  # keys or sources logged (and counted) once
        self._pbx_seen: set[str] = set()  # gauge labels to reset when a PBX has nothing left
        self.last_error = ""

    def _lock_until(self) -> Callable[[Upload], float | None] | None:
        """With ``recordings_object_lock = governance``, each upload's lock until its retention
        ends, by the policies as this pass reads them."""
        mode = self.settings.recordings_object_lock
        if not mode:
            return None
        if mode != "governance":
            raise ConfigError(f"invalid setting: recordings_object_lock {mode!r} is not "
                              "governance or empty (PBXPIPE_RECORDINGS_OBJECT_LOCK)")
        if not self.objects.supports_object_lock():
            raise ConfigError(f"recordings_object_lock=governance: {self.objects.location} has "
                              "no object lock (an S3 bucket created with it is needed)")
        from retention.jobs import default_policy, load_policies
        from retention.policies import recording_lock_until

        policies = load_policies(self.store)
        default = default_policy(self.settings.retention_call_days,
                                 self.settings.retention_recording_days)
        return lambda up: recording_lock_until(up.start, up.pbx_id, policies, default)

    # -- one pass ------------------------------------------------------------------------------

    def run_pass(self, since: float | None = None) -> PassResult:
        """Upload what is ready among the calls since ``since`` (default: the lookback)."""
        s = self.settings
        started = self.clock()
        since = started - s.recordings_sync_lookback_days * 86400 if since is None else since
        result = PassResult()
        ready: list[tuple[Upload, float]] = []
        per_pbx: dict[str, list[int]] = {}  # pbx -> [pending, missing]
        reported: set[str] = set()
        uploader = self._new_uploader()
        try:
            for page in self._pages(since):
                result.calls += len(page)
                plan = plan_sync((c for c, _ in page), {c.call_id: keys for c, keys in page},
                                 s.recordings_pbx_dir)
                for pbx, source in plan.not_kept:
                    try:
                        if uploader.discard(source):
                            result.not_kept += 1
                            metrics.RECORDINGS.labels(pbx, "skipped_unanswered").inc()
                    except OSError as e:
                        reported.add(source)
                        self._once(source, pbx, "failed", "recording_not_deleted", source=source,
                                   reason=e.strerror or str(e))
                for pbx, source in plan.outside:
                    reported.add(source)
                    self._once(source, pbx, "failed", "recording_outside_spool", source=source,
                               reason=f"not under recordings_pbx_dir {s.recordings_pbx_dir}")
                for up, ended in plan.uploads:
                    counts = per_pbx.setdefault(up.pbx_id, [0, 0])
                    state, detail = self._look(up, ended)
                    if state == "missing":
                        counts[1] += 1
                        reported.add(up.key)
                        self._once(up.key, up.pbx_id, "missing", "recording_missing",
                                   call_id=up.call_id, source=up.source, path=detail)
                    elif state == "ready" and len(ready) < s.recordings_sync_max_files:
                        ready.append((up, ended))
                    else:
                        counts[0] += 1
                        result.more = result.more or state == "ready"
                        if state == "unreadable":
                            reported.add(up.key)
                            self._once(up.key, up.pbx_id, "failed", "recording_unreadable",
                                       call_id=up.call_id, source=up.source, reason=detail)
            self._upload(uploader, ready, result, per_pbx)
        finally:
            uploader.close()
        if not result.more and not result.aborted:
            self._reported &= reported  # a file no longer missing may be reported again later
        result.pending = sum(c[0] for c in per_pbx.values())
        result.missing = sum(c[1] for c in per_pbx.values())
        for pbx in self._pbx_seen - per_pbx.keys():
            per_pbx[pbx] = [0, 0]
        for pbx, (pending, missing) in per_pbx.items():
            metrics.RECORDINGS_PENDING.labels(pbx).set(pending)
            metrics.RECORDINGS_MISSING.labels(pbx).set(missing)
        self._pbx_seen = {p for p, c in per_pbx.items() if any(c)}
        if not result.aborted:
            metrics.RETENTION_JOB_SUCCESS.labels(JOB).set(time.time())
        (log.warning if result.aborted else log.info)(
            "recordings_synced", seconds=round(self.clock() - started, 3),
            **msgspec.structs.asdict(result))
        return result

    def _pages(self, since: float) -> Iterator[list[tuple[CallRecord, set[str]]]]:
        after: tuple[int, str] | None = None
        while True:
            sql, params = pending_calls_query(round(since * 1000), after,
                                              unanswered=self.settings.recordings_delete_source,
                                              pbx_ids=self.pbx_ids)
            rows = self.store.query(sql, params)
            if not rows:
                return
            yield [(record_from_row(r), set(r["stored_keys"])) for r in rows]
            if len(rows) < PAGE:
                return
            after = (rows[-1]["start_ms"], rows[-1]["call_id"])

    def _look(self, up: Upload, ended: float) -> tuple[str, str]:
        """(state, detail) of the spool file: ready | wait | missing | unreadable."""
        path = self.spool / up.spool_path
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime
        except FileNotFoundError:
            size, mtime = -1, 0.0
        except OSError as e:  # permissions, a stale NFS handle: tried again next pass
            return "unreadable", f"{path}: {e.strerror or e}"
        s = self.settings
        return spool_state(size, mtime, now=self.clock(), ended=ended,
                           stable_s=s.recordings_stable_s, missing_s=s.recordings_missing_s), str(path)

    def _upload(self, uploader: RecordingUploader, ready: list[tuple[Upload, float]],
                result: PassResult, per_pbx: dict[str, list[int]]) -> None:
        """Hand the complete files over in rounds of a few per worker, each round linked in one
        insert; stop the pass when a whole round failed (the object store is down: the next pass
        starts again)."""
        size = max(self.settings.recordings_concurrency, 1) * ROUND_PER_WORKER
        for i in range(0, len(ready), size):
            chunk = ready[i:i + size]
            before_failed = len(uploader.failed)
            for up, ended in chunk:
                uploader.submit(up, ended)
            linked = {r.key for r in uploader.drain()}
            ok = len(linked)
            result.uploaded += ok
            result.failed += len(uploader.failed) - before_failed
            for up, _ in chunk:
                if up.key not in linked:
                    per_pbx.setdefault(up.pbx_id, [0, 0])[0] += 1
            if ok == 0:
                rest = ready[i + size:]
                for up, _ in rest:
                    per_pbx.setdefault(up.pbx_id, [0, 0])[0] += 1
                if rest:
                    reason = uploader.failed[-1][1] if uploader.failed else "uploads failed"
                    result.aborted = f"{len(chunk)} uploads in a row failed: {reason}"
                return

    def _once(self, what: str, pbx: str, outcome: str, event: str, **kw: Any) -> None:
        """Count and log a file's problem the first time this process sees it."""
        if what in self._reported:
            return
        self._reported.add(what)
        metrics.RECORDINGS.labels(pbx, outcome).inc()
        log.warning(event, pbx=pbx, **kw)

    # -- the service ---------------------------------------------------------------------------

    def settle(self, since: float, timeout_s: float | None = None,
               sleep: Callable[[float], None] = time.sleep) -> PassResult:
        """Passes until nothing is left waiting for its file to complete (or ``timeout_s``,
        default ``recordings_missing_s``): what `replay` and `run` do before they exit."""
        s = self.settings
        deadline = self.clock() + (s.recordings_missing_s if timeout_s is None else timeout_s)
        while True:
            result = self.run_pass(since)
            if result.aborted or (result.pending == 0 and not result.more) or self.clock() >= deadline:
                return result
            if not result.more:
                sleep(min(max(s.recordings_stable_s / 2, 0.05), 1.0))

    def watch(self, stop: threading.Event) -> None:
        """A pass every ``recordings_sync_interval_s`` until ``stop``; the next at once when a pass
        stopped at its budget. A failing pass (ClickHouse down) is logged and tried again."""
        while not stop.is_set():
            try:
                result = self.run_pass()
                self.last_error = result.aborted
            except PbxPipeError as e:
                self.last_error = str(e)
                log.error("recordings_sync_failed", error=str(e))
                result = PassResult()
            if not result.more:
                stop.wait(self.settings.recordings_sync_interval_s)

    def readiness(self) -> tuple[bool, str]:
        """For /readyz: ready while the last pass reached ClickHouse and the object store."""
        return (False, self.last_error) if self.last_error else (True, "ok")


def recordings_sync(settings: Settings, store: ClickHouseStore,
                    objects: ObjectStore | None = None) -> RecordingsSync | None:
    """The recordings service the settings ask for; None when no spool is configured."""
    if not settings.recordings_spool:
        return None
    if objects is None:
        from store.object_stores import open_object_store

        objects = open_object_store(settings)
    return RecordingsSync(store, objects, settings)


class BackgroundSync:
    """`pbxpipe run`'s recordings: the watch loop in a thread, and a last settling pass at exit."""

    def __init__(self, sync: RecordingsSync) -> None:
        self.sync = sync
        self.started = sync.clock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=sync.watch, args=(self._stop,),
                                        name="recordings", daemon=True)
        self._thread.start()

    def stop(self) -> PassResult | None:
        """Stop the loop, then settle: files of the last calls are uploaded once complete."""
        self._stop.set()
        self._thread.join()
        lookback = self.sync.settings.recordings_sync_lookback_days * 86400
        try:
            return self.sync.settle(since=self.started - lookback)
        except PbxPipeError as e:  # the next start's passes find the same work
            log.error("recordings_sync_failed", error=str(e))
            return None


def start_background(settings: Settings, store: ClickHouseStore) -> BackgroundSync | None:
    """The recordings service inside another command; None when no spool is configured."""
    sync = recordings_sync(settings, store)
    return BackgroundSync(sync) if sync else None
