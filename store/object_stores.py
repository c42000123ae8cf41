"""The object store the settings name: a directory (``store.objects.LocalObjectStore``) or MinIO /
S3 (``store.minio.MinioObjectStore``). The one module that knows both implementations."""

from __future__ import annotations

from contracts.config import Settings
from contracts.errors import ConfigError
from store.objects import LocalObjectStore, ObjectStore


def open_object_store(settings: Settings) -> ObjectStore:
    """``dir:///<dir>`` (``dir:///./rel`` is relative) or ``http(s)://host:port/<bucket>``."""
    url = settings.object_store
    if url.startswith("dir://"):
        rest = url[len("dir://"):]
        if rest.startswith(("/./", "/../")):
            rest = rest[1:]
        if not rest.strip("/"):
            raise ConfigError(f"object store directory missing: dir:///<dir>, got {url!r}")
        return LocalObjectStore(rest)
    if url.startswith(("http://", "https://")):
        from store.minio import MinioObjectStore

        return MinioObjectStore.from_url(url, access_key=settings.s3_access_key,
                                         secret_key=settings.s3_secret_key,
                                         region=settings.s3_region, sse=settings.s3_sse,
                                         part_size=settings.recordings_part_size)
    raise ConfigError(f"unsupported object store {url!r}: dir:///<dir> or http(s)://host:port/<bucket>")
