"""The SQL of reconciliation and re-derivation: pure builders from fixed fragments, values only as
server-side parameters. Reads of the tenant tables (calls, call legs) go through the tenant guard
(``store.tenancy.select``) in the operator's scope of one PBX; the shadow tables of a run and the
mutations that replace rows name the PBX themselves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from store.queries import CALL_FIELDS, select_columns
from store.schema import CALL_LEGS, REDERIVED_CALLS, REDERIVED_LEGS, Table
from store.tenancy import Scope, ScopedQuery, compose, select

LEG_FIELDS = CALL_LEGS.struct.__struct_fields__


class Statement(NamedTuple):
    """SQL over a run's shadow tables, or a mutation: not a read of tenant data."""

    sql: str
    parameters: dict[str, Any]


def scope_of(pbx_id: str) -> Scope:
    """What reconciliation reads: one PBX's stored calls, expired or not (it compares what is
    stored; retention is not its concern)."""
    if not pbx_id:
        raise ValueError("reconciliation reads one PBX: its pbx_id is needed")
    return Scope.operator(tenant=pbx_id)


def _ms(t: float) -> int:
    """Epoch seconds as the integer milliseconds the parameters take."""
    return round(t * 1000)


def _started(since: float, until: float) -> tuple[list[str], dict[str, Any]]:
    return (["start >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')",
             "start < fromUnixTimestamp64Milli({until_ms:Int64}, 'UTC')"],
            {"since_ms": _ms(since), "until_ms": _ms(until)})


def stored_calls_query(pbx_id: str, since: float, until: float, *,
                       after: tuple[int, str] | None = None, limit: int = 5_000) -> ScopedQuery:
    """The PBX's calls that started in [since, until), oldest first, a page after ``after``
    (start ms, call id). FINAL collapses a call's versions; a call stored under two sorting keys
    (its start moved to another day) comes back twice, as reconciliation wants to see."""
    conds, params = _started(since, until)
    if after is not None:
        conds.append("(start, call_id) > (fromUnixTimestamp64Milli({after_ms:Int64}, 'UTC'), "
                     "{after_id:String})")
        params["after_ms"], params["after_id"] = after
    params["limit"] = limit
    return select(scope_of(pbx_id), "calls", select_columns(CALL_FIELDS), where=conds,
                  parameters=params, order_by="start, call_id", limit="{limit:UInt32}")


def calls_by_id_query(pbx_id: str, call_ids: Sequence[str]) -> ScopedQuery:
    """The stored rows of these calls of the PBX (every row under FINAL: a call stored under two
    sorting keys comes back twice)."""
    return select(scope_of(pbx_id), "calls", select_columns(CALL_FIELDS), call_ids=call_ids,
                  order_by="call_id, version")


def stored_legs_query(pbx_id: str, call_ids: Sequence[str]) -> ScopedQuery:
    """The stored legs of these calls of the PBX, under FINAL."""
    return select(scope_of(pbx_id), "call_legs", select_columns(LEG_FIELDS), call_ids=call_ids,
                  order_by="call_id, leg_id")


def gone_query(run_id: str, pbx_id: str, since: float, until: float, limit: int = 20) -> ScopedQuery:
    """Stored calls of the PBX in [since, until) that the run did not derive again: how many,
    and the first few."""
    conds, params = _started(since, until)
    conds.append(f"call_id NOT IN (SELECT call_id FROM {REDERIVED_CALLS.name} "
                 "WHERE run_id = {run_id:String})")
    params["run_id"] = run_id
    scope = scope_of(pbx_id)
    stored = select(scope, "calls", "call_id", where=conds, parameters=params,
                    order_by="start, call_id")
    return compose(scope, "SELECT count() AS calls, arraySlice(groupArray(call_id), 1, "
                          "{first:UInt32}) AS first FROM (${stored})", {"stored": stored},
                   {"first": limit})


def shadow_page_query(run_id: str, *, after: str = "", limit: int = 5_000) -> Statement:
    """A page of one re-derivation run's calls, by call id after ``after``."""
    return Statement(f"SELECT {select_columns(CALL_FIELDS)} FROM {REDERIVED_CALLS.name} FINAL "
                     "WHERE run_id = {run_id:String} AND call_id > {after:String} "
                     "ORDER BY call_id LIMIT {limit:UInt32}",
                     {"run_id": run_id, "after": after, "limit": limit})


def shadow_legs_query(run_id: str, call_ids: Sequence[str]) -> Statement:
    """The legs of these calls in one re-derivation run."""
    return Statement(f"SELECT {select_columns(LEG_FIELDS)} FROM {REDERIVED_LEGS.name} FINAL "
                     "WHERE run_id = {run_id:String} AND call_id IN {ids:Array(String)} "
                     "ORDER BY call_id, leg_id", {"run_id": run_id, "ids": list(call_ids)})


def delete_rows_query(table: Table, pbx_id: str, call_ids: Sequence[str], *,
                      start_ms: Sequence[int] = (), versions: Sequence[int] = (),
                      keep_legs: Sequence[tuple[str, int]] = ()) -> Statement:
    """The DELETE (a mutation) of rows a re-derivation replaced: call rows that the new versions
    do not replace under FINAL (``call_ids`` pairwise with their old ``start_ms`` and
    ``versions``: another day, another sorting key), or the legs of ``call_ids`` other than
    ``keep_legs`` (leg id, version)."""
    params: dict[str, Any] = {"pbx_id": scope_of(pbx_id).tenant, "ids": list(call_ids)}
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
    return Statement(f"ALTER TABLE {table.name} DELETE WHERE pbx_id = {{pbx_id:String}} AND {cond}",
                     params)
