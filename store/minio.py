"""The object store on MinIO (or any S3) through the minio client: production's ``ObjectStore``.

A bucket this module creates has object lock enabled, so recordings under legal hold cannot be
deleted by anyone (lifecycle rules included) until the hold is released.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import BinaryIO
from urllib.parse import urlsplit

import structlog
from minio import Minio
from minio.commonconfig import ENABLED, GOVERNANCE, CopySource, Filter
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule
from minio.retention import Retention
from minio.sse import SseS3

from contracts.errors import ConfigError, ObjectStoreError
from store.objects import LifecycleRule, ObjectInfo

log = structlog.get_logger("store.minio")

MIN_PART_SIZE = 5 << 20  # S3's smallest multipart part


class MinioObjectStore:
    def __init__(self, client: Minio, bucket: str, *, sse: bool = False,
                 part_size: int = 16 << 20, create: bool = True) -> None:
        self.client = client
        self.bucket = bucket
        self.sse = SseS3() if sse else None
        self.part_size = max(part_size, MIN_PART_SIZE)
        self.location = f"s3://{bucket}"
        self.links = True
        self._lock: bool | None = None
        if create:
            try:
                if not client.bucket_exists(bucket):
                    client.make_bucket(bucket, object_lock=True)
                    log.info("bucket_created", bucket=bucket, object_lock=True)
            except S3Error as e:
                if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise ObjectStoreError(f"cannot create bucket {bucket}: {e.code} {e.message}") from None
            except (MinioException, OSError) as e:
                raise ObjectStoreError(f"object store {self.location} unreachable: {e}") from None

    @classmethod
    def from_url(cls, url: str, *, access_key: str, secret_key: str, region: str = "us-east-1",
                 sse: bool = False, part_size: int = 16 << 20) -> MinioObjectStore:
        parts = urlsplit(url)
        bucket = parts.path.strip("/")
        if not parts.hostname or not bucket or "/" in bucket:
            raise ConfigError(f"object store URL must be http(s)://host:port/<bucket>, got {url!r}")
        endpoint = parts.hostname + (f":{parts.port}" if parts.port else "")
        client = Minio(endpoint, access_key=access_key or None, secret_key=secret_key or None,
                       secure=parts.scheme == "https", region=region)
        return cls(client, bucket, sse=sse, part_size=part_size)

    def _fail(self, what: str, e: Exception) -> ObjectStoreError:
        detail = f"{e.code}: {e.message}" if isinstance(e, S3Error) else str(e)
        return ObjectStoreError(f"{what} in {self.location} failed: {detail}")

    def put(self, key: str, data: BinaryIO, size: int, *, content_type: str,
            metadata: dict[str, str], retain_until: float | None = None) -> None:
        # minio switches to multipart above part_size and aborts the upload if a part fails,
        # so an interrupted put leaves no object and no dangling parts.
        try:
            written = self.client.put_object(self.bucket, key, data, size,
                                             content_type=content_type, metadata=dict(metadata),
                                             sse=self.sse, part_size=self.part_size,
                                             num_parallel_uploads=1)
            if retain_until is not None:
                # set on the version just written: S3 takes a retention on PutObject only with
                # a Content-MD5 the streaming upload does not have
                until = datetime.datetime.fromtimestamp(retain_until, datetime.UTC)
                self.client.set_object_retention(self.bucket, key,
                                                 Retention(GOVERNANCE, until.replace(microsecond=0)),
                                                 version_id=written.version_id)
        except (MinioException, ValueError) as e:
            raise self._fail(f"put {key}", e) from e

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self.client.stat_object(self.bucket, key)
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return None
            raise self._fail(f"stat {key}", e) from e
        md = {k.lower().removeprefix("x-amz-meta-"): v for k, v in (st.metadata or {}).items()
              if k.lower().startswith("x-amz-meta-")}
        modified = st.last_modified.timestamp() if st.last_modified else 0.0
        headers = {k.lower(): v for k, v in (st.metadata or {}).items()}
        until = headers.get("x-amz-object-lock-retain-until-date")
        return ObjectInfo(key=key, size=st.size or 0, modified=modified,
                          content_type=st.content_type or "", metadata=md,
                          legal_hold=headers.get("x-amz-object-lock-legal-hold") == "ON",
                          retain_until=datetime.datetime.fromisoformat(until).timestamp()
                          if until else None)

    def get(self, key: str) -> bytes:
        try:
            resp = self.client.get_object(self.bucket, key)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()
        except S3Error as e:
            raise self._fail(f"get {key}", e) from e

    def copy(self, src: str, dst: str) -> None:
        try:
            self.client.copy_object(self.bucket, dst, CopySource(self.bucket, src), sse=self.sse)
        except S3Error as e:
            raise self._fail(f"copy {src} -> {dst}", e) from e

    def delete(self, key: str, *, bypass_governance: bool = False) -> None:
        try:
            # with versioning (object lock) remove every version, or the bytes would survive
            versions = [o.version_id for o in self.client.list_objects(
                self.bucket, prefix=key, include_version=True) if o.object_name == key]
            errors = list(self.client.remove_objects(
                self.bucket, [DeleteObject(key, vid) for vid in versions or [None]],
                bypass_governance_mode=bypass_governance))
        except S3Error as e:
            raise self._fail(f"delete {key}", e) from e
        if errors:
            first = errors[0]
            raise ObjectStoreError(f"delete {key} in {self.location} failed: {first.code}: "
                                   f"{first.message}")

    def scan(self, prefix: str) -> Iterator[ObjectInfo]:
        try:
            for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
                if o.object_name is None or o.is_dir:
                    continue
                yield ObjectInfo(key=o.object_name, size=o.size or 0,
                                 modified=o.last_modified.timestamp() if o.last_modified else 0.0)
        except S3Error as e:
            raise self._fail(f"list {prefix}", e) from e

    def presigned_url(self, key: str, ttl_s: int, *, download_name: str | None = None) -> str:
        if self.stat(key) is None:
            raise ObjectStoreError(f"no object {key!r} in {self.location}")
        headers: dict[str, str | list[str] | tuple[str]] | None = None
        if download_name is not None:
            safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in download_name)
            headers = {"response-content-disposition": f'attachment; filename="{safe}"'}
        return self.client.presigned_get_object(self.bucket, key,
                                                expires=datetime.timedelta(seconds=ttl_s),
                                                response_headers=headers)

    def open(self, key: str) -> BinaryIO:
        try:
            return self.client.get_object(self.bucket, key)  # type: ignore[return-value]
        except S3Error as e:
            raise self._fail(f"get {key}", e) from e

    def set_lifecycle(self, rules: list[LifecycleRule]) -> None:
        try:
            if not rules:
                self.client.delete_bucket_lifecycle(self.bucket)
                return
            config = LifecycleConfig([
                Rule(ENABLED, rule_filter=Filter(prefix=r.prefix), rule_id=r.rule_id,
                     expiration=Expiration(days=r.days))
                for r in rules
            ])
            self.client.set_bucket_lifecycle(self.bucket, config)
        except S3Error as e:
            raise self._fail("set lifecycle", e) from e

    def lifecycle(self) -> list[LifecycleRule]:
        try:
            config = self.client.get_bucket_lifecycle(self.bucket)
        except S3Error as e:
            if e.code == "NoSuchLifecycleConfiguration":
                return []
            raise self._fail("get lifecycle", e) from e
        out = []
        for r in (config.rules if config else []):
            prefix = (r.rule_filter.prefix if r.rule_filter else None) or ""
            days = r.expiration.days if r.expiration and r.expiration.days else 0
            out.append(LifecycleRule(rule_id=r.rule_id or "", prefix=prefix, days=days))
        return out

    def supports_legal_hold(self) -> bool:
        if self._lock is None:
            try:
                self.client.get_object_lock_config(self.bucket)
                self._lock = True
            except S3Error:
                self._lock = False
        return self._lock

    def supports_object_lock(self) -> bool:
        return self.supports_legal_hold()  # both need the bucket's object lock

    def set_legal_hold(self, key: str, on: bool) -> None:
        try:
            if on:
                self.client.enable_object_legal_hold(self.bucket, key)
            else:
                self.client.disable_object_legal_hold(self.bucket, key)
        except S3Error as e:
            raise self._fail(f"legal hold {key}", e) from e
