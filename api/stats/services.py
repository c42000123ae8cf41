"""The panel's figures: load by hour and weekday, the peak of concurrent calls, spend, and the
missed calls to call back."""

from __future__ import annotations

from datetime import datetime

from api.runtime import Request
from api.stats.schemas import Costs, Load, LoadCell, MissedNumber, Peak, SpendRow
from store import queries
from store.tenancy import ScopedReader, compose, select

LOAD_DAYS = 28  # load and peak cover this many days before `until` unless `since` is given
MISSED_DAYS = 30  # the missed calls to call back: this many days before `until`
COSTS_DAYS = 31


def load(reader: ScopedReader, req: Request, since: datetime | None, until: datetime | None,
         tz: str) -> Load:
    conds, params = queries.time_conditions(since, until)
    params["tz"] = tz
    cells = reader.query(select(
        req.scope, "calls",
        "toDayOfWeek(start, 0, {tz:String}) AS weekday, toHour(start, {tz:String}) AS hour,"
        " count() AS calls, countIf(answered) AS answered_calls,"
        " countIf(status = 'missed') AS missed_calls,"
        " avgIf(wait_s, answered AND wait_s IS NOT NULL) AS avg_wait_s",
        where=conds, parameters=params, group_by="weekday, hour", order_by="weekday, hour"))
    spans = select(req.scope, "calls", "start, `end`", where=conds, parameters=params)
    # +1 at each start, -1 at each end (an end sorts before a start at the same instant: a call
    # that ends as another begins is not concurrent with it), running sum = calls in progress
    [peak] = reader.query(compose(
        req.scope,
        "SELECT max(running) AS peak, argMax(t, running) AS peak_at_ms FROM ("
        " SELECT t, sum(d) OVER (ORDER BY t, d ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
        " AS running FROM (SELECT toUnixTimestamp64Milli(e.1) AS t, e.2 AS d FROM (${spans})"
        " ARRAY JOIN [(start, toInt8(1)), (`end`, toInt8(-1))] AS e))",
        {"spans": spans}))
    peak_calls = int(peak["peak"] or 0)
    return Load(
        tz=tz, since=since.timestamp() if since else None, until=until.timestamp() if until else None,
        cells=[LoadCell(weekday=int(c["weekday"]), hour=int(c["hour"]), calls=int(c["calls"]),
                        answered=int(c["answered_calls"]), missed=int(c["missed_calls"]),
                        avg_wait_s=None if c["avg_wait_s"] is None or c["avg_wait_s"] != c["avg_wait_s"]
                        else round(float(c["avg_wait_s"]), 3)) for c in cells],
        peak=Peak(calls=peak_calls, at=peak["peak_at_ms"] / 1000 if peak_calls else None),
    )


def costs(reader: ScopedReader, req: Request, by: str, since: datetime | None,
          until: datetime | None, tz: str, limit: int) -> Costs:
    """Outbound spend by destination, extension or month; buy price and margin for roles that
    see them."""
    if by == "destination":
        rows = queries.spend_by_destination(reader, req.scope, since=since, until=until, tz=tz, limit=limit)
        key, cat = "destination", "category"
    elif by == "extension":
        rows = queries.spend_by_extension(reader, req.scope, since=since, until=until, tz=tz, limit=limit)
        key, cat = "extension", ""
    else:
        rows = queries.spend_by_month(reader, req.scope, since=since, until=until, tz=tz, limit=limit)
        key, cat = "month", ""
    buy = req.principal.may("costs_buy")
    money = queries.money_str
    return Costs(by=by, rows=[
        SpendRow(key=str(r[key]), category=str(r[cat]) if cat else "", currency=r["currency"],
                 calls=int(r["calls"]), answered_calls=int(r["answered_calls"]),
                 billed_s=int(r["billed_s"]), cost=money(r["cost"]),
                 cost_buy=money(r["cost_buy"]) if buy else None,
                 margin=money(r["margin"]) if buy else None)
        for r in rows])


def missed(reader: ScopedReader, req: Request, since: datetime | None, until: datetime | None,
           tz: str) -> list[MissedNumber]:
    rows = queries.missed_not_called_back(reader, req.scope, since=since, until=until, tz=tz)
    return [MissedNumber(number=r["number"], missed_calls=int(r["missed_calls"]),
                         last_missed=r["last_missed"], last_missed_local=r["last_missed_local"],
                         last_call_id=r["last_call_id"]) for r in rows]

