"""Recordings on a real S3 server (moto on 127.0.0.1, talked to with the minio client)."""

from __future__ import annotations

import hashlib
import io
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from conftest import CAPTURE

from contracts.config import load_settings
from contracts.records import CallRecord
from retention.recordings import StoredRecording, plan_uploads
from retention.uploader import RecordingUploader
from store.minio import MinioObjectStore
from store.objects import LifecycleRule
from tests.s3server import serving

pytestmark = pytest.mark.integration

RECORDINGS = CAPTURE / "recordings"



@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    with serving() as url:
        yield url


_n = 0


@pytest.fixture
def objects(s3_url: str) -> MinioObjectStore:
    global _n
    _n += 1
    return MinioObjectStore.from_url(f"{s3_url}/recordings-{_n}", access_key="testing",
                                     secret_key="testing", sse=True, part_size=5 << 20)


class Rows:
    def __init__(self) -> None:
        self.rows: list[Any] = []

    def write_structs(self, table: Any, items: Any, token: str) -> int:
        self.rows.extend(items)
        return len(items)


def record(answered: bool = True, recordings: tuple[str, ...] = (), **kw: Any) -> CallRecord:
    base: dict[str, Any] = {
        "call_id": "acme:1795539359.188", "pbx_id": "acme", "linkedid": "1795539359.188",
        "direction": "inbound", "caller": "+442071112222", "caller_name": "John Smith",
        "called": "+48221234510", "answered": answered, "first_answered_by": "105" if answered else None,
        "last_answered_by": "105" if answered else None, "status": "answered" if answered else "missed",
        "start": 1795539359.8, "answer": 1795539362.0 if answered else None, "end": 1795539377.8,
        "duration_s": 18.0, "wait_s": 2.2 if answered else None, "talk_s": 15.8 if answered else 0.0,
        "hangup_cause": 16, "hangup_cause_text": "Normal Clearing", "hangup_by": "caller",
        "extensions_rang": ("105",), "queue": "", "transferred": False, "forwarded": False,
        "recordings": recordings, "disposition": "ANSWERED", "incomplete": False, "version": 10,
    }
    base.update(kw)
    return CallRecord(**base)


def uploader(objects: Any, spool: Path, rows: Rows, **kw: Any) -> RecordingUploader:
    settings = load_settings({"recordings_spool": str(spool), "recordings_stable_s": 0.1,
                              "recordings_missing_s": 0.5, "recordings_concurrency": 2}, environ={})
    return RecordingUploader(objects, rows, settings, backoff_initial_s=0.01, backoff_max_s=0.05, **kw)


def submit(up: RecordingUploader, rec: CallRecord, since: float | None = None) -> None:
    """Hand a call's recordings to the uploader as a recordings pass does."""
    uploads, _ = plan_uploads(rec, up.pbx_dir)
    for u in uploads:
        up.submit(u, rec.end if since is None else since)


def test_answered_call_recording_is_uploaded_with_metadata_and_checksum(objects: MinioObjectStore) -> None:
    """The fixture's real MixMonitor WAV lands under rec/<tenant>/<date>/<linkedid>/, with content
    type, call metadata, its SHA-256, SSE, and a row giving size, duration and checksum."""
    rows = Rows()
    up = uploader(objects, RECORDINGS, rows)
    submit(up, record(recordings=("/var/spool/asterisk/monitor/in-1795539359.189.wav",)))
    up.close()
    assert up.failed == []
    [row] = rows.rows
    assert isinstance(row, StoredRecording)
    data = (RECORDINGS / "in-1795539359.189.wav").read_bytes()
    assert row.key == "rec/acme/2026/11/24/1795539359.188/in-1795539359.189.wav"
    assert row.sha256 == hashlib.sha256(data).hexdigest() and row.size_bytes == len(data)
    assert row.duration_s == 15.0  # the CDR's billsec for this call
    info = objects.stat(row.key)
    assert info is not None and info.content_type == "audio/wav"
    assert info.metadata["call-id"] == "acme:1795539359.188" and info.metadata["sha256"] == row.sha256
    assert info.metadata["direction"] == "inbound" and info.metadata["caller"] == "+442071112222"
    assert objects.get(row.key) == data


def test_a_growing_file_is_uploaded_only_once_complete(objects: MinioObjectStore, tmp_path: Path) -> None:
    """No MixMonitorStop on hangup: the uploader waits until the size holds still."""
    path = tmp_path / "grow.wav"
    path.write_bytes(b"a" * 1000)
    clock = [0.0]
    writes = iter([b"b" * 1000, b"c" * 1000])

    def sleep(s: float) -> None:  # the PBX keeps writing while we wait
        clock[0] += s
        chunk = next(writes, None)
        if chunk:
            with open(path, "ab") as f:
                f.write(chunk)

    rows = Rows()
    up = uploader(objects, tmp_path, rows, clock=lambda: clock[0], sleep=sleep)
    submit(up, record(recordings=("grow.wav",)), since=0.0)
    up.close()
    [row] = rows.rows
    assert row.size_bytes == 3000 and objects.get(row.key) == path.read_bytes()


def test_interrupted_upload_is_retried_and_leaves_one_complete_object(
    objects: MinioObjectStore, tmp_path: Path
) -> None:
    """A multipart upload that dies after its first part is retried: one complete object, same
    checksum, and no dangling multipart upload left in the bucket."""
    data = os.urandom(12 << 20)
    (tmp_path / "big.wav").write_bytes(data)
    attempts = []

    class Dying(io.BufferedReader):
        def read(self, n: int | None = -1) -> bytes:  # type: ignore[override]
            if self.tell() >= (6 << 20):
                raise ConnectionResetError("network dropped mid-upload")
            return super().read(n)

    def open_source(p: Path) -> BinaryIO:
        attempts.append(p)
        raw = open(p, "rb")  # noqa: SIM115
        return Dying(raw) if len(attempts) == 1 else raw  # type: ignore[arg-type]

    rows = Rows()
    up = uploader(objects, tmp_path, rows, open_source=open_source)
    submit(up, record(recordings=("big.wav",)))
    up.close()
    assert len(attempts) == 2 and up.failed == []
    [row] = rows.rows
    assert [o.key for o in objects.scan("rec/")] == [row.key]
    assert hashlib.sha256(objects.get(row.key)).hexdigest() == hashlib.sha256(data).hexdigest()
    uploads = objects.client._list_multipart_uploads(objects.bucket)
    assert not uploads.uploads


def test_lifecycle_rules_are_set_and_read_back(objects: MinioObjectStore) -> None:
    rules = [LifecycleRule(rule_id="pbxpipe-acme", prefix="rec/acme/", days=90),
             LifecycleRule(rule_id="pbxpipe-beta", prefix="rec/beta/", days=365)]
    objects.set_lifecycle(rules)
    assert sorted(objects.lifecycle(), key=lambda r: r.rule_id) == rules
    objects.set_lifecycle([])
    assert objects.lifecycle() == []


def test_presigned_url_reads_the_object_then_expires(objects: MinioObjectStore) -> None:
    """`recordings url` links fetch the exact bytes, without credentials, until they expire."""
    data = (RECORDINGS / "out-1795539329.163.wav").read_bytes()
    objects.put("rec/acme/x.wav", io.BytesIO(data), len(data), content_type="audio/wav", metadata={})
    url = objects.presigned_url("rec/acme/x.wav", 900)
    assert "X-Amz-Expires=900" in url
    with urllib.request.urlopen(url) as resp:
        assert resp.read() == data
    short = objects.presigned_url("rec/acme/x.wav", 1)
    time.sleep(2.1)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(short)
    assert e.value.code == 403
    e.value.close()


def test_object_under_legal_hold_cannot_be_deleted(objects: MinioObjectStore) -> None:
    """The bucket is created with object lock: a held object survives deletes until released."""
    from contracts.errors import ObjectStoreError

    objects.put("held/h1/a.wav", io.BytesIO(b"abc"), 3, content_type="audio/wav", metadata={})
    assert objects.supports_legal_hold()
    objects.set_legal_hold("held/h1/a.wav", True)
    with pytest.raises(ObjectStoreError):
        objects.delete("held/h1/a.wav")
    assert objects.get("held/h1/a.wav") == b"abc"
    objects.set_legal_hold("held/h1/a.wav", False)
    objects.delete("held/h1/a.wav")
    assert objects.stat("held/h1/a.wav") is None
