"""Who may read what: every read of tenant data is built here, confined to a tenant and a scope.

A :class:`Scope` names the tenant (a PBX id) and, for a user or a supervisor, the extensions and
queues whose calls may be seen, and the retention cutoff before which nothing is returned.
:func:`select` is the one way a SELECT over a tenant table is built: it refuses to build one without
a Scope, and adds the scope's conditions to the table it reads, as :data:`TABLES` says that table is
confined. :func:`compose` nests such reads (subqueries, CTEs, joins) and refuses a template that reads
a tenant table itself. :class:`ScopedReader` runs only what these two built. Models: snuba's
required-column validator (a query without its ``project_id`` condition is rejected) and PostHog's
``team_id`` guard added to every table read.

* The tenant: ``pbx_id = {scope_tenant}`` on every row read. The operator's scope
  (:meth:`Scope.operator`, the CLI's) reads every tenant and is never built from a request.
* The scope: a user sees the calls in which one of their extensions took part (``parties``: caller,
  called, who answered, who rang); a supervisor also those through their queues. The rows of a call
  (legs, recordings) are read only for named calls, and only those of the calls the scope sees.
* Retention: rows older than the tenant's cutoff are never returned, from the day they expire,
  whatever the storage has not deleted yet.
* FINAL reads with ``do_not_merge_across_partitions_select_final``: a row's versions never span
  partitions, since every table here is partitioned by a time that never changes for a row (a call's
  ``start`` is fixed when its first channel appears), so each partition is merged on its own and
  partition pruning stays on.

Values only ever travel as server-side parameters; the SQL text is assembled from fixed fragments.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

PARAM_PREFIX = "scope_"
"""Parameters the guard adds; a caller's own parameters may not start with it."""

FINAL_SETTINGS = " SETTINGS do_not_merge_across_partitions_select_final = 1"

DAY_MS = 86_400_000


class ScopeError(ValueError):
    """A read that cannot be confined as asked (a programming error, never a user's input)."""


@dataclass(frozen=True)
class Scope:
    """The tenant and what of it may be read.

    ``extensions`` None means every call of the tenant; a set (possibly empty: nothing) limits the
    calls to those in which one of them took part, or (``queues``) that went through one of those
    queues. ``not_before_ms`` is the retention cutoff (epoch ms): older rows are never returned.
    The operator scope (``tenant`` None, :meth:`operator`) reads every tenant, each with its own
    cutoff from ``cutoffs`` (else ``default_cutoff_ms``).
    """

    tenant: str | None
    extensions: frozenset[str] | None = None
    queues: frozenset[str] = frozenset()
    not_before_ms: int | None = None
    cutoffs: tuple[tuple[str, int], ...] = ()
    default_cutoff_ms: int | None = None

    def __post_init__(self) -> None:
        if self.tenant is not None and (not isinstance(self.tenant, str) or not self.tenant):
            raise ScopeError("a scope's tenant is a non-empty PBX id")
        if self.tenant is None and self.extensions is not None:
            raise ScopeError("the operator scope reads whole tenants")
        if self.tenant is not None and (self.cutoffs or self.default_cutoff_ms is not None):
            raise ScopeError("a tenant scope has one cutoff (not_before_ms)")
        if self.extensions is None and self.queues:
            raise ScopeError("queues narrow a scope limited to extensions")

    @classmethod
    def tenant_wide(cls, tenant: str, *, not_before_ms: int | None = None) -> Scope:
        return cls(tenant=tenant, not_before_ms=not_before_ms)

    @classmethod
    def operator(cls, *, tenant: str | None = None, cutoffs: Mapping[str, int] | None = None,
                 default_cutoff_ms: int | None = None) -> Scope:
        """What the operator's commands read: one tenant (``tenant``) or all of them, each older
        than its own retention cutoff left out."""
        if tenant is not None:
            cut = (cutoffs or {}).get(tenant, default_cutoff_ms)
            return cls(tenant=tenant, not_before_ms=cut)
        return cls(tenant=None, cutoffs=tuple(sorted((cutoffs or {}).items())),
                   default_cutoff_ms=default_cutoff_ms)

    @property
    def restricted(self) -> bool:
        """Whether the scope is narrower than its whole tenant."""
        return self.extensions is not None


Confinement = Literal["calls", "call_rows", "tenant"]


@dataclass(frozen=True)
class Guarded:
    """How reads of one table are confined.

    ``calls``: rows are calls, each visible to a restricted scope through ``parties`` (an array of
    every extension and number that took part) and ``queue``. ``call_rows``: rows belong to a call
    (``call_id``) and are read only for named calls the scope sees. ``tenant``: rows of the whole
    tenant, for unrestricted scopes only (an admin's, the operator's).
    """

    name: str
    time: str  # the row's time: the retention cutoff applies to it, and it partitions the table
    confinement: Confinement
    parties: str = ""  # "calls": the array column a restricted scope's extensions must meet
    queue: str = ""  # "calls": the column a supervisor's queues match
    final: bool = True  # a ReplacingMergeTree read with FINAL


TABLES: Mapping[str, Guarded] = {
    t.name: t
    for t in (
        Guarded("calls", "start", "calls", parties="parties", queue="queue"),
        Guarded("call_legs", "start", "call_rows"),
        Guarded("recordings", "start", "call_rows"),
        Guarded("recording_access", "at", "tenant", final=False),
    )
}
"""Every tenant table a scoped read may touch; a table absent here cannot be read by :func:`select`."""


@dataclass(frozen=True)
class ScopedQuery:
    """A SELECT confined to ``scope``; build it with :func:`select` or :func:`compose` only.

    ``body`` is the statement without its SETTINGS clause (what :func:`compose` nests); ``sql`` is
    what runs.
    """

    body: str
    parameters: Mapping[str, Any]
    scope: Scope
    tables: tuple[str, ...]
    final: bool
    _built: object = field(repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self._built is not _BUILT:
            raise ScopeError("a ScopedQuery is built by store.tenancy.select or compose only")

    @property
    def sql(self) -> str:
        return self.body + FINAL_SETTINGS if self.final else self.body


_BUILT = object()


def select(
    scope: Scope,
    table: str,
    columns: str,
    *,
    alias: str = "",
    where: Sequence[str] = (),
    parameters: Mapping[str, Any] | None = None,
    call_ids: Sequence[str] | None = None,
    group_by: str = "",
    order_by: str = "",
    limit: str = "",
    final: bool = True,
) -> ScopedQuery:
    """``SELECT columns FROM table [FINAL] WHERE <scope> AND where… [GROUP BY] [ORDER BY] [LIMIT]``.

    ``where``, ``group_by``, ``order_by``, ``limit`` and ``columns`` are fixed SQL fragments of the
    caller's (values as ``{name:Type}`` parameters in ``parameters``). ``call_ids`` names the calls
    read: required for a table of call rows, optional for ``calls`` (a point read, pruned to the
    days the call ids' Asterisk uniqueids name).
    """
    if not isinstance(scope, Scope):
        raise ScopeError("select needs a Scope")
    guarded = TABLES.get(table)
    if guarded is None:
        raise ScopeError(f"{table!r} is not a tenant table this module knows how to confine")
    params = dict(parameters or {})
    if any(k.startswith(PARAM_PREFIX) for k in params):
        raise ScopeError(f"parameters starting with {PARAM_PREFIX!r} are the guard's")
    conds, guard_params = _guard(scope, guarded, alias, call_ids)
    params.update(guard_params)
    source = f"{table} AS {alias}" if alias else table
    use_final = final and guarded.final
    sql = f"SELECT {columns} FROM {source}{' FINAL' if use_final else ''}"
    sql += " WHERE " + " AND ".join([*conds, *(f"({w})" for w in where)])
    if group_by:
        sql += f" GROUP BY {group_by}"
    if order_by:
        sql += f" ORDER BY {order_by}"
    if limit:
        sql += f" LIMIT {limit}"
    return ScopedQuery(sql, params, scope, (table,), use_final, _BUILT)


_TABLE_READ = re.compile(r"\b(?:FROM|JOIN)\s+`?([A-Za-z_][A-Za-z0-9_]*)`?", re.IGNORECASE)


def compose(scope: Scope, template: str, parts: Mapping[str, ScopedQuery],
            parameters: Mapping[str, Any] | None = None) -> ScopedQuery:
    """A query built around scoped reads: ``template`` names each part as ``${name}`` (its SQL,
    to be placed in parentheses or a WITH clause) and reads no tenant table itself.

    Every part must be confined to the same scope.
    """
    for name, part in parts.items():
        if not isinstance(part, ScopedQuery) or part.scope != scope:
            raise ScopeError(f"part {name!r} is not a read confined to this scope")
    for m in _TABLE_READ.finditer(template):
        if m.group(1) in TABLES:
            raise ScopeError(f"the template reads {m.group(1)!r} itself: read it through select()")
    params: dict[str, Any] = dict(parameters or {})
    if any(k.startswith(PARAM_PREFIX) for k in params):
        raise ScopeError(f"parameters starting with {PARAM_PREFIX!r} are the guard's")
    for part in parts.values():
        for k, v in part.parameters.items():
            if k in params and params[k] != v:
                raise ScopeError(f"parameter {k!r} has two values in one query")
            params[k] = v
    try:
        sql = string.Template(template).substitute({name: p.body for name, p in parts.items()})
    except (KeyError, ValueError) as e:
        raise ScopeError(f"template and parts do not match: {e}") from None
    tables = tuple(t for p in parts.values() for t in p.tables)
    return ScopedQuery(sql, params, scope, tables, any(p.final for p in parts.values()), _BUILT)


def _guard(scope: Scope, table: Guarded, alias: str,
           call_ids: Sequence[str] | None) -> tuple[list[str], dict[str, Any]]:
    col = (lambda c: f"{alias}.{c}") if alias else (lambda c: c)
    conds: list[str] = []
    params: dict[str, Any] = {}
    if scope.tenant is not None:
        conds.append(f"{col('pbx_id')} = {{{PARAM_PREFIX}tenant:String}}")
        params[PARAM_PREFIX + "tenant"] = scope.tenant
    cut = _cutoff(scope, col("pbx_id"), params)
    if cut:
        conds.append(f"{col(table.time)} >= fromUnixTimestamp64Milli({cut}, 'UTC')")
    if call_ids is not None:
        ids = _call_ids(call_ids)
        conds.append(f"{col('call_id')} IN {{{PARAM_PREFIX}call_ids:Array(String)}}")
        params[PARAM_PREFIX + "call_ids"] = ids
        hint = day_hint(ids)
        if hint is not None and table.confinement == "calls":
            conds.append(f"{col(table.time)} >= fromUnixTimestamp64Milli({{{PARAM_PREFIX}from_ms:Int64}}, 'UTC')"
                         f" AND {col(table.time)} < fromUnixTimestamp64Milli({{{PARAM_PREFIX}to_ms:Int64}}, 'UTC')")
            params[PARAM_PREFIX + "from_ms"], params[PARAM_PREFIX + "to_ms"] = hint
    if table.confinement == "calls":
        if scope.restricted:
            conds.append(_scope_of_calls(scope, col(table.parties), col(table.queue), params))
    elif table.confinement == "call_rows":
        if call_ids is None:
            raise ScopeError(f"{table.name} is read for named calls only (call_ids)")
        if scope.restricted:
            calls = TABLES["calls"]
            inner, inner_params = _guard(scope, calls, "", call_ids)
            params.update(inner_params)
            conds.append(f"{col('call_id')} IN (SELECT call_id FROM calls FINAL WHERE "
                         + " AND ".join(inner) + ")")
    elif scope.restricted:
        raise ScopeError(f"{table.name} is for a whole tenant's scope only")
    if not conds:  # the operator scope over every tenant, no retention: still one condition
        conds.append("1")
    return conds, params


def _scope_of_calls(scope: Scope, parties: str, queue: str, params: dict[str, Any]) -> str:
    params[PARAM_PREFIX + "extensions"] = sorted(scope.extensions or ())
    cond = f"hasAny({parties}, {{{PARAM_PREFIX}extensions:Array(String)}})"
    if scope.queues:
        params[PARAM_PREFIX + "queues"] = sorted(scope.queues)
        cond += f" OR {queue} IN {{{PARAM_PREFIX}queues:Array(String)}}"
    return f"({cond})"


def _cutoff(scope: Scope, pbx_col: str, params: dict[str, Any]) -> str:
    """The SQL of the scope's retention cutoff (epoch ms), or "" when there is none."""
    if scope.tenant is not None:
        if scope.not_before_ms is None:
            return ""
        params[PARAM_PREFIX + "not_before_ms"] = int(scope.not_before_ms)
        return f"{{{PARAM_PREFIX}not_before_ms:Int64}}"
    if not scope.cutoffs and scope.default_cutoff_ms is None:
        return ""
    params[PARAM_PREFIX + "cutoff_ids"] = [t for t, _ in scope.cutoffs]
    params[PARAM_PREFIX + "cutoff_ms"] = [int(ms) for _, ms in scope.cutoffs]
    params[PARAM_PREFIX + "cutoff_default_ms"] = int(scope.default_cutoff_ms or 0)
    return (f"transform({pbx_col}, {{{PARAM_PREFIX}cutoff_ids:Array(String)}}, "
            f"{{{PARAM_PREFIX}cutoff_ms:Array(Int64)}}, {{{PARAM_PREFIX}cutoff_default_ms:Int64}})")


def _call_ids(call_ids: Sequence[str]) -> list[str]:
    ids = list(call_ids)
    if not all(isinstance(i, str) for i in ids):
        raise ScopeError("call ids are strings")
    return ids


_UNIQUEID_EPOCH = re.compile(r"(\d{9,11})\.\d+$")


def linkedid_epoch(call_id: str) -> int | None:
    """The epoch second an Asterisk uniqueid (``[system-]<epoch>.<n>``) at the end of a call id
    names: when the call's first channel was created, which is the call's start."""
    m = _UNIQUEID_EPOCH.search(call_id)
    return int(m.group(1)) if m else None


def day_hint(call_ids: Iterable[str]) -> tuple[int, int] | None:
    """Epoch ms bounds (a day either side) of the calls' starts, from their ids; None when an id
    names no time (then the read is not pruned)."""
    epochs = [linkedid_epoch(i) for i in call_ids]
    if not epochs or any(e is None for e in epochs):
        return None
    lo, hi = min(e for e in epochs if e is not None), max(e for e in epochs if e is not None)
    return lo * 1000 - DAY_MS, (hi + 1) * 1000 + DAY_MS


# -- running -----------------------------------------------------------------------------------

TENANT_SETTING = "SQL_pbxpipe_tenant"
"""The custom setting a ClickHouse server's row policies (migration 0004) read the tenant from."""


class Queryable(Protocol):
    def query(self, sql: str, parameters: Mapping[str, Any] | None = None,
              settings: Mapping[str, Any] | None = None) -> list[dict[str, Any]]: ...

    def raw_stream(self, sql: str, parameters: Mapping[str, Any] | None = None,
                   settings: Mapping[str, Any] | None = None, fmt: str = "CSV") -> Any: ...

    def query_arrow(self, sql: str, parameters: Mapping[str, Any] | None = None,
                    settings: Mapping[str, Any] | None = None) -> Any: ...


class ScopedReader:
    """Runs scoped reads only: what the API's services (and the tenant-aware commands) hold
    instead of the store. ``row_policies``: the store is a ClickHouse server whose row policies
    take the tenant from :data:`TENANT_SETTING` (a second wall behind this module's)."""

    def __init__(self, store: Queryable, *, row_policies: bool = False) -> None:
        self._store = store
        self._row_policies = row_policies

    def query(self, q: ScopedQuery) -> list[dict[str, Any]]:
        return self._store.query(self._checked(q).sql, q.parameters, self.settings(q))

    def raw_stream(self, q: ScopedQuery, fmt: str) -> Any:
        """The read's result in ClickHouse's ``fmt``, streamed (exports)."""
        return self._store.raw_stream(self._checked(q).sql, q.parameters, self.settings(q), fmt)

    def arrow(self, q: ScopedQuery) -> Any:
        """The read's result as an Arrow table."""
        return self._store.query_arrow(self._checked(q).sql, q.parameters, self.settings(q))

    @staticmethod
    def _checked(q: ScopedQuery) -> ScopedQuery:
        if not isinstance(q, ScopedQuery):
            raise ScopeError("only scoped reads run here (store.tenancy.select)")
        return q

    def settings(self, q: ScopedQuery) -> dict[str, Any]:
        """The query settings a scoped read runs with."""
        if self._row_policies and q.scope.tenant is not None:
            return {TENANT_SETTING: q.scope.tenant}
        return {}
