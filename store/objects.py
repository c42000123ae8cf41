"""Object storage for recordings and exports: one small interface, two implementations.

``ObjectStore`` is what the uploader, retention, export and erasure use. ``LocalObjectStore``
(a directory: the embedded default) and ``store.minio.MinioObjectStore`` (MinIO / S3: production)
have the same shape, like httpx's MockTransport next to its real transports;
``store.object_stores.open_object_store`` opens the one the settings name. Keys are
``/``-separated; metadata keys are lower-case.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

import msgspec

from contracts.errors import ObjectStoreError


class ObjectInfo(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    size: int
    modified: float  # epoch seconds
    content_type: str = ""
    metadata: dict[str, str] = {}
    legal_hold: bool = False
    retain_until: float | None = None  # object lock (governance mode): not deleted before then


class LifecycleRule(msgspec.Struct, frozen=True, kw_only=True):
    """Objects under ``prefix`` expire ``days`` after they were written."""

    rule_id: str
    prefix: str
    days: int


class ObjectStore(Protocol):
    """Where recordings and exports live."""

    location: str  # for logs and manifests: "s3://bucket" or "dir:///path"
    links: bool  # presigned_url gives a link any browser can follow (S3), not a local file's

    def put(self, key: str, data: BinaryIO, size: int, *, content_type: str,
            metadata: dict[str, str], retain_until: float | None = None) -> None:
        """Write ``size`` bytes read from ``data`` (large ones in parts); overwrites ``key``.
        ``retain_until``: lock the object in governance mode until then (epoch seconds; only
        where :meth:`supports_object_lock`)."""
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """The object's size and metadata, None when absent."""
        ...

    def get(self, key: str) -> bytes: ...

    def open(self, key: str) -> BinaryIO:
        """The object's bytes as a file to read (and, for a directory, to seek)."""
        ...

    def copy(self, src: str, dst: str) -> None: ...

    def delete(self, key: str, *, bypass_governance: bool = False) -> None:
        """Remove ``key`` (absent is fine). Raises ObjectStoreError if a legal hold forbids it, or
        a governance-mode lock that ``bypass_governance`` does not lift (the S3 user needs
        s3:BypassGovernanceRetention to)."""
        ...

    def scan(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def presigned_url(self, key: str, ttl_s: int, *, download_name: str | None = None) -> str:
        """A link that reads the object without credentials until it expires; with
        ``download_name`` the answer asks the browser to save it under that name."""
        ...

    def set_lifecycle(self, rules: list[LifecycleRule]) -> None:
        """Replace the expiry rules (an empty list removes them)."""
        ...

    def lifecycle(self) -> list[LifecycleRule]: ...

    def supports_legal_hold(self) -> bool: ...

    def set_legal_hold(self, key: str, on: bool) -> None: ...

    def supports_object_lock(self) -> bool:
        """Whether objects can be locked for a retention period (``put``'s ``retain_until``)."""
        ...


class LocalObjectStore:
    """Objects as files under ``root``; metadata and holds in a ``.meta.json`` beside each file.

    Writes go to a temporary file renamed into place, so a reader never sees half an object. The
    lifecycle rules are stored in ``.lifecycle.json`` and enforced by :meth:`expire` (run by
    ``pbxpipe retention apply``), since there is no server to do it. Links are ``file://`` URLs:
    a directory has no way to make them expire.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.location = f"dir://{self.root}"
        self.links = False

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts) or key.startswith("/"):
            raise ObjectStoreError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    @staticmethod
    def _meta_path(path: Path) -> Path:
        return path.with_name(path.name + ".meta.json")

    def put(self, key: str, data: BinaryIO, size: int, *, content_type: str,
            metadata: dict[str, str], retain_until: float | None = None) -> None:
        if retain_until is not None:
            raise ObjectStoreError(f"{self.location} cannot lock objects: object lock needs S3")
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = self._read_meta(path)
        if meta.get("legal_hold"):
            raise ObjectStoreError(f"{key}: under legal hold, cannot be overwritten")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        written = 0
        try:
            with open(tmp, "wb") as out:
                while written < size:
                    chunk = data.read(min(1 << 20, size - written))
                    if not chunk:
                        break
                    out.write(chunk)
                    written += len(chunk)
            if written != size:
                raise ObjectStoreError(f"{key}: source ended after {written} of {size} bytes")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self._meta_path(path).write_text(json.dumps(
            {"content_type": content_type, "metadata": {k.lower(): v for k, v in metadata.items()},
             "legal_hold": False}))

    def _read_meta(self, path: Path) -> dict[str, object]:
        try:
            return dict(json.loads(self._meta_path(path).read_text()))
        except FileNotFoundError:
            return {}

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        meta = self._read_meta(path)
        raw_md = meta.get("metadata")
        md = {str(k): str(v) for k, v in raw_md.items()} if isinstance(raw_md, dict) else {}
        return ObjectInfo(key=key, size=st.st_size, modified=st.st_mtime,
                          content_type=str(meta.get("content_type", "")), metadata=md,
                          legal_hold=bool(meta.get("legal_hold", False)))

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectStoreError(f"no object {key!r} in {self.location}") from None

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError:
            raise ObjectStoreError(f"no object {key!r} in {self.location}") from None

    def copy(self, src: str, dst: str) -> None:
        s, d = self._path(src), self._path(dst)
        if not s.exists():
            raise ObjectStoreError(f"no object {src!r} in {self.location}")
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(s, d)
        meta = self._read_meta(s)
        meta["legal_hold"] = False
        self._meta_path(d).write_text(json.dumps(meta))

    def delete(self, key: str, *, bypass_governance: bool = False) -> None:
        path = self._path(key)
        if self._read_meta(path).get("legal_hold"):
            raise ObjectStoreError(f"{key}: under legal hold, cannot be deleted")
        path.unlink(missing_ok=True)
        self._meta_path(path).unlink(missing_ok=True)

    def scan(self, prefix: str) -> Iterator[ObjectInfo]:
        for dirpath, _, files in os.walk(self.root):
            for name in sorted(files):
                if name.endswith(".meta.json") or name.startswith("."):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    info = self.stat(key)
                    if info is not None:
                        yield info

    def presigned_url(self, key: str, ttl_s: int, *, download_name: str | None = None) -> str:
        path = self._path(key)
        if not path.exists():
            raise ObjectStoreError(f"no object {key!r} in {self.location}")
        return path.as_uri()

    def set_lifecycle(self, rules: list[LifecycleRule]) -> None:
        (self.root / ".lifecycle.json").write_bytes(msgspec.json.encode(rules))

    def lifecycle(self) -> list[LifecycleRule]:
        try:
            raw = (self.root / ".lifecycle.json").read_bytes()
        except FileNotFoundError:
            return []
        return msgspec.json.decode(raw, type=list[LifecycleRule])

    def supports_legal_hold(self) -> bool:
        return True

    def supports_object_lock(self) -> bool:
        return False

    def set_legal_hold(self, key: str, on: bool) -> None:
        path = self._path(key)
        meta = self._read_meta(path)
        if not path.exists():
            raise ObjectStoreError(f"no object {key!r} in {self.location}")
        meta["legal_hold"] = on
        self._meta_path(path).write_text(json.dumps(meta))

    def expire(self, now: float | None = None) -> int:
        """Delete objects older than their lifecycle rule allows (held ones stay); returns how many."""
        now = time.time() if now is None else now
        removed = 0
        for rule in self.lifecycle():
            for info in list(self.scan(rule.prefix)):
                if info.legal_hold or now - info.modified < rule.days * 86400:
                    continue
                self.delete(info.key)
                removed += 1
        return removed


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> tuple[str, int]:
    """SHA-256 hex digest and size of a file, read in chunks (constant memory)."""
    with open(path, "rb") as f:
        return sha256_stream(f, chunk)


def sha256_stream(f: BinaryIO, chunk: int = 1 << 20) -> tuple[str, int]:
    """SHA-256 hex digest and size of what is left to read in ``f``, in chunks."""
    h = hashlib.sha256()
    size = 0
    while block := f.read(chunk):
        h.update(block)
        size += len(block)
    return h.hexdigest(), size


def object_checksum(objects: ObjectStore, key: str) -> tuple[str, int] | None:
    """SHA-256 and size of a stored object's bytes, read in chunks; None when it is absent."""
    if objects.stat(key) is None:
        return None
    f = objects.open(key)
    try:
        return sha256_stream(f)
    finally:
        f.close()
