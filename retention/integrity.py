"""Tamper evidence, checked: an export against its signed manifest, a recording against the
SHA-256 taken when it was uploaded. Each check says what it looked at and, when it fails, why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from retention.export import MANIFEST
from retention.signing import SIGNATURE_SUFFIX, check_signature, key_id
from store.clickhouse import ClickHouseStore
from store.objects import ObjectStore, object_checksum, sha256_file
from store.tenancy import Scope, select

SIGNATURE = MANIFEST + SIGNATURE_SUFFIX


class Check(msgspec.Struct, frozen=True):
    what: str  # a file of the export, or a recording's object key
    ok: bool
    detail: str


class ExportFiles(Protocol):
    """Where an export lies: a directory, or a prefix in the object store."""

    location: str

    def names(self) -> list[str]: ...

    def read(self, name: str) -> bytes | None: ...

    def checksum(self, name: str) -> tuple[str, int] | None: ...


class DirFiles:
    def __init__(self, path: str | Path) -> None:
        self.root = Path(path)
        self.location = str(self.root)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_file())

    def read(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def checksum(self, name: str) -> tuple[str, int] | None:
        try:
            return sha256_file(self.root / name)
        except FileNotFoundError:
            return None


class ObjectFiles:
    def __init__(self, objects: ObjectStore, prefix: str) -> None:
        self.objects = objects
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.location = f"{objects.location}/{self.prefix}"

    def names(self) -> list[str]:
        return sorted(o.key[len(self.prefix):] for o in self.objects.scan(self.prefix)
                      if "/" not in o.key[len(self.prefix):])

    def read(self, name: str) -> bytes | None:
        if self.objects.stat(self.prefix + name) is None:
            return None
        return self.objects.get(self.prefix + name)

    def checksum(self, name: str) -> tuple[str, int] | None:
        return object_checksum(self.objects, self.prefix + name)


def verify_export(files: ExportFiles, public: Ed25519PublicKey) -> list[Check]:
    """The manifest's signature by ``public``, then every file it lists (size and SHA-256),
    then any file beside them that it does not list."""
    manifest = files.read(MANIFEST)
    if manifest is None:
        return [Check(MANIFEST, False, f"no {MANIFEST} in {files.location}")]
    signature = files.read(SIGNATURE)
    if signature is None:
        out = [Check(SIGNATURE, False, "missing: the export is not signed")]
    else:
        why = check_signature(public, manifest, signature)
        out = [Check(SIGNATURE, not why, why or f"good signature by key {key_id(public)}")]
    try:
        listed = json.loads(manifest)["files"]
        names = [(str(f["name"]), str(f["sha256"]), int(f["bytes"])) for f in listed]
    except (ValueError, KeyError, TypeError):
        return [*out, Check(MANIFEST, False, "not a manifest: no list of files with sha256 and bytes")]
    for name, sha, size in names:
        got = files.checksum(name)
        if got is None:
            out.append(Check(name, False, "missing"))
        elif got != (sha, size):
            out.append(Check(name, False, f"sha256 {got[0]} ({got[1]} bytes) is not the "
                                          f"manifest's {sha} ({size} bytes): the file was altered"))
        else:
            out.append(Check(name, True, f"{size} bytes, sha256 {sha}"))
    known = {name for name, _, _ in names} | {MANIFEST, SIGNATURE}
    out += [Check(name, False, "not in the manifest: added to the export")
            for name in files.names() if name not in known]
    return out


def verify_recording(store: ClickHouseStore, objects: ObjectStore, call_id: str) -> list[Check]:
    """Each recording of the call re-hashed from the object store against the SHA-256 and size
    the ``recordings`` table took at upload."""
    q = select(Scope.operator(), "recordings", "key, sha256, size_bytes", call_ids=[call_id],
               order_by="key")
    rows = store.query(q.sql, q.parameters)
    if not rows:
        return [Check(call_id, False, "no recording of this call is stored")]
    out = []
    for r in rows:
        got = object_checksum(objects, r["key"])
        want = (r["sha256"], int(r["size_bytes"]))
        if got is None:
            out.append(Check(r["key"], False, "missing from the object store"))
        elif got != want:
            out.append(Check(r["key"], False, f"sha256 {got[0]} ({got[1]} bytes) is not the "
                                              f"{want[0]} ({want[1]} bytes) taken at upload"))
        else:
            out.append(Check(r["key"], True, f"{want[1]} bytes, sha256 {want[0]} as uploaded"))
    return out
