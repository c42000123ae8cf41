"""Call history and reports: pure SQL builders (``*_query``) and thin runners over any ``Queryable``.

Values from the caller only ever travel as server-side parameters (``{name:Type}``); the SQL text
is assembled from fixed fragments chosen here. Every read uses ``FINAL``, so the versions of a call
written by replays collapse to the latest one. Times are UTC epoch seconds in and out; ``tz`` is
only for presentation (``*_local``, hour and day buckets) and for reading naive datetimes/dates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal, Protocol, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from contracts.records import CallRecord, Status

CallType = Literal["incoming", "outgoing", "internal", "missed"]
TimeBound = datetime | date | float | int

# call_type -> (column, value)
CALL_TYPES: Mapping[str, tuple[str, str]] = {
    "incoming": ("direction", "inbound"),
    "outgoing": ("direction", "outbound"),
    "internal": ("direction", "internal"),
    "missed": ("status", "missed"),
}
STATUSES = frozenset(get_args(Status))
TIME_FIELDS = ("start", "answer", "end")
CALL_FIELDS = CallRecord.__struct_fields__
MAX_LIMIT = 100_000

# Digits only; compared on the last 9 to match +48 601…, 0048 601… and 0601… (see missed_not_called_back).
_DIGITS = "replaceRegexpAll({col}, '[^0-9]', '')"
_NUMBER_KEY = "right(" + _DIGITS + ", 9)"


class Queryable(Protocol):
    def query(
        self, sql: str, parameters: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Query:
    sql: str
    parameters: dict[str, Any] = field(default_factory=dict)


# -- call history ----------------------------------------------------------------------------


def call_history_query(
    *,
    since: TimeBound | None = None,
    until: TimeBound | None = None,
    call_type: CallType | None = None,
    extension: str | None = None,
    number: str | None = None,
    status: Status | None = None,
    pbx_id: str | None = None,
    tz: str = "UTC",
    limit: int = 1000,
) -> Query:
    """The call-history SELECT; see :func:`call_history`."""
    zone = _zone(tz)
    conds, params = _range(since, until, zone, pbx_id)
    if call_type is not None:
        if call_type not in CALL_TYPES:
            raise ValueError(f"call_type must be one of {sorted(CALL_TYPES)}, got {call_type!r}")
        column, value = CALL_TYPES[call_type]
        conds.append(f"{column} = {{call_type_value:String}}")
        params["call_type_value"] = value
    if status is not None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {sorted(STATUSES)}, got {status!r}")
        conds.append("status = {status:String}")
        params["status"] = status
    if extension is not None:
        conds.append("has(parties, {extension:String})")  # one bloom-filtered array, see 0001
        params["extension"] = extension
    if number is not None:
        digits = normalize_number(number)
        if not digits:
            raise ValueError(f"number must contain digits, got {number!r}")
        conds.append(
            "(position(" + _DIGITS.format(col="caller") + ", {number:String}) > 0"
            " OR position(" + _DIGITS.format(col="called") + ", {number:String}) > 0)"
        )
        params["number"] = digits
    params["limit"] = _limit(limit)
    columns = ", ".join(
        f"toUnixTimestamp64Milli(`{c}`) AS `{c}_ms`" if c in TIME_FIELDS else f"`{c}`"
        for c in CALL_FIELDS
    )
    sql = (
        f"SELECT {columns} FROM calls FINAL{_where(conds)} "
        "ORDER BY start DESC, call_id DESC LIMIT {limit:UInt32}"
    )
    return Query(sql, params)


def call_history(
    store: Queryable,
    *,
    since: TimeBound | None = None,
    until: TimeBound | None = None,
    call_type: CallType | None = None,
    extension: str | None = None,
    number: str | None = None,
    status: Status | None = None,
    pbx_id: str | None = None,
    tz: str = "UTC",
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Calls, newest first, as dicts keyed by CallRecord field names plus ``start_local``.

    * ``since`` (inclusive) / ``until`` (exclusive) bound the call's start: epoch seconds, an aware
      datetime, or a naive datetime / date read in ``tz`` (a date means its midnight);
    * ``call_type``: ``incoming`` / ``outgoing`` / ``internal`` (the direction) or ``missed``
      (status missed: inbound calls nobody answered);
    * ``extension`` matches a call it placed, was dialled at, rang, or answered (first or last);
    * ``number`` matches caller or called by digits: both sides are stripped of non-digits and the
      query's digits must appear in one of them (``"601 234"`` finds ``+48601234567``);
    * ``status`` is a CallRecord status; ``pbx_id`` restricts to one PBX (a tenant).

    ``start``/``answer``/``end`` are epoch seconds (floats, ms precision, JSON-ready);
    ``start_local`` is the start as ISO 8601 in ``tz``; arrays are lists.
    """
    q = call_history_query(
        since=since, until=until, call_type=call_type, extension=extension, number=number,
        status=status, pbx_id=pbx_id, tz=tz, limit=limit,
    )
    zone = _zone(tz)
    out = []
    for row in store.query(q.sql, q.parameters):
        call: dict[str, Any] = {}
        for name in CALL_FIELDS:
            if name in TIME_FIELDS:
                ms = row[f"{name}_ms"]
                call[name] = None if ms is None else ms / 1000
            elif isinstance(row[name], Decimal):  # money: a string keeps it exact in JSON
                call[name] = money_str(row[name])
            else:
                call[name] = row[name]
        call["start_local"] = _local(call["start"], zone)
        out.append(call)
    return out


def normalize_number(number: str) -> str:
    """The digits of a phone number (``"+48 (601) 234-567"`` -> ``"48601234567"``)."""
    return re.sub(r"\D", "", number)


# -- reports -----------------------------------------------------------------------------------


def calls_by_type_query(
    *, since: TimeBound | None = None, until: TimeBound | None = None, pbx_id: str | None = None,
    tz: str = "UTC",
) -> Query:
    conds, params = _range(since, until, _zone(tz), pbx_id)
    sql = (
        "SELECT multiIf(direction = 'inbound', 'incoming', direction = 'outbound', 'outgoing',"
        " 'internal') AS call_type, count() AS calls, countIf(answered) AS answered_calls,"
        " round(sum(talk_s), 3) AS talk_s_total"
        f" FROM calls FINAL{_where(conds)} GROUP BY call_type ORDER BY calls DESC, call_type"
    )
    return Query(sql, params)


def calls_by_type(
    store: Queryable, *, since: TimeBound | None = None, until: TimeBound | None = None,
    pbx_id: str | None = None, tz: str = "UTC",
) -> list[dict[str, Any]]:
    """Calls per type (incoming / outgoing / internal): ``calls``, ``answered_calls``,
    ``talk_s_total``; most calls first."""
    q = calls_by_type_query(since=since, until=until, pbx_id=pbx_id, tz=tz)
    return store.query(q.sql, q.parameters)


def answered_vs_missed_query(
    *, since: TimeBound | None = None, until: TimeBound | None = None, pbx_id: str | None = None,
    tz: str = "UTC",
) -> Query:
    conds, params = _range(since, until, _zone(tz), pbx_id)
    conds.insert(0, "direction = 'inbound'")
    params["tz"] = tz
    sql = (
        "SELECT toString(toDate(start, {tz:String})) AS day,"
        " countIf(status = 'answered') AS answered_calls, countIf(status = 'missed') AS missed_calls"
        f" FROM calls FINAL{_where(conds)} GROUP BY day ORDER BY day"
    )
    return Query(sql, params)


def answered_vs_missed(
    store: Queryable, *, since: TimeBound | None = None, until: TimeBound | None = None,
    pbx_id: str | None = None, tz: str = "UTC",
) -> list[dict[str, Any]]:
    """Incoming calls answered vs missed per local day (``day`` as YYYY-MM-DD in ``tz``)."""
    q = answered_vs_missed_query(since=since, until=until, pbx_id=pbx_id, tz=tz)
    return store.query(q.sql, q.parameters)


def missed_not_called_back_query(
    *, since: TimeBound | None = None, until: TimeBound | None = None, pbx_id: str | None = None,
    tz: str = "UTC",
) -> Query:
    zone = _zone(tz)
    missed_conds, params = _range(since, until, zone, pbx_id)
    contact_conds, _ = _range(since, None, zone, pbx_id)  # a callback may come after `until`
    missed_key = _NUMBER_KEY.format(col="caller")
    contact_key = _NUMBER_KEY.format(col="if(direction = 'outbound', called, caller)")
    missed_where = _where(["direction = 'inbound'", "status = 'missed'", *missed_conds])
    contact_where = _where(
        ["(direction = 'outbound' OR (direction = 'inbound' AND answered))", *contact_conds]
    )
    sql = (
        "WITH missed AS ("
        f"SELECT pbx_id, {missed_key} AS number_key, call_id, caller, start"
        f" FROM calls FINAL{missed_where}"
        "), contacted AS ("
        f"SELECT pbx_id, {contact_key} AS number_key, max(start) AS last_contact"
        f" FROM calls FINAL{contact_where} GROUP BY pbx_id, number_key"
        ") "
        "SELECT m.pbx_id AS pbx_id, argMax(m.caller, m.start) AS number,"
        " count() AS missed_calls, toUnixTimestamp64Milli(max(m.start)) AS last_missed_ms,"
        " argMax(m.call_id, m.start) AS last_call_id"
        " FROM missed AS m LEFT JOIN contacted AS c"
        " ON m.pbx_id = c.pbx_id AND m.number_key = c.number_key"
        # IS NULL covers join_use_nulls=1; with the default 0 a miss reads as 1970, also earlier
        " WHERE m.number_key != '' AND (c.last_contact IS NULL OR m.start > c.last_contact)"
        " GROUP BY m.pbx_id, m.number_key"
        " ORDER BY last_missed_ms DESC, number"
    )
    return Query(sql, params)


def missed_not_called_back(
    store: Queryable, *, since: TimeBound | None = None, until: TimeBound | None = None,
    pbx_id: str | None = None, tz: str = "UTC",
) -> list[dict[str, Any]]:
    """Numbers to call back: inbound missed calls (started in the range) after which there was no
    outbound call to that number and no answered inbound call from it, at any later time.

    One row per number: ``number`` (as the caller ID showed it last), ``missed_calls`` since the
    last contact, ``last_missed`` (epoch s) and ``last_missed_local``, ``last_call_id``; latest first.

    Numbers are compared on their last 9 digits, so ``+48601234567`` (inbound caller ID) and
    ``0601234567`` (dialled out) match; a stopgap until proper E.164 normalisation arrives with
    tariffs. Calls without a caller number are left out.
    """
    q = missed_not_called_back_query(since=since, until=until, pbx_id=pbx_id, tz=tz)
    zone = _zone(tz)
    out = []
    for row in store.query(q.sql, q.parameters):
        last = row.pop("last_missed_ms") / 1000
        out.append({**row, "last_missed": last, "last_missed_local": _local(last, zone)})
    return out


def busiest_hour_query(
    tz: str = "UTC", *, since: TimeBound | None = None, until: TimeBound | None = None,
    pbx_id: str | None = None,
) -> Query:
    conds, params = _range(since, until, _zone(tz), pbx_id)
    params["tz"] = tz
    sql = (
        "SELECT toHour(start, {tz:String}) AS hour, count() AS calls,"
        " countIf(direction = 'inbound') AS incoming_calls,"
        " countIf(direction = 'outbound') AS outgoing_calls,"
        " countIf(status = 'missed') AS missed_calls"
        f" FROM calls FINAL{_where(conds)} GROUP BY hour ORDER BY calls DESC, hour"
    )
    return Query(sql, params)


def busiest_hour(
    store: Queryable, tz: str = "UTC", *, since: TimeBound | None = None,
    until: TimeBound | None = None, pbx_id: str | None = None,
) -> list[dict[str, Any]]:
    """Load by hour of the day in ``tz`` (0-23): hours with calls, busiest first (ties: earlier hour)."""
    q = busiest_hour_query(tz, since=since, until=until, pbx_id=pbx_id)
    return store.query(q.sql, q.parameters)


def top_destinations_query(
    limit: int = 10, *, since: TimeBound | None = None, until: TimeBound | None = None,
    pbx_id: str | None = None, tz: str = "UTC",
) -> Query:
    conds, params = _range(since, until, _zone(tz), pbx_id)
    conds[:0] = ["direction = 'outbound'", "called != ''"]
    params["limit"] = _limit(limit)
    sql = (
        "SELECT called AS number, count() AS calls, countIf(answered) AS answered_calls,"
        " round(sum(talk_s), 3) AS talk_s_total"
        f" FROM calls FINAL{_where(conds)} GROUP BY called"
        " ORDER BY calls DESC, number LIMIT {limit:UInt32}"
    )
    return Query(sql, params)


def top_destinations(
    store: Queryable, limit: int = 10, *, since: TimeBound | None = None,
    until: TimeBound | None = None, pbx_id: str | None = None, tz: str = "UTC",
) -> list[dict[str, Any]]:
    """Most-called outbound numbers (as dialled): ``number``, ``calls``, ``answered_calls``,
    ``talk_s_total``."""
    q = top_destinations_query(limit, since=since, until=until, pbx_id=pbx_id, tz=tz)
    return store.query(q.sql, q.parameters)


# -- tariffs: spend and re-rating ------------------------------------------------------------------


def money_str(amount: Decimal) -> str:
    """An amount as text: two decimals, more only when they matter ("0.40", "0.1235")."""
    two = amount.quantize(Decimal("0.01"))
    return str(two if two == amount else amount.normalize())


_SPEND = (
    "count() AS calls, countIf(answered) AS answered_calls, sum(billed_s) AS billed_s,"
    " sum(cost) AS cost, sum(cost_buy) AS cost_buy, sum(margin) AS margin"
)


def spend_by_destination_query(
    *, since: TimeBound | None = None, until: TimeBound | None = None, pbx_id: str | None = None,
    tz: str = "UTC", limit: int = 20,
) -> Query:
    conds, params = _range(since, until, _zone(tz), pbx_id)
    conds[:0] = ["direction = 'outbound'", "tariff_version != ''"]
    params["limit"] = _limit(limit)
    sql = (
        "SELECT if(rating IN ('no_match', 'bad_number'), '(not in the price list)', destination)"
        f" AS destination, destination_category AS category, currency, {_SPEND}"
        f" FROM calls FINAL{_where(conds)} GROUP BY destination, category, currency"
        " ORDER BY cost DESC, calls DESC, destination LIMIT {limit:UInt32}"
    )
    return Query(sql, params)


def spend_by_destination(
    store: Queryable, *, since: TimeBound | None = None, until: TimeBound | None = None,
    pbx_id: str | None = None, tz: str = "UTC", limit: int = 20,
) -> list[dict[str, Any]]:
    """Outbound spend per destination (rated calls): ``destination``, ``category``, ``currency``,
    ``calls``, ``answered_calls``, ``billed_s``, ``cost`` (sell), ``cost_buy``, ``margin``
    (Decimals); highest cost first. Numbers the price list lacks show as "(not in the price list)"."""
    q = spend_by_destination_query(since=since, until=until, pbx_id=pbx_id, tz=tz, limit=limit)
    return store.query(q.sql, q.parameters)


def spend_by_extension_query(
    *, since: TimeBound | None = None, until: TimeBound | None = None, pbx_id: str | None = None,
    tz: str = "UTC", limit: int = 20,
) -> Query:
    conds, params = _range(since, until, _zone(tz), pbx_id)
    conds[:0] = ["direction = 'outbound'", "tariff_version != ''"]
    params["limit"] = _limit(limit)
    sql = (
        f"SELECT pbx_id, caller AS extension, currency, {_SPEND}"
        f" FROM calls FINAL{_where(conds)} GROUP BY pbx_id, extension, currency"
        " ORDER BY cost DESC, calls DESC, extension LIMIT {limit:UInt32}"
    )
    return Query(sql, params)


def spend_by_extension(
    store: Queryable, *, since: TimeBound | None = None, until: TimeBound | None = None,
    pbx_id: str | None = None, tz: str = "UTC", limit: int = 20,
) -> list[dict[str, Any]]:
    """Outbound spend per extension (the caller): ``pbx_id``, ``extension``, ``currency``, ``calls``,
    ``answered_calls``, ``billed_s``, ``cost``, ``cost_buy``, ``margin``; highest cost first."""
    q = spend_by_extension_query(since=since, until=until, pbx_id=pbx_id, tz=tz, limit=limit)
    return store.query(q.sql, q.parameters)


def outbound_calls_query(
    *, since: TimeBound | None = None, until: TimeBound | None = None, pbx_id: str | None = None,
    tz: str = "UTC", after: tuple[int, str] | None = None, limit: int = 10_000, count: bool = False,
) -> Query:
    """Outbound calls in a range, oldest first, every CallRecord field (times as ``<name>_ms``);
    ``after`` = (start ms, call_id) of the last row of the previous page. ``count``: just count()."""
    conds, params = _range(since, until, _zone(tz), pbx_id)
    conds.insert(0, "direction = 'outbound'")
    if count:
        return Query(f"SELECT count() AS calls FROM calls FINAL{_where(conds)}", params)
    if after is not None:
        conds.append("(start, call_id) > (fromUnixTimestamp64Milli({after_ms:Int64}, 'UTC'), {after_id:String})")
        params["after_ms"], params["after_id"] = after
    params["limit"] = _limit(limit)
    columns = ", ".join(
        f"toUnixTimestamp64Milli(`{c}`) AS `{c}_ms`" if c in TIME_FIELDS else f"`{c}`"
        for c in CALL_FIELDS
    )
    sql = (f"SELECT {columns} FROM calls FINAL{_where(conds)}"
           " ORDER BY start, call_id LIMIT {limit:UInt32}")
    return Query(sql, params)


def record_from_row(row: Mapping[str, Any]) -> CallRecord:
    """A CallRecord from a row of :func:`outbound_calls_query`."""
    fields = {}
    for name in CALL_FIELDS:
        if name in TIME_FIELDS:
            ms = row[f"{name}_ms"]
            fields[name] = None if ms is None else ms / 1000
        else:
            fields[name] = row[name]
    return msgspec.convert(fields, CallRecord)


# -- helpers -------------------------------------------------------------------------------------


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r}") from None


def epoch_ms(bound: TimeBound, zone: ZoneInfo) -> int:
    """Epoch milliseconds of a time bound; naive datetimes and dates are read in ``zone``."""
    if isinstance(bound, bool):
        raise TypeError("a time bound cannot be a bool")
    if isinstance(bound, datetime):
        dt = bound if bound.tzinfo is not None else bound.replace(tzinfo=zone)
        return round(dt.timestamp() * 1000)
    if isinstance(bound, date):
        return round(datetime(bound.year, bound.month, bound.day, tzinfo=zone).timestamp() * 1000)
    if isinstance(bound, (int, float)):
        return round(bound * 1000)
    raise TypeError(f"a time bound is epoch seconds, a datetime or a date, got {type(bound).__name__}")


def _range(
    since: TimeBound | None, until: TimeBound | None, zone: ZoneInfo, pbx_id: str | None
) -> tuple[list[str], dict[str, Any]]:
    conds: list[str] = []
    params: dict[str, Any] = {}
    if pbx_id is not None:
        conds.append("pbx_id = {pbx_id:String}")
        params["pbx_id"] = pbx_id
    if since is not None:
        conds.append("start >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')")
        params["since_ms"] = epoch_ms(since, zone)
    if until is not None:
        conds.append("start < fromUnixTimestamp64Milli({until_ms:Int64}, 'UTC')")
        params["until_ms"] = epoch_ms(until, zone)
    return conds, params


def _where(conds: list[str]) -> str:
    return " WHERE " + " AND ".join(conds) if conds else ""


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit


def _local(epoch_s: float, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(epoch_s, zone).isoformat(timespec="milliseconds")
