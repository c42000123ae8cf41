"""A call's recording (302 to a short-lived link), the media links of a directory store, and the
recording access log."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, get
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect, Stream

from api import params
from api.http import client_address, context, problem, query_of, runtime_of
from api.recordings import services
from contracts.errors import BadParameter


class AccessRow(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    at: float
    subject: str
    role: str
    call_id: str
    recording: int
    action: str
    client: str


class AccessPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[AccessRow]
    next_cursor: str | None


@get("/v1/calls/{call_id:str}/recordings/{n:int}", summary="Play or download a recording",
     tags=["recordings"], status_code=302)
async def get_recording(
    request: Request[Any, Any, Any], call_id: FromPath[str], n: FromPath[int],
    download: Annotated[str | None, QueryParameter(description="1: ask the browser to save the file (needs the download right).")] = None,
) -> Response[Any]:
    """Checks the right to play (or download), writes one access-log row, then answers 302 to a
    link valid for at most 5 minutes. Seeking works (the link serves Range requests)."""
    query = query_of(request)
    params.only(query, ("download",))
    action: Literal["play", "download"] = "download" if params.boolean(query, "download") else "play"
    req = await context(request, action, session_ok=True)
    if not 1 <= n <= 1000:
        raise BadParameter("n", "a recording's number within its call, from 1")
    cid = params.call_id(call_id)
    rt = runtime_of(request)

    def work() -> services.Grant:
        with rt.pool.lease() as store:
            return services.grant(rt.reader(store), store, rt.objects, rt.signer, req, cid, n,
                                  action, client_address(request), rt.settings.api_recording_link_s)

    grant = await rt.run(work)
    return Redirect(grant.location, status_code=302, headers={"Cache-Control": "no-store"})


@get("/v1/media/{token:str}", summary="A recording link's bytes (directory store)",
     tags=["recordings"], include_in_schema=False)
async def get_media(request: Request[Any, Any, Any], token: FromPath[str]) -> Response[Any]:
    """The bytes a media link names, whole or a Range of them; 404 once the link has expired."""
    rt = runtime_of(request)
    link = services.media(rt.signer, token, rt.clock())
    info = await rt.run(rt.objects.stat, link["k"])
    if info is None:
        return problem(404, "Not found", "the recording is no longer stored", request)
    try:
        span = services.byte_range(request.headers.get("range"), info.size)
    except services.RangeNotSatisfiable:
        return Response(b"", status_code=416, headers={"Content-Range": f"bytes */{info.size}"})
    start, end = span if span is not None else (0, info.size - 1)
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start + 1),
               "Cache-Control": "private, no-store"}
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    if link.get("n"):
        headers["Content-Disposition"] = f'attachment; filename="{link["n"]}"'
    f = await rt.run(rt.objects.open, link["k"])
    return Stream(services.read(f, start, end - start + 1), status_code=206 if span else 200,
                  media_type=link.get("t") or "application/octet-stream", headers=headers)


@get("/v1/audit/recordings", summary="Who played or downloaded which recording", tags=["audit"])
async def recording_audit(
    request: Request[Any, Any, Any],
    since: Annotated[str | None, QueryParameter(description="From this time (ISO 8601).")] = None,
    until: Annotated[str | None, QueryParameter(description="Until this time, exclusive.")] = None,
    limit: Annotated[str | None, QueryParameter(description="Rows per page, 1-1000 (default 50).")] = None,
    cursor: Annotated[str | None, QueryParameter(description="next_cursor of the previous page.")] = None,
) -> AccessPage:
    """The tenant's recording access log, newest first (admins)."""
    req = await context(request, "audit")
    query = query_of(request)
    params.only(query, ("since", "until", "limit", "cursor", "tz"))
    _, zone = params.zone(query, req.tz)
    lo, hi = params.time_range(query, zone)
    filters_id = params.fingerprint(lo.isoformat() if lo else None, hi.isoformat() if hi else None)
    after = params.cursor(query, filters_id)
    size = params.integer(query, "limit", default=params.DEFAULT_PAGE, low=1, high=params.MAX_PAGE)
    rt = runtime_of(request)

    def work() -> list[dict[str, Any]]:
        with rt.pool.lease() as store:
            return services.access_log(
                rt.reader(store), req, since_ms=round(lo.timestamp() * 1000) if lo else None,
                until_ms=round(hi.timestamp() * 1000) if hi else None, after=after, limit=size)

    rows = await rt.run(work)
    items = [AccessRow(id=r["id"], at=r["at_ms"] / 1000, subject=r["subject"], role=r["role"],
                       call_id=r["call_id"], recording=r["recording"], action=r["action"],
                       client=r["client"]) for r in rows[:size]]
    next_cursor = None
    if len(rows) > size:
        last = rows[size - 1]
        next_cursor = params.encode_cursor(int(last["at_ms"]), last["id"], filters_id)
    return AccessPage(items=items, next_cursor=next_cursor)
