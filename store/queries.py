"""Call history and reports: pure SQL builders (``*_query``) and thin runners over a scoped reader.

Every builder takes a :class:`~store.tenancy.Scope` and reads its tables through
:func:`store.tenancy.select`, which confines the read to the scope's tenant, its extensions and
its retention; the runners take a :class:`~store.tenancy.ScopedReader`, which runs nothing else.
Values from the caller only ever travel as server-side parameters (``{name:Type}``); the SQL text
is assembled from fixed fragments chosen here. Every read uses ``FINAL``, so the versions of a call
written by replays collapse to the latest one. Times are UTC epoch seconds in and out; ``tz`` is
only for presentation (``*_local``, hour and day buckets) and for reading naive datetimes/dates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from contracts.records import CallRecord, Status
from store.tenancy import Scope, ScopedQuery, ScopedReader, compose, select

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

NUMBER_KEY_DIGITS = 9
"""Phone numbers compare on their last 9 digits (the national significant number in most
numbering plans), so ``+48 601…``, ``0048 601…`` and ``0601…`` are one number. The SQL of the rule
is :func:`number_key_sql`, its Python twin :func:`number_key`; the ``calls.numbers`` column
(migration 0004) holds the keys of each call's caller and called."""

_DIGITS = "replaceRegexpAll({col}, '[^0-9]', '')"


def normalize_number(number: str) -> str:
    """The digits of a phone number (``"+48 (601) 234-567"`` -> ``"48601234567"``)."""
    return re.sub(r"\D", "", number)


def number_key(number: str) -> str:
    """A number's key: its last :data:`NUMBER_KEY_DIGITS` digits ("" when it has none)."""
    return normalize_number(number)[-NUMBER_KEY_DIGITS:]


def number_key_sql(col: str) -> str:
    """The SQL of :func:`number_key` over a column or expression."""
    return f"right({_DIGITS.format(col=col)}, {NUMBER_KEY_DIGITS})"


# -- call history ----------------------------------------------------------------------------

NEWEST_FIRST = "toDate(start) DESC, start DESC, call_id DESC"
"""The history's order. Written with the sorting key's ``toDate(start)`` first, ClickHouse reads
the parts backwards in key order and stops once a page is full, instead of sorting every call in
the range (the two orders are the same: a later day means a later start)."""


def call_history_query(
    scope: Scope,
    *,
    since: TimeBound | None = None,
    until: TimeBound | None = None,
    call_type: CallType | None = None,
    extension: str | None = None,
    number: str | None = None,
    status: Status | None = None,
    recorded: bool | None = None,
    tz: str = "UTC",
    limit: int = 1000,
    after: tuple[int, str] | None = None,
    columns: Sequence[str] = CALL_FIELDS,
) -> ScopedQuery:
    """The call-history SELECT; see :func:`call_history`."""
    zone = _zone(tz)
    conds, params = time_conditions(since, until, zone)
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
        conds.append("has(parties, {extension:String})")  # every party of the call, see 0001
        params["extension"] = extension
    if number is not None:
        conds.append(_number_condition(number, params))
    if recorded is not None:
        conds.append("notEmpty(recordings)" if recorded else "empty(recordings)")
    if after is not None:
        after_ms, after_id = after
        # start <= first (the sorting key prunes on it), then the strict keyset condition
        conds.append("start <= fromUnixTimestamp64Milli({after_ms:Int64}, 'UTC')")
        conds.append("(start < fromUnixTimestamp64Milli({after_ms:Int64}, 'UTC')"
                     " OR call_id < {after_id:String})")
        params["after_ms"], params["after_id"] = int(after_ms), after_id
    params["limit"] = _limit(limit)
    return select(scope, "calls", select_columns(columns), where=conds, parameters=params,
                  order_by=NEWEST_FIRST, limit="{limit:UInt32}")


def _number_condition(number: str, params: dict[str, Any]) -> str:
    """A whole number (9 digits or more) matches by its key (an indexed array, see 0004); a
    shorter fragment matches wherever its digits appear in the caller's or the called number."""
    digits = normalize_number(number)
    if not digits:
        raise ValueError(f"number must contain digits, got {number!r}")
    if len(digits) >= NUMBER_KEY_DIGITS:
        params["number_key"] = number_key(digits)
        return "has(numbers, {number_key:String})"
    params["number"] = digits
    return ("(position(" + _DIGITS.format(col="caller") + ", {number:String}) > 0"
            " OR position(" + _DIGITS.format(col="called") + ", {number:String}) > 0)")


def call_history(
    reader: ScopedReader,
    scope: Scope,
    *,
    since: TimeBound | None = None,
    until: TimeBound | None = None,
    call_type: CallType | None = None,
    extension: str | None = None,
    number: str | None = None,
    status: Status | None = None,
    recorded: bool | None = None,
    tz: str = "UTC",
    limit: int = 1000,
    after: tuple[int, str] | None = None,
) -> list[dict[str, Any]]:
    """Calls in ``scope``, newest first, as dicts keyed by CallRecord field names plus ``start_local``.

    * ``since`` (inclusive) / ``until`` (exclusive) bound the call's start: epoch seconds, an aware
      datetime, or a naive datetime / date read in ``tz`` (a date means its midnight);
    * ``call_type``: ``incoming`` / ``outgoing`` / ``internal`` (the direction) or ``missed``
      (status missed: inbound calls nobody answered);
    * ``extension`` matches a call it placed, was dialled at, rang, or answered (first or last);
    * ``number`` matches caller or called: a whole number (9 digits or more) by its last 9 digits
      (``+48601234567`` finds ``0601234567`` too), a shorter fragment wherever its digits appear
      (``"601 234"`` finds ``+48601234567``);
    * ``status`` is a CallRecord status; ``recorded`` True keeps calls with a recording;
    * ``after`` = (start ms, call_id) of the last call of the previous page (keyset paging).

    ``start``/``answer``/``end`` are epoch seconds (floats, ms precision, JSON-ready);
    ``start_local`` is the start as ISO 8601 in ``tz``; arrays are lists; money is text.
    """
    q = call_history_query(
        scope, since=since, until=until, call_type=call_type, extension=extension, number=number,
        status=status, recorded=recorded, tz=tz, limit=limit, after=after,
    )
    zone = _zone(tz)
    return [call_row(row, zone) for row in reader.query(q)]


def call_row(row: Mapping[str, Any], zone: ZoneInfo, fields: Sequence[str] = CALL_FIELDS) -> dict[str, Any]:
    """A calls row as the history shows it: epoch-second times, money as text, ``start_local``."""
    call: dict[str, Any] = {}
    for name in fields:
        if name in TIME_FIELDS:
            ms = row[f"{name}_ms"]
            call[name] = None if ms is None else ms / 1000
        elif isinstance(row[name], Decimal):  # money: a string keeps it exact in JSON
            call[name] = money_str(row[name])
        else:
            call[name] = row[name]
    if "start" in call:
        call["start_local"] = _local(call["start"], zone)
    return call


def select_columns(fields: Sequence[str]) -> str:
    """The SELECT list of ``fields``, times as ``<name>_ms`` (epoch ms, exact)."""
    return ", ".join(
        f"toUnixTimestamp64Milli(`{c}`) AS `{c}_ms`" if c in TIME_FIELDS else f"`{c}`"
        for c in fields
    )


def call_query(scope: Scope, call_id: str, columns: Sequence[str] = CALL_FIELDS) -> ScopedQuery:
    """One call by id (none when the scope does not see it)."""
    return select(scope, "calls", select_columns(columns), call_ids=[call_id],
                  where=["call_id = {call_id:String}"], parameters={"call_id": call_id})


# -- reports -----------------------------------------------------------------------------------


def calls_by_type_query(
    scope: Scope, *, since: TimeBound | None = None, until: TimeBound | None = None, tz: str = "UTC",
) -> ScopedQuery:
    conds, params = time_conditions(since, until, _zone(tz))
    return select(
        scope, "calls",
        "multiIf(direction = 'inbound', 'incoming', direction = 'outbound', 'outgoing',"
        " 'internal') AS call_type, count() AS calls, countIf(answered) AS answered_calls,"
        " round(sum(talk_s), 3) AS talk_s_total",
        where=conds, parameters=params, group_by="call_type", order_by="calls DESC, call_type",
    )


def calls_by_type(
    reader: ScopedReader, scope: Scope, *, since: TimeBound | None = None,
    until: TimeBound | None = None, tz: str = "UTC",
) -> list[dict[str, Any]]:
    """Calls per type (incoming / outgoing / internal): ``calls``, ``answered_calls``,
    ``talk_s_total``; most calls first."""
    return reader.query(calls_by_type_query(scope, since=since, until=until, tz=tz))


def answered_vs_missed_query(
    scope: Scope, *, since: TimeBound | None = None, until: TimeBound | None = None, tz: str = "UTC",
) -> ScopedQuery:
    conds, params = time_conditions(since, until, _zone(tz))
    params["tz"] = tz
    return select(
        scope, "calls",
        "toString(toDate(start, {tz:String})) AS day,"
        " countIf(status = 'answered') AS answered_calls, countIf(status = 'missed') AS missed_calls",
        where=["direction = 'inbound'", *conds], parameters=params, group_by="day", order_by="day",
    )


def answered_vs_missed(
    reader: ScopedReader, scope: Scope, *, since: TimeBound | None = None,
    until: TimeBound | None = None, tz: str = "UTC",
) -> list[dict[str, Any]]:
    """Incoming calls answered vs missed per local day (``day`` as YYYY-MM-DD in ``tz``)."""
    return reader.query(answered_vs_missed_query(scope, since=since, until=until, tz=tz))


def missed_not_called_back_query(
    scope: Scope, *, since: TimeBound | None = None, until: TimeBound | None = None, tz: str = "UTC",
) -> ScopedQuery:
    zone = _zone(tz)
    missed_conds, params = time_conditions(since, until, zone)
    contact_conds, _ = time_conditions(since, None, zone)  # a callback may come after `until`
    missed_key = number_key_sql("caller")
    contact_key = number_key_sql("if(direction = 'outbound', called, caller)")
    missed = select(scope, "calls", f"pbx_id, {missed_key} AS number_key, call_id, caller, start",
                    where=["direction = 'inbound'", "status = 'missed'", *missed_conds],
                    parameters=params)
    contacted = select(scope, "calls", f"pbx_id, {contact_key} AS number_key, max(start) AS last_contact",
                       where=["(direction = 'outbound' OR (direction = 'inbound' AND answered))",
                              *contact_conds],
                       parameters=params, group_by="pbx_id, number_key")
    return compose(
        scope,
        "WITH missed AS (${missed}), contacted AS (${contacted}) "
        "SELECT m.pbx_id AS pbx_id, argMax(m.caller, m.start) AS number,"
        " count() AS missed_calls, toUnixTimestamp64Milli(max(m.start)) AS last_missed_ms,"
        " argMax(m.call_id, m.start) AS last_call_id"
        " FROM missed AS m LEFT JOIN contacted AS c"
        " ON m.pbx_id = c.pbx_id AND m.number_key = c.number_key"
        # IS NULL covers join_use_nulls=1; with the default 0 a miss reads as 1970, also earlier
        " WHERE m.number_key != '' AND (c.last_contact IS NULL OR m.start > c.last_contact)"
        " GROUP BY m.pbx_id, m.number_key"
        " ORDER BY last_missed_ms DESC, number",
        {"missed": missed, "contacted": contacted},
    )


def missed_not_called_back(
    reader: ScopedReader, scope: Scope, *, since: TimeBound | None = None,
    until: TimeBound | None = None, tz: str = "UTC",
) -> list[dict[str, Any]]:
    """Numbers to call back: inbound missed calls (started in the range) after which there was no
    outbound call to that number and no answered inbound call from it, at any later time.

    One row per number: ``number`` (as the caller ID showed it last), ``missed_calls`` since the
    last contact, ``last_missed`` (epoch s) and ``last_missed_local``, ``last_call_id``; latest first.
    Numbers compare by :func:`number_key`. Calls without a caller number are left out.
    """
    zone = _zone(tz)
    out = []
    for row in reader.query(missed_not_called_back_query(scope, since=since, until=until, tz=tz)):
        last = row.pop("last_missed_ms") / 1000
        out.append({**row, "last_missed": last, "last_missed_local": _local(last, zone)})
    return out


def busiest_hour_query(
    scope: Scope, tz: str = "UTC", *, since: TimeBound | None = None, until: TimeBound | None = None,
) -> ScopedQuery:
    conds, params = time_conditions(since, until, _zone(tz))
    params["tz"] = tz
    return select(
        scope, "calls",
        "toHour(start, {tz:String}) AS hour, count() AS calls,"
        " countIf(direction = 'inbound') AS incoming_calls,"
        " countIf(direction = 'outbound') AS outgoing_calls,"
        " countIf(status = 'missed') AS missed_calls",
        where=conds, parameters=params, group_by="hour", order_by="calls DESC, hour",
    )


def busiest_hour(
    reader: ScopedReader, scope: Scope, tz: str = "UTC", *, since: TimeBound | None = None,
    until: TimeBound | None = None,
) -> list[dict[str, Any]]:
    """Load by hour of the day in ``tz`` (0-23): hours with calls, busiest first (ties: earlier hour)."""
    return reader.query(busiest_hour_query(scope, tz, since=since, until=until))


def top_destinations_query(
    scope: Scope, limit: int = 10, *, since: TimeBound | None = None,
    until: TimeBound | None = None, tz: str = "UTC",
) -> ScopedQuery:
    conds, params = time_conditions(since, until, _zone(tz))
    params["limit"] = _limit(limit)
    return select(
        scope, "calls",
        "called AS number, count() AS calls, countIf(answered) AS answered_calls,"
        " round(sum(talk_s), 3) AS talk_s_total",
        where=["direction = 'outbound'", "called != ''", *conds], parameters=params,
        group_by="called", order_by="calls DESC, number", limit="{limit:UInt32}",
    )


def top_destinations(
    reader: ScopedReader, scope: Scope, limit: int = 10, *, since: TimeBound | None = None,
    until: TimeBound | None = None, tz: str = "UTC",
) -> list[dict[str, Any]]:
    """Most-called outbound numbers (as dialled): ``number``, ``calls``, ``answered_calls``,
    ``talk_s_total``."""
    return reader.query(top_destinations_query(scope, limit, since=since, until=until, tz=tz))


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
    scope: Scope, *, since: TimeBound | None = None, until: TimeBound | None = None,
    tz: str = "UTC", limit: int = 20,
) -> ScopedQuery:
    conds, params = time_conditions(since, until, _zone(tz))
    params["limit"] = _limit(limit)
    return select(
        scope, "calls",
        "if(rating IN ('no_match', 'bad_number'), '(not in the price list)', destination)"
        f" AS destination, destination_category AS category, currency, {_SPEND}",
        where=["direction = 'outbound'", "tariff_version != ''", *conds], parameters=params,
        group_by="destination, category, currency",
        order_by="cost DESC, calls DESC, destination", limit="{limit:UInt32}",
    )


def spend_by_destination(
    reader: ScopedReader, scope: Scope, *, since: TimeBound | None = None,
    until: TimeBound | None = None, tz: str = "UTC", limit: int = 20,
) -> list[dict[str, Any]]:
    """Outbound spend per destination (rated calls): ``destination``, ``category``, ``currency``,
    ``calls``, ``answered_calls``, ``billed_s``, ``cost`` (sell), ``cost_buy``, ``margin``
    (Decimals); highest cost first. Numbers the price list lacks show as "(not in the price list)"."""
    return reader.query(spend_by_destination_query(scope, since=since, until=until, tz=tz, limit=limit))


def spend_by_extension_query(
    scope: Scope, *, since: TimeBound | None = None, until: TimeBound | None = None,
    tz: str = "UTC", limit: int = 20,
) -> ScopedQuery:
    conds, params = time_conditions(since, until, _zone(tz))
    params["limit"] = _limit(limit)
    return select(
        scope, "calls", f"pbx_id, caller AS extension, currency, {_SPEND}",
        where=["direction = 'outbound'", "tariff_version != ''", *conds], parameters=params,
        group_by="pbx_id, extension, currency", order_by="cost DESC, calls DESC, extension",
        limit="{limit:UInt32}",
    )


def spend_by_extension(
    reader: ScopedReader, scope: Scope, *, since: TimeBound | None = None,
    until: TimeBound | None = None, tz: str = "UTC", limit: int = 20,
) -> list[dict[str, Any]]:
    """Outbound spend per extension (the caller): ``pbx_id``, ``extension``, ``currency``, ``calls``,
    ``answered_calls``, ``billed_s``, ``cost``, ``cost_buy``, ``margin``; highest cost first."""
    return reader.query(spend_by_extension_query(scope, since=since, until=until, tz=tz, limit=limit))


def spend_by_month_query(
    scope: Scope, *, since: TimeBound | None = None, until: TimeBound | None = None,
    tz: str = "UTC", limit: int = 24,
) -> ScopedQuery:
    conds, params = time_conditions(since, until, _zone(tz))
    params["limit"], params["tz"] = _limit(limit), tz
    return select(
        scope, "calls", f"formatDateTime(start, '%Y-%m', {{tz:String}}) AS month, currency, {_SPEND}",
        where=["direction = 'outbound'", "tariff_version != ''", *conds], parameters=params,
        group_by="month, currency", order_by="month DESC, currency", limit="{limit:UInt32}",
    )


def spend_by_month(
    reader: ScopedReader, scope: Scope, *, since: TimeBound | None = None,
    until: TimeBound | None = None, tz: str = "UTC", limit: int = 24,
) -> list[dict[str, Any]]:
    """Outbound spend per month in ``tz`` (``month`` YYYY-MM), newest first."""
    return reader.query(spend_by_month_query(scope, since=since, until=until, tz=tz, limit=limit))


def outbound_calls_query(
    scope: Scope, *, since: TimeBound | None = None, until: TimeBound | None = None,
    tz: str = "UTC", after: tuple[int, str] | None = None, limit: int = 10_000, count: bool = False,
) -> ScopedQuery:
    """Outbound calls in a range, oldest first, every CallRecord field (times as ``<name>_ms``);
    ``after`` = (start ms, call_id) of the last row of the previous page. ``count``: just count()."""
    conds, params = time_conditions(since, until, _zone(tz))
    conds.insert(0, "direction = 'outbound'")
    if count:
        return select(scope, "calls", "count() AS calls", where=conds, parameters=params)
    if after is not None:
        conds.append("(start, call_id) > (fromUnixTimestamp64Milli({after_ms:Int64}, 'UTC'), {after_id:String})")
        params["after_ms"], params["after_id"] = after
    params["limit"] = _limit(limit)
    return select(scope, "calls", select_columns(CALL_FIELDS), where=conds, parameters=params,
                  order_by="start, call_id", limit="{limit:UInt32}")


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


def time_conditions(since: TimeBound | None, until: TimeBound | None,
                    zone: ZoneInfo = ZoneInfo("UTC")) -> tuple[list[str], dict[str, Any]]:
    """The conditions (and their parameters) bounding a call's start to [since, until)."""
    conds: list[str] = []
    params: dict[str, Any] = {}
    if since is not None:
        conds.append("start >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')")
        params["since_ms"] = epoch_ms(since, zone)
    if until is not None:
        conds.append("start < fromUnixTimestamp64Milli({until_ms:Int64}, 'UTC')")
        params["until_ms"] = epoch_ms(until, zone)
    return conds, params


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit


def _local(epoch_s: float, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(epoch_s, zone).isoformat(timespec="milliseconds")
