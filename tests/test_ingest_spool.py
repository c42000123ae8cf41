"""ingest's spool across a machine crash: what sync() made durable survives a power loss, and a
cursor a crash left unreadable opens the spool at its oldest record instead of failing."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from contracts import kafka as k
from contracts.config import load_settings
from contracts.metrics import REGISTRY
from ingest.spool import Spool


def rec(n: int) -> tuple[bytes, bytes, bytes, float]:
    return f"pbx1:{n % 7}".encode(), f"value-{n}".encode() * (n % 5 + 1), k.KIND_ENVELOPE, float(n)


ITEMS = [rec(n) for n in range(60)]


def spool_with_a_consumed_head(directory: Path) -> None:
    """Six segments of ten records (segment_bytes=1: every append starts a new one); 25 records
    consumed and synced, so segments 0 and 1 are gone and the cursor is inside segment 2."""
    spool = Spool(directory, segment_bytes=1)
    for n in range(0, 60, 10):
        spool.append(ITEMS[n : n + 10])
    spool.peek(25)
    spool.consume()
    spool.close()


def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every os.fsync and os.fdatasync from now on: (which, the path of the file or directory)."""
    calls: list[tuple[str, str]] = []

    def recording(which: str, real: Callable[[int], None]) -> Callable[[int], None]:
        def call(fd: int) -> None:
            calls.append((which, os.readlink(f"/proc/self/fd/{fd}")))
            real(fd)
        return call

    monkeypatch.setattr(os, "fsync", recording("fsync", os.fsync))
    monkeypatch.setattr(os, "fdatasync", recording("fdatasync", os.fdatasync))
    return calls


def test_a_good_cursor_opens_the_spool_where_it_was_left(tmp_path: Path) -> None:
    """The control for the test below: the consumed records are not given again."""
    spool_with_a_consumed_head(tmp_path)
    assert (tmp_path / "cursor").read_bytes().startswith(b"2:")
    assert min(p.name for p in tmp_path.glob("*.spool")) == "000000000002.spool"
    spool = Spool(tmp_path, segment_bytes=1)
    assert not spool.cursor_recovered
    assert spool.peek(100) == ITEMS[25:]
    spool.close()


@pytest.mark.parametrize("cursor", [
    b"",  # a power loss between creating the file and writing it
    b"\0" * 8,  # a block the file system zeroed
    b"not a cursor",
    b"9:0",  # a segment that does not exist
    b"0:0",  # a segment already deleted
    b"2:3",  # no record starts there
    b"2:100000",  # past the end of the segment
])
def test_an_unreadable_cursor_opens_the_spool_at_its_oldest_record(tmp_path: Path,
                                                                   cursor: bytes) -> None:
    """The spool opens, says so, and gives every record still on disk, from the oldest: the 25
    consumed ones from its first segment again (enrich drops them by their (epoch, seq)) and all
    that were not consumed. The cursor is rewritten, so only that one opening reports it."""
    spool_with_a_consumed_head(tmp_path)
    (tmp_path / "cursor").write_bytes(cursor)
    spool = Spool(tmp_path, segment_bytes=1)
    assert spool.cursor_recovered
    assert spool.bytes == sum(p.stat().st_size for p in tmp_path.glob("*.spool"))
    assert spool.peek(100) == ITEMS[20:]
    spool.close()
    spool = Spool(tmp_path, segment_bytes=1)
    assert not spool.cursor_recovered
    assert spool.peek(100) == ITEMS[20:]
    spool.close()


def test_sync_fdatasyncs_what_was_appended_and_only_that(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """After an append, sync() fdatasyncs the segment written to; with nothing appended (or
    consumed) since the last one, it touches the disk not at all."""
    spool = Spool(tmp_path)
    calls = fsyncs(monkeypatch)
    spool.sync()
    assert calls == []
    spool.append([rec(1), rec(2)])
    assert spool.unsynced
    spool.sync()
    assert calls == [("fdatasync", str(tmp_path / "000000000000.spool"))]
    assert not spool.unsynced
    calls.clear()
    spool.sync()
    assert calls == []
    spool.close()


def test_a_finished_segment_is_synced_before_its_successor_is_made_durable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A segment written to the end is fdatasync'd, then the directory is fsync'd so that the
    next segment's entry survives too."""
    spool = Spool(tmp_path, segment_bytes=1)
    calls = fsyncs(monkeypatch)
    spool.append([rec(1)])  # fills segment 0: the next append goes to segment 1
    spool.sync()
    assert calls == [("fdatasync", str(tmp_path / "000000000000.spool")), ("fsync", str(tmp_path))]
    spool.close()


def test_the_cursor_is_written_durably_before_consumed_segments_go(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cursor goes to a temporary file that is fsync'd, replaces the old one, and the
    directory is fsync'd; only then are the consumed segments deleted."""
    spool = Spool(tmp_path, segment_bytes=1)
    spool.append(ITEMS[:10])
    spool.append(ITEMS[10:20])
    spool.sync()
    calls = fsyncs(monkeypatch)
    seen: list[bool] = []
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        seen.append((tmp_path / "000000000000.spool").exists())
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    spool.peek(15)
    spool.consume()
    spool.sync()
    assert calls == [("fsync", str(tmp_path / "cursor.tmp")), ("fsync", str(tmp_path))]
    assert seen == [True]
    assert (tmp_path / "cursor").read_bytes().startswith(b"1:")
    assert not (tmp_path / "000000000000.spool").exists()
    spool.close()


def test_ingest_syncs_its_spool_in_a_thread_and_on_close(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames spilled to the spool are fdatasync'd by a worker thread, never on the event loop
    that reads AMI (Asterisk drops a manager client that stalls); what came after is synced by
    the time close() returns."""
    from ingest.stage import IngestStage

    threads: list[bool] = []  # True: on the event loop's thread
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        threads.append(threading.current_thread() is threading.main_thread())
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    settings = load_settings({"kafka_bootstrap": "127.0.0.1:9", "kafka_spool_dir": str(tmp_path),
                              "kafka_spool_fsync_s": 0.05, "queue_size": 1})
    frame = b"Event: Newchannel\r\nLinkedid: 1.1\r\n\r\n"

    async def scenario() -> int:
        stage = IngestStage(settings)
        stage.on_frames(1, 1, [frame], 0.0)  # over queue_size: straight to the spool
        async with asyncio.timeout(30):
            while not threads:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # nothing more to sync: no second fdatasync
        synced = len(threads)
        stage.on_frames(1, 2, [frame], 0.0)
        stage.stop()
        await stage.close()
        return synced

    assert asyncio.run(scenario()) == 1
    assert threads == [False, False]
    spool = Spool(tmp_path / "pbx1")
    assert len(spool.peek(10)) == 2
    spool.close()


def test_ingest_reports_a_recovered_cursor_once(tmp_path: Path) -> None:
    """A spool whose cursor a crash left unreadable is logged and counted when ingest starts."""
    from ingest.stage import IngestStage

    spool_with_a_consumed_head(tmp_path / "pbx1")
    (tmp_path / "pbx1" / "cursor").write_bytes(b"")
    settings = load_settings({"kafka_bootstrap": "127.0.0.1:9", "kafka_spool_dir": str(tmp_path)})
    counter = "pbxpipe_ingest_spool_cursor_recoveries_total"
    before = REGISTRY.get_sample_value(counter, {"pbx": "pbx1"}) or 0.0

    async def start() -> None:
        stage = IngestStage(settings)
        await stage.close()

    with capture_logs() as logs:
        asyncio.run(start())
        asyncio.run(start())
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["spool_cursor_recovered"]
    assert REGISTRY.get_sample_value(counter, {"pbx": "pbx1"}) == before + 1
