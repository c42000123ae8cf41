"""``/v1/stats/load``, ``/v1/stats/costs`` and ``/v1/missed``."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, get
from litestar.params import QueryParameter

from api import params
from api.http import context, query_of, runtime_of
from api.stats import services
from api.stats.schemas import Costs, Load, MissedNumber

Since = Annotated[str | None, QueryParameter(description="From this time, inclusive (ISO 8601; default: 28 days before until).")]
Until = Annotated[str | None, QueryParameter(description="Until this time, exclusive (default: now).")]
Tz = Annotated[str | None, QueryParameter(description="The time zone hours and days are counted in (default: the tenant's).")]

MAX_DAYS = 400  # a year and a little: what the history keeps


@get("/v1/stats/load", summary="Load by hour and weekday, and the peak of concurrent calls", tags=["stats"])
async def load(request: Request[Any, Any, Any], since: Since = None, until: Until = None,
               tz: Tz = None) -> Load:
    """Calls, answered, missed and the average wait, per weekday and hour in the tenant's time
    zone; the most calls in progress at once, and when."""
    req = await context(request, "load")
    query = query_of(request)
    params.only(query, ("since", "until", "tz"))
    tz_name, zone = params.zone(query, req.tz)
    lo, hi = params.time_range(query, zone, default_days=services.LOAD_DAYS, max_days=MAX_DAYS,
                              now=req.now_utc)
    rt = runtime_of(request)

    def work() -> Load:
        with rt.pool.lease() as store:
            return services.load(rt.reader(store), req, lo, hi, tz_name)

    return await rt.run(work)


@get("/v1/stats/costs", summary="Outbound spend by destination, extension or month", tags=["stats"])
async def costs(
    request: Request[Any, Any, Any], since: Since = None, until: Until = None, tz: Tz = None,
    by: Annotated[str | None, QueryParameter(description="destination (default) | extension | month")] = None,
    limit: Annotated[str | None, QueryParameter(description="Rows, 1-1000 (default 100).")] = None,
) -> Costs:
    """Sell price for every role that sees costs; buy price and margin for admins."""
    req = await context(request, "costs")
    query = query_of(request)
    params.only(query, ("since", "until", "tz", "by", "limit"))
    tz_name, zone = params.zone(query, req.tz)
    lo, hi = params.time_range(query, zone, default_days=services.COSTS_DAYS, max_days=MAX_DAYS,
                              now=req.now_utc)
    by_ = params.choice(query, "by", ("destination", "extension", "month")) or "destination"
    size = params.integer(query, "limit", default=100, low=1, high=params.MAX_PAGE)
    rt = runtime_of(request)

    def work() -> Costs:
        with rt.pool.lease() as store:
            return services.costs(rt.reader(store), req, by_, lo, hi, tz_name, size)

    return await rt.run(work)


@get("/v1/missed", summary="Missed calls not yet called back, per number", tags=["calls"])
async def missed(request: Request[Any, Any, Any], since: Since = None, until: Until = None,
                 tz: Tz = None) -> list[MissedNumber]:
    """Numbers whose last inbound call nobody answered and that nobody has called back since:
    how many calls were missed and the last one; latest first."""
    req = await context(request, "missed")
    query = query_of(request)
    params.only(query, ("since", "until", "tz"))
    tz_name, zone = params.zone(query, req.tz)
    lo, hi = params.time_range(query, zone, default_days=services.MISSED_DAYS, max_days=MAX_DAYS,
                              now=req.now_utc)
    rt = runtime_of(request)

    def work() -> list[MissedNumber]:
        with rt.pool.lease() as store:
            return services.missed(rt.reader(store), req, lo, hi, tz_name)

    return await rt.run(work)
