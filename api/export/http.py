"""``/v1/export``: a tenant's calls in a range as one streamed CSV or Parquet file."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from litestar import Request, get
from litestar.params import QueryParameter
from litestar.response import Stream

from api import params
from api.export import services
from api.http import context, query_of, runtime_of

MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}


@get("/v1/export", summary="Export calls as CSV or Parquet", tags=["export"])
async def export(
    request: Request[Any, Any, Any],
    format: Annotated[str | None, QueryParameter(description="csv (default) | parquet")] = None,  # noqa: A002
    since: Annotated[str | None, QueryParameter(description="From this time, inclusive (ISO 8601).")] = None,
    until: Annotated[str | None, QueryParameter(description="Until this time, exclusive.")] = None,
    tz: Annotated[str | None, QueryParameter(description="Time zone of start_local and of bounds without an offset.")] = None,
) -> Stream:
    """Every call of the tenant that started in the range, oldest first, streamed as ClickHouse
    reads it (a year of a large tenant without a timeout, in flat memory)."""
    req = await context(request, "export")
    query = query_of(request)
    params.only(query, ("format", "since", "until", "tz"))
    fmt = params.choice(query, "format", services.FORMATS) or "csv"
    tz_name, zone = params.zone(query, req.tz)
    lo, hi = params.time_range(query, zone)
    rt = runtime_of(request)
    produce = services.csv_stream if fmt == "csv" else services.parquet_stream

    def body() -> Iterator[bytes]:
        # the connection is held for the whole stream: a chDB connection cannot serve another
        # query while one streams
        with rt.pool.lease() as store:
            yield from produce(rt.reader(store), req, lo, hi, tz_name)

    name = f"calls-{req.principal.tenant}.{fmt}"
    return Stream(body(), media_type=MEDIA_TYPES[fmt],
                  headers={"Content-Disposition": f'attachment; filename="{name}"',
                           "Cache-Control": "no-store"})
