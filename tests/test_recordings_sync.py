"""The recordings pass (`pbxpipe recordings sync | watch`): restart-safe uploads whose only state
is ClickHouse, against chDB and a real S3 server (moto on 127.0.0.1, the minio client)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import urllib3
from conftest import CAPTURE, FIXTURES
from minio import Minio
from structlog.testing import capture_logs
from test_recordings_s3 import s3_url  # noqa: F401 (the module's S3 server fixture)

from contracts import metrics
from contracts.config import Settings, load_settings
from contracts.records import CallRecord
from retention.recordings import plan_sync, spool_state
from retention.sync import RecordingsSync
from retention.uploader import RecordingUploader
from store.clickhouse import ClickHouseStore
from store.minio import MinioObjectStore
from store.schema import batch_token
from tests.kafkabroker import TcpGate
from tests.net import free_port, wait_listening

PBX_DIR = "/var/spool/asterisk/monitor"
HOUR = 3600.0
PBXPIPE = [sys.executable, "-c", "from pbxpipe.cli import main; main()"]


def call(n: int, *, answered: bool = True, files: tuple[str, ...] = (), ended_ago: float = HOUR,
         now: float | None = None) -> CallRecord:
    end = round((now or time.time()) - ended_ago, 3)
    return CallRecord(
        call_id=f"acme:{n}", pbx_id="acme", linkedid=str(n), direction="inbound",
        caller="+48601000000", caller_name="", called="101", answered=answered,
        first_answered_by="101" if answered else None, last_answered_by="101" if answered else None,
        status="answered" if answered else "missed", start=end - 30,
        answer=end - 28 if answered else None, end=end, duration_s=30.0,
        wait_s=2.0 if answered else None, talk_s=28.0 if answered else 0.0, hangup_cause=16,
        hangup_cause_text="Normal Clearing", hangup_by="caller", extensions_rang=("101",),
        queue="", transferred=False, forwarded=False,
        recordings=tuple(f"{PBX_DIR}/{f}" for f in files), disposition="ANSWERED",
        incomplete=False, version=1,
    )


def spool_file(spool: Path, name: str, data: bytes, age_s: float = HOUR) -> Path:
    """A recording MixMonitor finished ``age_s`` ago."""
    path = spool / name
    path.write_bytes(data)
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


def settings(spool: Path, **kw: Any) -> Settings:
    return load_settings({"recordings_spool": str(spool), "recordings_pbx_dir": PBX_DIR,
                          "recordings_concurrency": 2, **kw}, environ={})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseStore]:
    s = ClickHouseStore.connect(f"chdb://{tmp_path_factory.mktemp('chdb-recordings-sync')}")
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def clean(store: ClickHouseStore) -> ClickHouseStore:
    for t in ("calls", "recordings"):
        store.command(f"TRUNCATE TABLE {t}")
    return store


_n = 0


def bucket(endpoint: str, http: urllib3.PoolManager | None = None) -> MinioObjectStore:
    """A fresh bucket; ``http`` without retries makes an outage fail fast."""
    global _n
    _n += 1
    client = Minio(endpoint, access_key="testing", secret_key="testing", secure=False,
                   http_client=http)
    return MinioObjectStore(client, f"sync-{_n}")


def write(store: ClickHouseStore, calls: list[CallRecord]) -> None:
    store.write_calls(calls, batch_token("calls", calls))


def linked(store: ClickHouseStore) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in store.query("SELECT * FROM recordings FINAL")}


def missing_count() -> float:
    return metrics.REGISTRY.get_sample_value(
        "pbxpipe_recordings_files_total", {"pbx": "acme", "outcome": "missing"}) or 0.0


# -- pure --------------------------------------------------------------------------------------


def test_plan_sync_skips_what_is_linked_and_what_is_not_kept() -> None:
    """A pass plans each recording not linked yet once; unanswered calls' files are not kept; a
    name outside the PBX's recording directory is reported, never read."""
    calls = [call(1, files=("a.wav", "b.wav")), call(2, answered=False, files=("r.wav",)),
             msgspec.structs.replace(call(3), recordings=("/etc/passwd",))]
    first = plan_sync(calls, {}, PBX_DIR)
    assert [u.spool_path for u, _ in first.uploads] == ["a.wav", "b.wav"]
    assert first.not_kept == [("acme", f"{PBX_DIR}/r.wav")]
    assert first.outside == [("acme", "/etc/passwd")]
    done = {u.key for u, _ in first.uploads[:1]}
    again = plan_sync(calls, {"acme:1": done}, PBX_DIR)
    assert [u.spool_path for u, _ in again.uploads] == ["b.wav"]
    assert plan_sync(calls[:1], {"acme:1": {u.key for u, _ in first.uploads}}, PBX_DIR).uploads == []


def test_spool_state_follows_the_uploaders_rules() -> None:
    """Complete once unchanged for stable_s (the modification time counts as the last change);
    absent is a wait until missing_s after the call ended, then missing."""
    rules = {"stable_s": 5.0, "missing_s": 60.0}
    assert spool_state(100, 990.0, now=1000.0, ended=980.0, **rules) == "ready"
    assert spool_state(100, 998.0, now=1000.0, ended=980.0, **rules) == "wait"
    assert spool_state(100, 5000.0, now=1000.0, ended=980.0, **rules) == "wait"  # clock skew
    assert spool_state(-1, 0.0, now=1000.0, ended=980.0, **rules) == "wait"
    assert spool_state(-1, 0.0, now=1000.0, ended=900.0, **rules) == "missing"


# -- against chDB and S3 -----------------------------------------------------------------------


@pytest.mark.integration
def test_sync_uploads_each_answered_recording_once_and_skips_unanswered(
    clean: ClickHouseStore, s3_url: str, tmp_path: Path  # noqa: F811
) -> None:
    """Calls stored without uploads (the Kafka deployment): one pass uploads each answered call's
    recording once and links it with size, duration and SHA-256; an unanswered call's file stays
    in the spool, neither uploaded nor linked; a second pass finds nothing to do."""
    wav = (CAPTURE / "recordings" / "in-1795539359.189.wav").read_bytes()
    blobs = {"1.wav": wav, "2.wav": os.urandom(70_000), "3.wav": os.urandom(1000)}
    for name, data in blobs.items():
        spool_file(tmp_path, name, data)
    spool_file(tmp_path, "ring.wav", b"RIFF ringing")
    write(clean, [call(1, files=("1.wav",)), call(2, files=("2.wav",)), call(3, files=("3.wav",)),
                  call(4, answered=False, files=("ring.wav",)), call(5)])
    objects = bucket(s3_url.removeprefix("http://"))
    other_pbx = RecordingsSync(clean, objects, settings(tmp_path, recordings_sync_pbx_ids="beta"))
    assert other_pbx.run_pass().calls == 0  # another PBX's spool: not these calls
    sync = RecordingsSync(clean, objects, settings(tmp_path, recordings_sync_pbx_ids="beta,acme"))

    first = sync.run_pass()
    assert (first.uploaded, first.pending, first.missing, first.failed) == (3, 0, 0, 0)
    rows = linked(clean)
    assert len(rows) == 3
    for n, (name, data) in enumerate(blobs.items(), start=1):
        [row] = [r for r in rows.values() if r["call_id"] == f"acme:{n}"]
        assert row["sha256"] == hashlib.sha256(data).hexdigest() and row["size_bytes"] == len(data)
        assert objects.get(row["key"]) == data
        info = objects.stat(row["key"])
        assert info is not None and info.metadata["sha256"] == row["sha256"]
    assert rows[next(k for k in rows if k.endswith("/1.wav"))]["duration_s"] == 15.0
    assert not any(k.endswith("ring.wav") for k in rows) and (tmp_path / "ring.wav").exists()
    assert sorted(o.key for o in objects.scan("rec/")) == sorted(rows)

    second = sync.run_pass()
    assert (second.calls, second.uploaded, second.pending) == (0, 0, 0)
    assert int(clean.query("SELECT count() AS n FROM recordings")[0]["n"]) == 3  # no re-insert


@pytest.mark.integration
def test_with_delete_source_the_pbx_file_goes_only_once_linked(
    clean: ClickHouseStore, s3_url: str, tmp_path: Path  # noqa: F811
) -> None:
    """recordings_delete_source: an answered call's file leaves the spool once its upload was read
    back and its row written; an unanswered call's file is deleted without an upload; a file whose
    upload failed stays for the next pass."""
    spool_file(tmp_path, "kept.wav", b"answered" * 100)
    spool_file(tmp_path, "ring.wav", b"ringing")
    spool_file(tmp_path, "fails.wav", b"not this time")
    write(clean, [call(1, files=("kept.wav",)), call(2, answered=False, files=("ring.wav",)),
                  call(3, files=("fails.wav",))])
    objects = bucket(s3_url.removeprefix("http://"))
    s = settings(tmp_path, recordings_delete_source=True, recordings_retries=1)

    def open_source(p: Path) -> Any:
        if p.name == "fails.wav":
            raise ConnectionResetError("network dropped")
        return open(p, "rb")

    sync = RecordingsSync(clean, objects, s, uploader=lambda: RecordingUploader(
        objects, clean, s, open_source=open_source))
    result = sync.run_pass()
    assert (result.uploaded, result.not_kept, result.failed, result.pending) == (1, 1, 1, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fails.wav"]
    [row] = linked(clean).values()
    assert row["source"].endswith("kept.wav") and objects.get(row["key"]) == b"answered" * 100
    assert RecordingsSync(clean, objects, s).run_pass().uploaded == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_a_file_that_appears_late_is_counted_once_then_picked_up(
    clean: ClickHouseStore, s3_url: str, tmp_path: Path  # noqa: F811
) -> None:
    """A recording absent past recordings_missing_s is counted and logged once, not fatal, and
    tried again each pass; when it appears, a later pass uploads it. A file still being written
    waits for a later pass without holding this one up."""
    spool_file(tmp_path, "busy.wav", b"x" * 500, age_s=0.0)  # MixMonitor is still writing it
    write(clean, [call(1, files=("late.wav",)), call(2, files=("busy.wav",), ended_ago=1.0)])
    sync = RecordingsSync(clean, bucket(s3_url.removeprefix("http://")), settings(tmp_path))
    before = missing_count()

    with capture_logs() as logs:
        first = sync.run_pass()
        second = sync.run_pass()
    assert (first.uploaded, first.missing, first.pending) == (0, 1, 1)
    assert (second.uploaded, second.missing, second.pending) == (0, 1, 1)
    assert [e["event"] for e in logs].count("recording_missing") == 1
    assert [e["event"] for e in logs].count("recordings_synced") == 2  # one line per pass
    assert missing_count() == before + 1
    assert metrics.REGISTRY.get_sample_value("pbxpipe_recordings_missing_files", {"pbx": "acme"}) == 1

    spool_file(tmp_path, "late.wav", b"found it")
    spool_file(tmp_path, "busy.wav", b"x" * 900)  # finished an hour ago, as far as mtime goes
    third = sync.run_pass()
    assert (third.uploaded, third.missing, third.pending) == (2, 0, 0)
    assert {k.rsplit("/", 1)[1] for k in linked(clean)} == {"late.wav", "busy.wav"}
    assert metrics.REGISTRY.get_sample_value("pbxpipe_recordings_missing_files", {"pbx": "acme"}) == 0


@pytest.mark.integration
def test_a_pass_cut_short_by_the_object_store_going_down_loses_nothing(
    clean: ClickHouseStore, s3_url: str, tmp_path: Path  # noqa: F811
) -> None:
    """The object store goes away in the middle of a pass: what was uploaded is linked, the rest
    fails after its retries and the pass stops early instead of trying every file; with the store
    back, the next pass uploads exactly the rest, each object complete and linked once."""
    port = int(s3_url.rsplit(":", 1)[1])
    gate = TcpGate(port)
    try:
        objects = bucket(f"127.0.0.1:{gate.port}",
                         urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(5.0)))
        blobs = {f"{n}.wav": os.urandom(50_000 + n) for n in range(1, 21)}
        for name, data in blobs.items():
            spool_file(tmp_path, name, data)
        write(clean, [call(n, files=(f"{n}.wav",), ended_ago=HOUR - n) for n in range(1, 21)])
        s = settings(tmp_path, recordings_concurrency=1, recordings_retries=2)
        opened: list[Path] = []

        def open_source(p: Path) -> Any:
            opened.append(p)
            if len({*opened}) == 3:
                gate.close()  # MinIO goes down while the pass is under way
            return open(p, "rb")

        def uploader() -> RecordingUploader:
            return RecordingUploader(objects, clean, s, open_source=open_source,
                                     backoff_initial_s=0.01, backoff_max_s=0.05)

        with capture_logs() as logs:
            cut = RecordingsSync(clean, objects, s, uploader=uploader).run_pass()
        assert cut.uploaded == 2 and cut.aborted and cut.pending == 18
        assert len({*opened}) < 20  # it stopped trying once a whole round had failed
        assert next(e for e in logs if e["event"] == "recordings_synced")["log_level"] == "warning"
        assert len(linked(clean)) == 2

        gate.open()
        done = RecordingsSync(clean, objects, s).run_pass()
        assert (done.uploaded, done.pending, done.aborted) == (18, 0, "")
        rows = linked(clean)
        assert len(rows) == 20
        for row in rows.values():
            data = blobs[row["key"].rsplit("/", 1)[1]]
            assert objects.get(row["key"]) == data and row["sha256"] == hashlib.sha256(data).hexdigest()
        assert RecordingsSync(clean, objects, s).run_pass().uploaded == 0
    finally:
        gate.shutdown()


# -- the commands --------------------------------------------------------------------------------


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode()


@pytest.mark.integration
def test_commands_sync_watch_and_list_holds(tmp_path: Path) -> None:
    """Replay without a spool stores calls only; `recordings sync` uploads the capture's two
    recordings, a second run none; `recordings watch` serves /metrics, /healthz and /readyz and
    stops on SIGTERM; `retention holds` lists the hold just placed."""
    spool = tmp_path / "spool"
    shutil.copytree(CAPTURE / "recordings", spool)
    env = {"PATH": "/usr/bin:/bin", "PBXPIPE_LOG_FORMAT": "json",
           "PBXPIPE_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'ch'}",
           "PBXPIPE_OBJECT_STORE": f"dir://{tmp_path / 'objects'}"}

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*PBXPIPE, *args], capture_output=True, text=True, timeout=120,
                              env={**env, **extra}, check=False)

    done = run("replay", str(CAPTURE / "ami_raw.log"), "--pbx-profile",
               str(FIXTURES / "asterisk_profile.toml"))
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "objects").exists() or not list((tmp_path / "objects").rglob("*.wav"))

    no_spool = run("recordings", "sync")
    assert no_spool.returncode == 1 and "PBXPIPE_RECORDINGS_SPOOL" in no_spool.stderr
    first = run("recordings", "sync", "--spool", str(spool), "--lookback-days", "36500")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("2 uploaded, 0 pending, 0 missing")
    assert sorted(p.name for p in (tmp_path / "objects").rglob("*.wav")) == [
        "in-1795539359.189.wav", "out-1795539329.163.wav"]
    again = run("recordings", "sync", "--spool", str(spool), "--lookback-days", "36500")
    assert again.stdout.startswith("0 uploaded, 0 pending, 0 missing"), again.stdout

    port = free_port()
    watch = subprocess.Popen([*PBXPIPE, "recordings", "watch", "--spool", str(spool),
                              "--metrics-port", str(port), "--interval", "0.2"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(port)
        deadline = time.monotonic() + 30
        passed = 'pbxpipe_retention_job_last_success_timestamp_seconds{job="recordings_sync"}'
        # ready, and a pass has completed (the gauges are set before its success time)
        while _get(port, "/readyz")[0] != 200 or passed not in _get(port, "/metrics")[1]:
            assert time.monotonic() < deadline, "watch never became ready or never passed"
            time.sleep(0.2)
        assert _get(port, "/healthz")[0] == 200
        assert "pbxpipe_recordings_pending_files" in _get(port, "/metrics")[1]
    finally:
        watch.send_signal(signal.SIGTERM)
        _, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    assert '"event": "recordings_synced"' in err

    hold = run("retention", "hold", "call", "acme:1795539329.162", "--reason", "case 42")
    assert hold.returncode == 0, hold.stderr
    listed = json.loads(run("retention", "holds", "--json").stdout)
    assert [(h["kind"], h["value"], h["reason"]) for h in listed] == [
        ("call", "acme:1795539329.162", "case 42")]
    assert listed[0]["created_by"] and listed[0]["created_at"].endswith("+00:00")
    table = run("retention", "holds").stdout
    assert listed[0]["hold_id"] in table and "case 42" in table
