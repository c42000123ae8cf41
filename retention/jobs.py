"""Retention jobs against ClickHouse and the object store: policies, apply, status, legal holds,
erasure. The thin I/O shell around ``retention.policies`` and ``retention.erasure``.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog

from contracts import metrics
from contracts.errors import ObjectStoreError, RetentionError
from retention.erasure import (
    Hold,
    check_number,
    hold_condition,
    number_condition,
    number_fingerprint,
    split_held,
)
from retention.policies import (
    Policy,
    cutoffs,
    lifecycle_rules,
    make_policy,
    ttl_clause,
    ttl_days_expression,
)
from retention.recordings import HELD_PREFIX
from store.clickhouse import ClickHouseStore
from store.objects import LocalObjectStore, ObjectStore
from store.tenancy import Scope

log = structlog.get_logger("retention.jobs")

SYNC = {"mutations_sync": 2}
# table -> (time column, is it a recordings table)
TTL_TABLES = {"calls": ("start", False), "call_legs": ("start", False),
              "quarantine": ("received_at", False), "recordings": ("start", True)}


def _ms(t: float) -> int:
    return round(t * 1000)


# -- policies ----------------------------------------------------------------------------------


def load_policies(store: ClickHouseStore) -> dict[str, Policy]:
    rows = store.query("SELECT customer, call_days, recording_days FROM retention_policies FINAL")
    return {r["customer"]: Policy(customer=r["customer"], call_days=int(r["call_days"]),
                                  recording_days=int(r["recording_days"])) for r in rows}


def operator_scope(store: ClickHouseStore, default: Policy, now: float,
                   tenant: str | None = None) -> Scope:
    """What the operator's commands read: one tenant or all, without the calls past retention."""
    own, rest = cutoffs(load_policies(store), default, now)
    return Scope.operator(tenant=tenant, cutoffs=own, default_cutoff_ms=rest)


def set_policy(store: ClickHouseStore, policy: Policy, now: float) -> None:
    store.command(
        "INSERT INTO retention_policies (customer, call_days, recording_days, updated_at, version) "
        "SELECT {c:String}, {d:UInt32}, {r:UInt32}, fromUnixTimestamp64Milli({t:Int64}, 'UTC'), {v:UInt64}",
        {"c": policy.customer, "d": policy.call_days, "r": policy.recording_days,
         "t": _ms(now), "v": _ms(now)},
    )


def apply(store: ClickHouseStore, objects: ObjectStore, default: Policy, now: float) -> dict[str, Any]:
    """Set each table's TTL and the bucket's lifecycle rules from the policies, copy newly
    matching calls of active holds aside, and (local store only) expire objects."""
    policies = load_policies(store)
    synced = sync_holds(store, objects, now)  # first: nothing held may expire in between
    ttls = {}
    for table, (col, is_rec) in TTL_TABLES.items():
        column = "pbx_id"
        expr = ttl_clause(col, ttl_days_expression(policies, default, column=column,
                                                   recordings=is_rec))
        store.command(f"ALTER TABLE {table} MODIFY TTL {expr}", settings=SYNC)
        ttls[table] = expr
    customers = {r["pbx_id"] for r in store.query("SELECT DISTINCT pbx_id FROM recordings")}
    rules = lifecycle_rules(customers, policies, default)
    objects.set_lifecycle(rules)
    expired = objects.expire(now) if isinstance(objects, LocalObjectStore) else 0
    metrics.RETENTION_JOB_SUCCESS.labels("apply").set(time.time())
    log.info("retention_applied", tables=len(ttls), rules=len(rules), held_rows=synced,
             local_objects_expired=expired)
    return {"ttl": ttls, "lifecycle": rules, "held_rows_synced": synced, "objects_expired": expired}


def status(store: ClickHouseStore, objects: ObjectStore, default: Policy, now: float) -> dict[str, Any]:
    """Each customer's policy, its oldest call and when that expires, the tables' TTLs, the
    bucket's rules and the active holds."""
    policies = load_policies(store)
    rows = store.query(
        "SELECT pbx_id, toUnixTimestamp64Milli(min(start)) AS oldest_ms, count() AS calls "
        "FROM calls GROUP BY pbx_id ORDER BY pbx_id")
    customers = []
    seen = set()
    for r in rows:
        p = policies.get(r["pbx_id"], default)
        seen.add(r["pbx_id"])
        oldest = r["oldest_ms"] / 1000
        customers.append({
            "customer": r["pbx_id"], "policy": "own" if r["pbx_id"] in policies else "default",
            "call_days": p.call_days, "recording_days": p.recording_days, "calls": r["calls"],
            "oldest_call": _iso(oldest), "next_expiry": _iso(oldest + p.call_days * 86400),
        })
    for c, p in sorted(policies.items()):
        if c not in seen:
            customers.append({"customer": c, "policy": "own", "call_days": p.call_days,
                              "recording_days": p.recording_days, "calls": 0,
                              "oldest_call": None, "next_expiry": None})
    ttl = {}
    for r in store.query("SELECT name, create_table_query FROM system.tables WHERE "
                         "database = currentDatabase() AND name IN ('calls', 'call_legs', "
                         "'quarantine', 'recordings')"):
        q = r["create_table_query"]
        ttl[r["name"]] = q.split(" TTL ", 1)[1].split(" SETTINGS ", 1)[0] if " TTL " in q else None
    return {
        "default": {"call_days": default.call_days, "recording_days": default.recording_days},
        "customers": customers, "ttl": ttl,
        "lifecycle": [msgspec.structs.asdict(r) for r in objects.lifecycle()],
        "holds": [msgspec.structs.asdict(h) for h in active_holds(store)],
        "now": _iso(now),
    }


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


# -- legal holds -------------------------------------------------------------------------------


def active_holds(store: ClickHouseStore) -> list[Hold]:
    rows = store.query(
        "SELECT hold_id, kind, value, reason, created_by, toUnixTimestamp64Milli(created_at) AS t "
        "FROM legal_holds FINAL WHERE released_at IS NULL ORDER BY created_at, hold_id")
    return [Hold(hold_id=r["hold_id"], kind=r["kind"], value=r["value"], reason=r["reason"],
                 created_by=r["created_by"], created_at=r["t"] / 1000) for r in rows]


def place_hold(store: ClickHouseStore, objects: ObjectStore, kind: str, value: str, reason: str,
               actor: str, now: float) -> tuple[Hold, int]:
    """Record a hold and copy what it protects aside at once; returns the hold and rows copied."""
    if kind == "number":
        check_number(value)
    hold = Hold(hold_id=uuid.uuid4().hex[:12], kind=kind, value=value, reason=reason,
                created_by=actor, created_at=now)
    hold_condition(hold)  # validates the kind
    store.command(
        "INSERT INTO legal_holds (hold_id, kind, value, reason, created_by, created_at, "
        "released_at, version) SELECT {id:String}, {k:String}, {v:String}, {r:String}, "
        "{by:String}, fromUnixTimestamp64Milli({t:Int64}, 'UTC'), NULL, {ver:UInt64}",
        {"id": hold.hold_id, "k": kind, "v": value, "r": reason, "by": actor, "t": _ms(now),
         "ver": _ms(now)},
    )
    copied = _copy_held(store, objects, hold, now)
    metrics.RETENTION_JOB_SUCCESS.labels("hold").set(time.time())
    log.info("hold_placed", hold_id=hold.hold_id, kind=kind, rows=copied)
    return hold, copied


def release_hold(store: ClickHouseStore, objects: ObjectStore, hold_id: str, now: float) -> int:
    """End a hold: its copies go (the originals follow their normal retention); returns copies removed."""
    rows = store.query("SELECT hold_id, kind, value, reason, created_by, created_at FROM legal_holds "
                       "FINAL WHERE hold_id = {id:String} AND released_at IS NULL", {"id": hold_id})
    if not rows:
        raise RetentionError(f"no active hold {hold_id!r}")
    r = rows[0]
    removed = 0
    for info in list(objects.scan(f"{HELD_PREFIX}{hold_id}/")):
        if objects.supports_legal_hold():
            objects.set_legal_hold(info.key, False)
        objects.delete(info.key)
        removed += 1
    store.command("ALTER TABLE held_rows DELETE WHERE hold_id = {id:String}", {"id": hold_id},
                  settings=SYNC)
    store.command(
        "INSERT INTO legal_holds (hold_id, kind, value, reason, created_by, created_at, "
        "released_at, version) SELECT {id:String}, {k:String}, {v:String}, {r:String}, {by:String}, "
        "{c:DateTime64(3, 'UTC')}, fromUnixTimestamp64Milli({t:Int64}, 'UTC'), {ver:UInt64}",
        {"id": hold_id, "k": r["kind"], "v": r["value"], "r": r["reason"], "by": r["created_by"],
         "c": r["created_at"], "t": _ms(now), "ver": _ms(now) + 1},
    )
    log.info("hold_released", hold_id=hold_id, objects=removed)
    return removed


def sync_holds(store: ClickHouseStore, objects: ObjectStore, now: float) -> int:
    """Copy aside what every active hold covers now (calls that arrived since it was placed)."""
    return sum(_copy_held(store, objects, h, now) for h in active_holds(store))


def _copy_held(store: ClickHouseStore, objects: ObjectStore, hold: Hold, now: float) -> int:
    cond, params = hold_condition(hold)
    params = {**params, "hid": hold.hold_id, "t": _ms(now)}
    calls = f"SELECT call_id FROM calls FINAL WHERE {cond}"
    before = _held_count(store, hold.hold_id)
    for table, row_id, where in (
        ("calls", "call_id", cond),
        ("call_legs", "leg_id", f"call_id IN ({calls})"),
        ("recordings", "key", f"call_id IN ({calls})"),
    ):
        store.command(
            f"INSERT INTO held_rows SELECT {{hid:String}}, '{table}', call_id, pbx_id, start, "
            f"{row_id}, formatRowNoNewline('JSONEachRow', *), "
            f"fromUnixTimestamp64Milli({{t:Int64}}, 'UTC') FROM {table} FINAL WHERE {where}",
            params)
    keys = store.query(f"SELECT key FROM recordings FINAL WHERE call_id IN ({calls})", params)
    lock = objects.supports_legal_hold()
    for r in keys:
        dst = f"{HELD_PREFIX}{hold.hold_id}/{r['key']}"
        if objects.stat(dst) is None:
            objects.copy(r["key"], dst)
            if lock:
                objects.set_legal_hold(dst, True)
    return _held_count(store, hold.hold_id) - before


def _held_count(store: ClickHouseStore, hold_id: str) -> int:
    rows = store.query("SELECT count() AS n FROM held_rows FINAL WHERE hold_id = {id:String}",
                       {"id": hold_id})
    return int(rows[0]["n"])


# -- erasure -----------------------------------------------------------------------------------


def erase_number(store: ClickHouseStore, objects: ObjectStore, number: str, *, actor: str,
                 now: float, dry_run: bool = False) -> dict[str, Any]:
    """Remove every call, leg, recording (row and object) and quarantined frame involving
    ``number``, except what a legal hold keeps; write one audit entry. Objects go first, then rows,
    so a failure half-way leaves rows that point at the work still to do (run it again)."""
    cond, params = number_condition(number)
    rows = store.query(f"SELECT call_id, pbx_id, caller, called, parties FROM calls FINAL WHERE {cond}",
                       params)
    erase, held = split_held(rows, active_holds(store))
    digits = check_number(number)
    result: dict[str, Any] = {"calls": len(erase), "legs": 0, "recordings": 0, "quarantined": 0,
                              "held": held, "dry_run": dry_run}
    if erase:
        ids = {"ids": erase}
        result["legs"] = int(store.query(
            "SELECT count() AS n FROM call_legs FINAL WHERE call_id IN {ids:Array(String)}", ids)[0]["n"])
        keys = [r["key"] for r in store.query(
            "SELECT key FROM recordings FINAL WHERE call_id IN {ids:Array(String)}", ids)]
        result["recordings"] = len(keys)
    else:
        keys = []
    # quarantined frames: any run of digits that is this number (phone numbers only: an
    # extension's 3 digits appear in too many unrelated headers)
    qcond = ("arrayExists(x -> if(length(x) >= 9, right(x, 9), x) = {d:String}, "
             "extractAll(raw, '[0-9]+'))")
    if len(digits) >= 9:
        result["quarantined"] = int(store.query(
            f"SELECT count() AS n FROM quarantine WHERE {qcond}", {"d": digits})[0]["n"])
    if not dry_run:
        for key in keys:
            # a recording locked for its retention (governance mode) is erased all the same:
            # erasure is owed now, and the lock exists against accidents, not against the law
            objects.delete(key, bypass_governance=True)
            if objects.stat(key) is not None:
                raise ObjectStoreError(f"{key} still present after delete")
        if erase:
            ids = {"ids": erase}
            for table in ("recordings", "call_legs", "calls"):
                store.command(f"ALTER TABLE {table} DELETE WHERE call_id IN {{ids:Array(String)}}",
                              ids, settings=SYNC)
        if result["quarantined"]:
            store.command(f"ALTER TABLE quarantine DELETE WHERE {qcond}", {"d": digits},
                          settings=SYNC)
        for kind in ("calls", "legs", "recordings", "quarantined"):
            metrics.RETENTION_ERASED.labels(kind).inc(result[kind])
    store.command(
        "INSERT INTO erasure_audit (at, actor, number_sha256, dry_run, calls, legs, recordings, "
        "quarantined, held_calls, erased_calls) SELECT fromUnixTimestamp64Milli({t:Int64}, 'UTC'), "
        "{a:String}, {h:String}, {dry:Bool}, {c:UInt64}, {l:UInt64}, {r:UInt64}, {q:UInt64}, "
        "{held:Array(String)}, {erased:Array(String)}",
        {"t": _ms(now), "a": actor, "h": number_fingerprint(number), "dry": dry_run,
         "c": result["calls"], "l": result["legs"], "r": result["recordings"],
         "q": result["quarantined"], "held": sorted(held), "erased": sorted(erase)},
    )
    if not dry_run:
        metrics.RETENTION_JOB_SUCCESS.labels("erase").set(time.time())
    log.info("number_erased", dry_run=dry_run, calls=result["calls"], legs=result["legs"],
             recordings=result["recordings"], quarantined=result["quarantined"], held=len(held))
    return result


def default_policy(call_days: int, recording_days: int) -> Policy:
    return make_policy("", call_days, recording_days)
