"""Tamper evidence: signed export manifests checked file by file (a directory, the object store,
an S3 bucket on moto), recordings re-hashed against the SHA-256 taken at upload, recordings
locked in governance mode for their retention (moto) with erasure bypassing the lock."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CAPTURE, FIXTURES
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from contracts.config import load_settings
from contracts.errors import ConfigError, ObjectStoreError
from retention.integrity import DirFiles, ObjectFiles, verify_export
from retention.policies import make_policy, recording_lock_until
from retention.signing import check_signature, create_keys, load_private_key, load_public_key, sign
from retention.sync import RecordingsSync
from store.minio import MinioObjectStore
from store.objects import LocalObjectStore
from tests.s3server import serving

PBXPIPE = [sys.executable, "-c", "from pbxpipe.cli import main; main()"]


# -- keys and signatures ------------------------------------------------------------------------


def test_keys_are_made_once_and_private_to_their_owner(tmp_path):
    """`keys create`'s pair: the private key mode 0600, the public key beside it; a second
    create never overwrites either; the public key loads from either file."""
    public_path, public = create_keys(tmp_path / "sign.pem")
    assert public_path == tmp_path / "sign.pem.pub"
    assert stat.S_IMODE(os.stat(tmp_path / "sign.pem").st_mode) == 0o600
    with pytest.raises(ConfigError, match="never overwritten"):
        create_keys(tmp_path / "sign.pem")
    assert load_public_key(public_path) == public == load_public_key(tmp_path / "sign.pem")


def test_a_key_that_is_not_ed25519_is_refused(tmp_path):
    """An RSA key, or a file that is no key, is a one-line ConfigError naming the file."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "rsa.pem").write_bytes(rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        load_private_key(tmp_path / "rsa.pem")
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(ConfigError, match="junk.pem"):
        load_private_key(tmp_path / "junk.pem")
    with pytest.raises(ConfigError, match="cannot read"):
        load_public_key(tmp_path / "absent.pem")


def test_a_signature_holds_for_the_manifest_it_signed_and_no_other(tmp_path):
    """Good for the bytes signed; a changed byte, another key or a file that is no signature each
    fail with the reason."""
    create_keys(tmp_path / "a.pem")
    create_keys(tmp_path / "b.pem")
    a, b = load_private_key(tmp_path / "a.pem"), load_private_key(tmp_path / "b.pem")
    manifest = b'{"files": []}'
    sig = sign(a, manifest)
    assert check_signature(a.public_key(), manifest, sig) == ""
    assert "altered" in check_signature(a.public_key(), manifest.replace(b"[]", b"[ ]"), sig)
    assert "not by the key given" in check_signature(b.public_key(), manifest, sig)
    assert "not a pbxpipe signature" in check_signature(a.public_key(), manifest, b"garbage")


def _export(files, key, tmp_path: Path) -> None:
    """A small export written by hand: two files, a manifest listing them, its signature."""
    data = {"calls.csv": b"call_id\nacme:1\n", "legs.csv": b"leg_id\n"}
    import hashlib

    listed = [{"name": n, "rows": 1, "bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
              for n, b in data.items()]
    manifest = json.dumps({"files": listed}).encode()
    files(dict(data, **{"manifest.json": manifest, "manifest.json.sig": sign(key, manifest)}))


@pytest.mark.parametrize("where", ["directory", "object store"])
def test_an_export_is_checked_file_by_file(tmp_path, where):
    """Signed and intact: every check passes. A file altered, missing or added, the manifest
    edited, or no signature: each is a failed check saying which and why."""
    create_keys(tmp_path / "k.pem")
    key = load_private_key(tmp_path / "k.pem")
    root = tmp_path / "export"
    root.mkdir()
    objects = LocalObjectStore(tmp_path / "objects")

    def write(contents: dict[str, bytes]) -> None:
        for name, data in contents.items():
            if where == "directory":
                (root / name).write_bytes(data)
            else:
                objects.put(f"exports/acme/{name}", io.BytesIO(data), len(data),
                            content_type="application/octet-stream", metadata={})

    def remove(name: str) -> None:
        if where == "directory":
            (root / name).unlink()
        else:
            objects.delete(f"exports/acme/{name}")

    files = DirFiles(root) if where == "directory" else ObjectFiles(objects, "exports/acme")
    _export(write, key, tmp_path)

    def failed() -> list[tuple[str, str]]:
        return [(c.what, c.detail) for c in verify_export(files, key.public_key()) if not c.ok]

    assert failed() == []
    assert len(verify_export(files, key.public_key())) == 3
    write({"calls.csv": b"call_id\nacme:2\n"})
    assert [w for w, d in failed()] == ["calls.csv"] and "altered" in failed()[0][1]
    write({"calls.csv": b"call_id\nacme:1\n", "extra.csv": b"x"})
    assert failed() == [("extra.csv", "not in the manifest: added to the export")]
    remove("extra.csv")
    remove("legs.csv")
    assert failed() == [("legs.csv", "missing")]
    write({"legs.csv": b"leg_id\n", "manifest.json": b'{"files": []}'})
    assert [w for w, _ in failed()] == ["manifest.json.sig", "calls.csv", "legs.csv"]
    _export(write, key, tmp_path)
    remove("manifest.json.sig")
    assert failed() == [("manifest.json.sig", "missing: the export is not signed")]


# -- object lock --------------------------------------------------------------------------------


def test_a_recording_is_locked_for_its_customers_retention():
    """Counted from the call's start, the customer's recording days, else the default's."""
    policies = {"acme": make_policy("acme", 365, 90)}
    default = make_policy("", 365, 30)
    assert recording_lock_until(1000.0, "acme", policies, default) == 1000.0 + 90 * 86400
    assert recording_lock_until(1000.0, "beta", policies, default) == 1000.0 + 30 * 86400


def test_object_lock_needs_a_store_that_has_it(tmp_path):
    """recordings_object_lock=governance on a directory store, or an unknown mode, is a
    ConfigError before any upload."""
    for mode, says in (("governance", "no object lock"), ("compliance", "is not governance")):
        settings = load_settings({"recordings_object_lock": mode,
                                  "recordings_spool": str(tmp_path)}, environ={})
        sync = RecordingsSync(None, LocalObjectStore(tmp_path / "o"), settings)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match=says):
            sync.run_pass()


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    with serving() as url:
        yield url


@pytest.mark.integration
def test_a_locked_object_is_deleted_only_with_a_bypass(s3_url):
    """On S3 with object lock, an object put with a retention date is locked in governance mode
    until then: a plain delete is refused with the reason; a delete bypassing governance removes
    every version."""
    objects = MinioObjectStore.from_url(f"{s3_url}/locked-objects", access_key="testing",
                                        secret_key="testing")
    assert objects.supports_object_lock()
    until = time.time() + 30 * 86400
    objects.put("rec/acme/a.wav", io.BytesIO(b"RIFF"), 4, content_type="audio/wav", metadata={},
                retain_until=until)
    info = objects.stat("rec/acme/a.wav")
    assert info is not None and info.retain_until == pytest.approx(until, abs=1)
    with pytest.raises(ObjectStoreError, match="object lock"):
        objects.delete("rec/acme/a.wav")
    assert objects.stat("rec/acme/a.wav") is not None
    objects.delete("rec/acme/a.wav", bypass_governance=True)
    assert objects.stat("rec/acme/a.wav") is None
    assert list(objects.client.list_objects(objects.bucket, prefix="rec/", include_version=True)) == []


@pytest.fixture(scope="module")
def on_s3(s3_url, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The first capture replayed, its recordings uploaded to S3 (moto) locked in governance mode
    for a customer's 90 days of recordings."""
    tmp = tmp_path_factory.mktemp("s3")
    env = {"PATH": "/usr/bin:/bin", "PBXPIPE_LOG_FORMAT": "json",
           "PBXPIPE_CLICKHOUSE_DSN": f"chdb://{tmp / 'ch'}",
           "PBXPIPE_OBJECT_STORE": f"{s3_url}/recordings", "PBXPIPE_S3_ACCESS_KEY": "testing",
           "PBXPIPE_S3_SECRET_KEY": "testing", "PBXPIPE_EXPORT_SIGNING_KEY": str(tmp / "k.pem"),
           "PBXPIPE_RECORDINGS_SPOOL": str(CAPTURE / "recordings"),
           "PBXPIPE_RECORDINGS_STABLE_S": "0.1", "PBXPIPE_RECORDINGS_OBJECT_LOCK": "governance"}
    create_keys(tmp / "k.pem")
    done = run(env, "retention", "set", "--customer", "acme", "--call-days", "365",
               "--recording-days", "90")
    assert done.returncode == 0, done.stderr
    done = run(env, "replay", str(CAPTURE / "ami_raw.log"), "--pbx-profile",
               str(FIXTURES / "asterisk_profile.toml"))
    assert done.returncode == 0, done.stderr
    return env


@pytest.mark.integration
def test_recordings_are_locked_for_their_retention_and_erasure_bypasses_it(on_s3, s3_url):
    """With recordings_object_lock=governance each uploaded recording is locked until the call's
    start + the customer's recording days; nothing deletes it plainly, and `erase` (which
    bypasses governance) removes it."""
    objects = MinioObjectStore.from_url(f"{s3_url}/recordings", access_key="testing",
                                        secret_key="testing")
    keys = sorted(o.key for o in objects.scan("rec/"))
    assert sorted(k.rsplit("/", 1)[-1] for k in keys) == ["in-1795539359.189.wav",
                                                          "out-1795539329.163.wav"]
    out = next(k for k in keys if "out-" in k)
    info = objects.stat(out)
    assert info is not None and info.retain_until == pytest.approx(1795539329.8 + 90 * 86400, abs=2)
    with pytest.raises(ObjectStoreError, match="object lock"):
        objects.delete(out)
    erased = run(on_s3, "erase", "--number", "+48 601 234 567")
    assert erased.returncode == 0, erased.stderr
    assert "1 recordings" in erased.stdout
    assert objects.stat(out) is None and objects.stat(next(k for k in keys if "in-" in k)) is not None


# -- the commands end to end --------------------------------------------------------------------


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The first capture replayed with its two recordings uploaded to a directory store."""
    tmp = tmp_path_factory.mktemp("integrity")
    env = {"PATH": "/usr/bin:/bin", "PBXPIPE_LOG_FORMAT": "json",
           "PBXPIPE_CLICKHOUSE_DSN": f"chdb://{tmp / 'ch'}",
           "PBXPIPE_OBJECT_STORE": f"dir://{tmp / 'objects'}",
           "PBXPIPE_RECORDINGS_SPOOL": str(CAPTURE / "recordings"),
           "PBXPIPE_RECORDINGS_STABLE_S": "0.1", "TMP": str(tmp)}
    done = subprocess.run([*PBXPIPE, "replay", str(CAPTURE / "ami_raw.log"), "--pbx-profile",
                           str(FIXTURES / "asterisk_profile.toml")], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PBXPIPE, *args], capture_output=True, text=True, timeout=120, env=env)


def last_line(done: subprocess.CompletedProcess[str]) -> str:
    return done.stderr.strip().splitlines()[-1]


@pytest.mark.integration
def test_a_signed_export_verifies_and_a_tampered_one_does_not(replayed):
    """`export` with PBXPIPE_EXPORT_SIGNING_KEY writes manifest.json.sig; `verify export` exits 0
    on it, and 1 naming the file once a byte of the data changed; an export made without the key
    fails as unsigned."""
    tmp = Path(replayed["TMP"])
    keys = run(replayed, "keys", "create", str(tmp / "sign.pem"))
    assert keys.returncode == 0, keys.stderr
    assert keys.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    env = {**replayed, "PBXPIPE_EXPORT_SIGNING_KEY": str(tmp / "sign.pem")}
    out = tmp / "export"
    done = run(env, "export", "--since", "2026-11-24", "--until", "2026-11-25", "--to", str(out))
    assert done.returncode == 0, done.stderr
    assert "manifest signed by key" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["calls.csv", "manifest.json", "manifest.json.sig"]
    good = run(replayed, "verify", "export", str(out), "--public-key", str(tmp / "sign.pem.pub"))
    assert good.returncode == 0, good.stderr
    assert good.stdout.count("ok ") == 2
    data = (out / "calls.csv").read_bytes()
    (out / "calls.csv").write_bytes(data.replace(b"answered", b"missed", 1))
    bad = run(replayed, "verify", "export", str(out), "--public-key", str(tmp / "sign.pem.pub"))
    assert bad.returncode == 1
    assert last_line(bad).startswith("pbxpipe: error: 1 of 2 checks failed: calls.csv: sha256")
    unsigned = tmp / "unsigned"
    assert run(replayed, "export", "--since", "2026-11-24", "--until", "2026-11-25",
               "--to", str(unsigned)).returncode == 0
    plain = run(replayed, "verify", "export", str(unsigned), "--public-key", str(tmp / "sign.pem.pub"))
    assert plain.returncode == 1 and "the export is not signed" in last_line(plain)
    nokey = run(replayed, "verify", "export", str(out))
    assert nokey.returncode == 1 and "no key to verify with" in last_line(nokey)


@pytest.mark.integration
def test_a_recording_is_rehashed_against_its_upload(replayed):
    """`verify recording` exits 0 while the stored object has the SHA-256 recorded at upload, 1
    once its bytes changed, 1 for a call without recordings."""
    call = "acme:1795539329.162"
    good = run(replayed, "verify", "recording", call)
    assert good.returncode == 0, good.stderr
    assert "as uploaded" in good.stdout
    stored = next((Path(replayed["PBXPIPE_OBJECT_STORE"][len("dir://"):])).rglob("out-*.wav"))
    data = bytearray(stored.read_bytes())
    data[1000] ^= 0xFF
    stored.write_bytes(bytes(data))
    bad = run(replayed, "verify", "recording", call)
    assert bad.returncode == 1 and "taken at upload" in last_line(bad)
    none = run(replayed, "verify", "recording", "acme:1795539179.0")
    assert none.returncode == 1 and "no recording of this call" in last_line(none)


@pytest.mark.integration
def test_an_export_to_s3_verifies_in_the_bucket(on_s3, s3_url):
    """An export written to s3://bucket/prefix is verified there; an object replaced in the
    bucket fails the check."""
    done = run(on_s3, "export", "--since", "2026-11-24", "--until", "2026-11-25", "--format",
               "parquet", "--to", "s3://exports/acme/2026-11")
    assert done.returncode == 0, done.stderr
    good = run(on_s3, "verify", "export", "s3://exports/acme/2026-11")
    assert good.returncode == 0, good.stderr + good.stdout
    bucket = MinioObjectStore.from_url(f"{s3_url}/exports", access_key="testing",
                                       secret_key="testing")
    bucket.put("acme/2026-11/calls.parquet", io.BytesIO(b"PAR1 not the export"), 19,
               content_type="application/vnd.apache.parquet", metadata={})
    bad = run(on_s3, "verify", "export", "s3://exports/acme/2026-11")
    assert bad.returncode == 1 and "calls.parquet: sha256" in last_line(bad)
