"""``/v1/calls``: the history (JSON, or CSV with ``Accept: text/csv``) and one call in full."""

from __future__ import annotations

import csv
import io
from typing import Annotated, Any

from litestar import Request, Response, get
from litestar.params import FromPath, QueryParameter

from api import params
from api.calls import services
from api.calls.schemas import CSV_COLUMNS, CallDetail, CallPage
from api.http import context, query_of, runtime_of

LIST_PARAMETERS = ("since", "until", "tz", "type", "extension", "number", "status", "recorded",
                   "limit", "cursor")

@get("/v1/calls", summary="The call history", tags=["calls"])
async def list_calls(
    request: Request[Any, Any, Any],
    since: Annotated[str | None, QueryParameter(description="From this time, inclusive: ISO 8601 date or date-time; without an offset, in tz.")] = None,
    until: Annotated[str | None, QueryParameter(description="Until this time, exclusive.")] = None,
    tz: Annotated[str | None, QueryParameter(description="Time zone of since/until without an offset and of start_local (default: the tenant's).")] = None,
    type: Annotated[str | None, QueryParameter(description="incoming | outgoing | internal | missed")] = None,  # noqa: A002
    extension: Annotated[str | None, QueryParameter(description="Calls the extension placed, was dialled at, rang or answered.")] = None,
    number: Annotated[str | None, QueryParameter(description="Caller or called number: a whole number (9 digits or more) matches by its last 9 digits, a shorter one wherever its digits appear.")] = None,
    status: Annotated[str | None, QueryParameter(description="answered | missed | no_answer | busy | failed | congestion")] = None,
    recorded: Annotated[str | None, QueryParameter(description="true: only calls with a recording.")] = None,
    limit: Annotated[str | None, QueryParameter(description="Calls per page, 1-1000 (default 50).")] = None,
    cursor: Annotated[str | None, QueryParameter(description="next_cursor of the previous page.")] = None,
) -> Response[Any]:
    """Calls the caller may see, newest first, a page at a time (keyset paging: pages stay
    stable while new calls arrive)."""
    req = await context(request, "list")
    query = query_of(request)
    params.only(query, LIST_PARAMETERS)
    tz_name, zone = params.zone(query, req.tz)
    filters = params.call_filters(query, zone)
    after = params.cursor(query, filters.fingerprint())
    size = params.integer(query, "limit", default=params.DEFAULT_PAGE, low=1, high=params.MAX_PAGE)
    rt = runtime_of(request)

    def work() -> CallPage:
        with rt.pool.lease() as store:
            return services.list_calls(rt.reader(store), req, filters, after, size, tz_name)

    page = await rt.run(work)
    if _wants_csv(request):
        headers = {"Link": f'<?cursor={page.next_cursor}>; rel="next"'} if page.next_cursor else {}
        return Response(_csv(page), media_type="text/csv; charset=utf-8", headers=headers)
    return Response(page)


@get("/v1/calls/{call_id:str}", summary="One call with its legs and recordings", tags=["calls"])
async def get_call(
    request: Request[Any, Any, Any], call_id: FromPath[str],
    tz: Annotated[str | None, QueryParameter(description="Time zone of start_local (default: the tenant's).")] = None,
) -> CallDetail:
    """The call, each ringing leg, and its recordings (number, duration, SHA-256, link). A call
    outside the caller's scope answers 404, as one that does not exist."""
    req = await context(request, "list")
    query = query_of(request)
    params.only(query, ("tz",))
    tz_name, _ = params.zone(query, req.tz)
    cid = params.call_id(call_id)
    rt = runtime_of(request)

    def work() -> CallDetail:
        with rt.pool.lease() as store:
            return services.call_detail(rt.reader(store), req, cid, tz_name)

    return await rt.run(work)


def _wants_csv(request: Request[Any, Any, Any]) -> bool:
    accept = request.headers.get("accept", "")
    return "text/csv" in accept and "application/json" not in accept


def _csv(page: CallPage) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for call in page.items:
        row = []
        for col in CSV_COLUMNS:
            v = getattr(call, col)
            row.append("|".join(v) if isinstance(v, list) else "" if v is None else v)
        w.writerow(row)
    return out.getvalue()
