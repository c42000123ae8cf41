"""The SQL of reconciliation and re-derivation: pure builders from fixed fragments, values only as
server-side parameters. Every read of calls names its PBX (``pbx_id``), the operator-scope guard
this module is kept small for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from store.queries import CALL_FIELDS, TIME_FIELDS, Query
from store.schema import CALL_LEGS, REDERIVED_CALLS, REDERIVED_LEGS, Table

_CALL_COLUMNS = ", ".join(
    f"toUnixTimestamp64Milli(`{c}`) AS `{c}_ms`" if c in TIME_FIELDS else f"`{c}`"
    for c in CALL_FIELDS
)
"""Every CallRecord field, times as ``<name>_ms`` (store.queries.record_from_row reads them)."""
_LEG_COLUMNS = ", ".join(
    f"toUnixTimestamp64Milli(`{c}`) AS `{c}_ms`" if c in TIME_FIELDS else f"`{c}`"
    for c in CALL_LEGS.struct.__struct_fields__
)


def _ms(t: float) -> int:
    """Epoch seconds as the integer milliseconds the parameters take."""
    return round(t * 1000)


def _require(pbx_id: str) -> dict[str, Any]:
    if not pbx_id:
        raise ValueError("a query of calls needs its pbx_id")
    return {"pbx_id": pbx_id}


def stored_calls_query(pbx_id: str, since: float, until: float, *,
                       after: tuple[int, str] | None = None, limit: int = 5_000) -> Query:
    """The PBX's calls that started in [since, until), oldest first, a page after ``after``
    (start ms, call id). FINAL collapses a call's versions; a call stored under two sorting keys
    (its start moved to another day) comes back twice, as reconciliation wants to see."""
    params = {**_require(pbx_id), "since_ms": _ms(since), "until_ms": _ms(until), "limit": limit}
    conds = ["pbx_id = {pbx_id:String}",
             "start >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')",
             "start < fromUnixTimestamp64Milli({until_ms:Int64}, 'UTC')"]
    if after is not None:
        conds.append("(start, call_id) > (fromUnixTimestamp64Milli({after_ms:Int64}, 'UTC'), "
                     "{after_id:String})")
        params["after_ms"], params["after_id"] = after
    return Query(f"SELECT {_CALL_COLUMNS} FROM calls FINAL WHERE {' AND '.join(conds)} "
                 "ORDER BY start, call_id LIMIT {limit:UInt32}", params)


def calls_by_id_query(pbx_id: str, call_ids: Sequence[str]) -> Query:
    """The stored rows of these calls of the PBX (every row under FINAL: a call stored under two
    sorting keys comes back twice)."""
    return Query(f"SELECT {_CALL_COLUMNS} FROM calls FINAL WHERE pbx_id = {{pbx_id:String}} "
                 "AND call_id IN {ids:Array(String)} ORDER BY call_id, version",
                 {**_require(pbx_id), "ids": list(call_ids)})


def shadow_page_query(run_id: str, *, after: str = "", limit: int = 5_000) -> Query:
    """A page of one re-derivation run's calls, by call id after ``after``."""
    return Query(f"SELECT {_CALL_COLUMNS} FROM {REDERIVED_CALLS.name} FINAL "
                 "WHERE run_id = {run_id:String} AND call_id > {after:String} "
                 "ORDER BY call_id LIMIT {limit:UInt32}",
                 {"run_id": run_id, "after": after, "limit": limit})


def shadow_legs_query(run_id: str, call_ids: Sequence[str]) -> Query:
    """The legs of these calls in one re-derivation run."""
    return Query(f"SELECT {_LEG_COLUMNS} FROM {REDERIVED_LEGS.name} FINAL WHERE run_id = "
                 "{run_id:String} AND call_id IN {ids:Array(String)} ORDER BY call_id, leg_id",
                 {"run_id": run_id, "ids": list(call_ids)})


def gone_query(run_id: str, pbx_id: str, since: float, until: float, limit: int = 20) -> Query:
    """Stored calls of the PBX in [since, until) that the run did not derive again: how many,
    and the first few."""
    params = {**_require(pbx_id), "run_id": run_id, "since_ms": _ms(since),
              "until_ms": _ms(until), "limit": limit}
    return Query(
        "SELECT count() AS calls, arraySlice(groupArray(call_id), 1, {limit:UInt32}) AS first "
        "FROM (SELECT call_id FROM calls FINAL WHERE pbx_id = {pbx_id:String} "
        "AND start >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC') "
        "AND start < fromUnixTimestamp64Milli({until_ms:Int64}, 'UTC') "
        f"AND call_id NOT IN (SELECT call_id FROM {REDERIVED_CALLS.name} "
        "WHERE run_id = {run_id:String}) ORDER BY start, call_id)", params)


def stored_legs_query(pbx_id: str, call_ids: Sequence[str]) -> Query:
    """The stored legs of these calls of the PBX, under FINAL."""
    return Query(f"SELECT {_LEG_COLUMNS} FROM call_legs FINAL WHERE pbx_id = {{pbx_id:String}} "
                 "AND call_id IN {ids:Array(String)} ORDER BY call_id, leg_id",
                 {**_require(pbx_id), "ids": list(call_ids)})


def delete_rows_query(table: Table, pbx_id: str, call_ids: Sequence[str], *,
                      start_ms: Sequence[int] = (), versions: Sequence[int] = (),
                      keep_legs: Sequence[tuple[str, int]] = ()) -> Query:
    """The DELETE (a mutation) of rows a re-derivation replaced: call rows that the new versions
    do not replace under FINAL (``call_ids`` pairwise with their old ``start_ms`` and
    ``versions``: another day, another sorting key), or the legs of ``call_ids`` other than
    ``keep_legs`` (leg id, version)."""
    params: dict[str, Any] = {**_require(pbx_id), "ids": list(call_ids)}
    if table.name == "calls":
        params["starts"], params["versions"] = list(start_ms), list(versions)
        cond = ("has(arrayZip({ids:Array(String)}, {starts:Array(Int64)}, {versions:Array(UInt64)}),"
                " (call_id, toUnixTimestamp64Milli(start), version))")
    elif table.name == "call_legs":
        params["keep_ids"] = [leg for leg, _ in keep_legs]
        params["keep_versions"] = [v for _, v in keep_legs]
        cond = ("call_id IN {ids:Array(String)} AND NOT has(arrayZip({keep_ids:Array(String)}, "
                "{keep_versions:Array(UInt64)}), (leg_id, version))")
    else:
        raise ValueError(f"no rows of {table.name} are replaced by a re-derivation")
    return Query(f"ALTER TABLE {table.name} DELETE WHERE pbx_id = {{pbx_id:String}} AND {cond}",
                 params)
