"""Playing and downloading a call's recording, and the log of who did.

Every grant writes one ``recording_access`` row (who, role, call, recording, play or download,
when, from where) before the link is handed out. The link lives at most ``api_recording_link_s``
(300 s): an object store's presigned URL (S3, MinIO), or, for a directory store, a link to this
service's own ``/v1/media/…``, signed the same way, which serves the bytes with Range support.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any, BinaryIO, Literal

import msgspec

from api.calls import services as calls
from api.runtime import Request
from api.signing import Signer
from contracts.access import RecordingAccess
from contracts.errors import NotFound
from store.clickhouse import ClickHouseStore
from store.objects import ObjectStore
from store.schema import RECORDING_ACCESS
from store.tenancy import ScopedReader, select

MAX_LINK_S = 300
MEDIA = "media"
CHUNK = 256 << 10


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    location: str  # where to send the client (302)
    access_id: str


def grant(reader: ScopedReader, writer: ClickHouseStore, objects: ObjectStore, signer: Signer,
          req: Request, call_id: str, n: int, action: Literal["play", "download"], client: str,
          link_s: int) -> Grant:
    """Authorised already for the action: find the recording in the caller's scope (NotFound
    otherwise), log the access, and make the short-lived link."""
    rec = calls.recording(reader, req, call_id, n)
    ttl = max(1, min(link_s, MAX_LINK_S))
    access = RecordingAccess(
        id=uuid.uuid4().hex, pbx_id=req.principal.tenant, at=req.now, subject=req.principal.subject,
        role=req.principal.role, call_id=call_id, recording=n, object_key=rec["key"], action=action,
        client=client[:200],
    )
    writer.write_structs(RECORDING_ACCESS, [access], f"recording_access:{access.id}")
    name = download_name(call_id, n, rec["key"]) if action == "download" else None
    if objects.links:
        location = objects.presigned_url(rec["key"], ttl, download_name=name)
    else:
        token = signer.sign(MEDIA, {"k": rec["key"], "t": rec["content_type"], "n": name},
                            req.now + ttl)
        location = f"/v1/media/{token}"
    return Grant(location=location, access_id=access.id)


def download_name(call_id: str, n: int, key: str) -> str:
    ext = key.rsplit(".", 1)[-1] if "." in key.rsplit("/", 1)[-1] else "bin"
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{call_id}-{n}.{ext}")


class RangeNotSatisfiable(Exception):
    pass


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (first, last) byte of a single ``Range: bytes=…`` over ``size`` bytes; None for the
    whole object (no header, or one this service does not serve partially, e.g. several ranges)."""
    if not header:
        return None
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":  # the last N bytes
        n = int(last)
        if n == 0:
            raise RangeNotSatisfiable
        return max(0, size - n), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise RangeNotSatisfiable
    return start, end


def media(signer: Signer, token: str, now: float) -> dict[str, Any]:
    """What a media link names, or NotFound (unknown, tampered with, or expired)."""
    data = signer.verify(MEDIA, token, now)
    if data is None or not isinstance(data.get("k"), str):
        raise NotFound("no such recording link (links last a few minutes: ask for a new one)")
    return data


def read(f: BinaryIO, start: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of ``f`` from ``start``, in chunks; closes ``f``."""
    try:
        f.seek(start)
        left = length
        while left > 0:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        f.close()


def access_log(reader: ScopedReader, req: Request, *, since_ms: int | None, until_ms: int | None,
               after: tuple[int, str] | None, limit: int) -> list[dict[str, Any]]:
    """The tenant's recording access log, newest first."""
    where: list[str] = []
    params: dict[str, Any] = {"limit": limit + 1}
    if since_ms is not None:
        where.append("at >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')")
        params["since_ms"] = since_ms
    if until_ms is not None:
        where.append("at < fromUnixTimestamp64Milli({until_ms:Int64}, 'UTC')")
        params["until_ms"] = until_ms
    if after is not None:
        where.append("(at < fromUnixTimestamp64Milli({after_ms:Int64}, 'UTC') OR "
                     "(at = fromUnixTimestamp64Milli({after_ms:Int64}, 'UTC') AND id < {after_id:String}))")
        params["after_ms"], params["after_id"] = after
    return reader.query(select(
        req.scope, "recording_access",
        "id, toUnixTimestamp64Milli(at) AS at_ms, subject, role, call_id, recording, action, client",
        where=where, parameters=params, order_by="at DESC, id DESC", limit="{limit:UInt32}",
        final=False))
