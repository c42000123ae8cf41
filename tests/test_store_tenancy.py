"""store.tenancy: every read of tenant data is confined to a tenant, a scope and the retention.

The pure half checks what the guard refuses and what it adds; the chDB half checks, on real
tables, that a read confined to one scope returns nothing outside it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from contracts.records import CallLeg, CallRecord
from store import queries as q
from store.clickhouse import ClickHouseStore, RetryPolicy
from store.tenancy import (
    DAY_MS,
    FINAL_SETTINGS,
    TABLES,
    TENANT_SETTING,
    Scope,
    ScopedQuery,
    ScopedReader,
    ScopeError,
    compose,
    day_hint,
    linkedid_epoch,
    select,
)

A = Scope.tenant_wide("acme")
USER_101 = Scope(tenant="acme", extensions=frozenset({"101"}))
SUPERVISOR = Scope(tenant="acme", extensions=frozenset({"105"}), queues=frozenset({"support"}))


# -- what the guard refuses (pure) ------------------------------------------------------------


def test_a_scope_names_a_tenant() -> None:
    with pytest.raises(ScopeError):
        Scope(tenant="")
    with pytest.raises(ScopeError):
        Scope(tenant=None, extensions=frozenset({"101"}))  # the operator reads whole tenants
    with pytest.raises(ScopeError):
        Scope(tenant="acme", queues=frozenset({"q"}))  # queues narrow an extension scope


def test_select_refuses_a_read_without_a_scope_or_of_an_unknown_table() -> None:
    with pytest.raises(ScopeError):
        select("acme", "calls", "call_id")  # type: ignore[arg-type]
    with pytest.raises(ScopeError):
        select(A, "schema_migrations", "version")
    with pytest.raises(ScopeError):
        select(A, "calls", "call_id", parameters={"scope_tenant": "other"})


def test_a_scoped_query_is_only_built_here() -> None:
    with pytest.raises(ScopeError):
        ScopedQuery("SELECT * FROM calls", {}, A, ("calls",), False)
    with pytest.raises(ScopeError):
        ScopedReader(_NoStore()).query("SELECT * FROM calls")  # type: ignore[arg-type]


def test_rows_of_a_call_are_read_for_named_visible_calls_only() -> None:
    with pytest.raises(ScopeError, match="named calls"):
        select(A, "call_legs", "leg_id")
    legs = select(USER_101, "call_legs", "leg_id", call_ids=["acme:1796683714.0"])
    # the calls the user sees, among those named
    assert "call_id IN (SELECT call_id FROM calls FINAL WHERE" in legs.sql
    assert "hasAny(parties, {scope_extensions:Array(String)})" in legs.sql


def test_a_whole_tenant_table_is_refused_to_a_narrower_scope() -> None:
    assert "pbx_id = {scope_tenant:String}" in select(A, "recording_access", "id").sql
    with pytest.raises(ScopeError, match="whole tenant"):
        select(USER_101, "recording_access", "id")


def test_compose_refuses_a_template_that_reads_a_tenant_table_itself() -> None:
    part = select(A, "calls", "call_id")
    with pytest.raises(ScopeError, match="reads 'calls' itself"):
        compose(A, "SELECT * FROM (${p}) JOIN calls USING call_id", {"p": part})
    with pytest.raises(ScopeError, match="not a read confined"):
        compose(A, "SELECT * FROM (${p})", {"p": select(USER_101, "calls", "call_id")})
    ok = compose(A, "SELECT count() FROM (${p})", {"p": part})
    assert ok.sql.endswith(FINAL_SETTINGS) and ok.tables == ("calls",)


@pytest.mark.parametrize("table", sorted(TABLES))
def test_every_table_read_carries_the_tenant_and_the_retention(table: str) -> None:
    scope = Scope(tenant="acme", not_before_ms=1_700_000_000_000)
    read = select(scope, table, "count()", call_ids=["acme:1.1"])
    assert read.parameters["scope_tenant"] == "acme"
    assert "pbx_id = {scope_tenant:String}" in read.sql
    assert f"{TABLES[table].time} >= fromUnixTimestamp64Milli({{scope_not_before_ms:Int64}}, 'UTC')" in read.sql


def test_the_operator_scope_cuts_each_tenant_at_its_own_retention() -> None:
    scope = Scope.operator(cutoffs={"acme": 100, "beta": 200}, default_cutoff_ms=50)
    read = select(scope, "calls", "count()")
    assert "transform(pbx_id" in read.sql
    assert read.parameters["scope_cutoff_ids"] == ["acme", "beta"]
    assert read.parameters["scope_cutoff_ms"] == [100, 200]
    assert Scope.operator(tenant="beta", cutoffs={"beta": 200}).not_before_ms == 200


def test_a_server_gets_the_tenant_for_its_row_policies() -> None:
    seen: list[dict] = []

    class Store:
        def query(self, sql, parameters=None, settings=None):  # type: ignore[no-untyped-def]
            seen.append(dict(settings or {}))
            return []

    ScopedReader(Store(), row_policies=True).query(select(A, "calls", "call_id"))
    ScopedReader(Store()).query(select(A, "calls", "call_id"))
    assert seen == [{TENANT_SETTING: "acme"}, {}]


def test_a_call_id_names_the_day_its_call_started() -> None:
    assert linkedid_epoch("acme:1796683714.0") == 1796683714
    assert linkedid_epoch("acme:pbx-eu-1796683714.12") == 1796683714
    assert linkedid_epoch("acme:not-a-uniqueid") is None
    assert day_hint(["a:1796683714.0", "a:1796683800.3"]) == (
        1796683714_000 - DAY_MS, 1796683801_000 + DAY_MS)
    assert day_hint(["a:1796683714.0", "a:x"]) is None


class _NoStore:
    def query(self, sql, parameters=None, settings=None):  # type: ignore[no-untyped-def]
        raise AssertionError("nothing may run")


# -- on real tables ------------------------------------------------------------------------------

T0 = 1796683714.0  # 2026-12-07 (the PJSIP capture's first call)


def record(pbx: str, n: int, *, minute: float = 0, caller: str = "+48601234567",
           called: str = "+48221234501", direction: str = "inbound", rang: tuple[str, ...] = (),
           answered_by: str | None = None, queue: str = "") -> CallRecord:
    start = T0 + minute * 60
    return CallRecord(
        call_id=f"{pbx}:{int(start)}.{n}", pbx_id=pbx, linkedid=f"{int(start)}.{n}",
        direction=direction, caller=caller, caller_name="", called=called,  # type: ignore[arg-type]
        answered=answered_by is not None, first_answered_by=answered_by,
        last_answered_by=answered_by, status="answered" if answered_by else "missed",
        start=start, answer=start + 3 if answered_by else None, end=start + 60, duration_s=60.0,
        wait_s=3.0 if answered_by else None, talk_s=57.0 if answered_by else 0.0, hangup_cause=16,
        hangup_cause_text="", hangup_by="caller", extensions_rang=rang, queue=queue,
        transferred=False, forwarded=False, recordings=(), disposition="", incomplete=False,
        version=1,
    )


CALLS = [
    record("acme", 1, rang=("101",), answered_by="101"),
    record("acme", 2, minute=1, rang=("102",)),
    record("acme", 3, minute=2, rang=("104", "105"), answered_by="104", queue="support"),
    record("acme", 4, minute=3, direction="outbound", caller="101", called="0601234567"),
    record("acme", 5, minute=-400 * 24 * 60, rang=("101",)),  # 400 days before: past retention
    record("beta", 1, rang=("101",), answered_by="101"),  # another tenant, same extension
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseStore]:
    s = ClickHouseStore.connect(f"chdb://{tmp_path_factory.mktemp('chdb-tenancy')}",
                                retry=RetryPolicy(attempts=1))
    s.migrate()
    s.command("ALTER TABLE calls REMOVE TTL")  # the 400-day-old call must be there to be hidden
    s.write_calls(CALLS, "tok-tenancy")
    s.write_legs([CallLeg(leg_id=f"{c.pbx_id}:leg{i}", call_id=c.call_id, pbx_id=c.pbx_id,
                          linkedid=c.linkedid, kind="device", extension=(c.extensions_rang or ("",))[0],
                          channel="PJSIP/x", start=c.start, answer=None, end=c.end, ring_s=1.0,
                          talk_s=0.0, outcome="NOANSWER", answered=False, version=1)
                  for i, c in enumerate(CALLS)], "tok-tenancy-legs")
    yield s
    s.close()


def history(store: ClickHouseStore, scope: Scope) -> list[str]:
    return [r["call_id"] for r in q.call_history(ScopedReader(store), scope)]


@pytest.mark.integration
def test_a_tenant_never_reads_another_tenants_calls(store: ClickHouseStore) -> None:
    assert all(c.startswith("acme:") for c in history(store, A))
    assert history(store, Scope.tenant_wide("beta")) == [CALLS[5].call_id]
    assert history(store, Scope.tenant_wide("nobody")) == []


@pytest.mark.integration
def test_a_user_reads_the_calls_their_extensions_took_part_in(store: ClickHouseStore) -> None:
    assert history(store, USER_101) == [CALLS[3].call_id, CALLS[0].call_id, CALLS[4].call_id]
    assert history(store, Scope(tenant="acme", extensions=frozenset())) == []


@pytest.mark.integration
def test_a_supervisor_reads_their_group_and_their_queues(store: ClickHouseStore) -> None:
    assert history(store, SUPERVISOR) == [CALLS[2].call_id]
    assert history(store, Scope(tenant="acme", extensions=frozenset({"103"}),
                                queues=frozenset({"support"}))) == [CALLS[2].call_id]


@pytest.mark.integration
def test_calls_past_retention_are_never_returned(store: ClickHouseStore) -> None:
    cut = round((T0 - 365 * 86400) * 1000)
    kept = history(store, Scope(tenant="acme", not_before_ms=cut))
    assert CALLS[4].call_id not in kept and len(kept) == 4
    per_tenant = Scope.operator(cutoffs={"acme": cut}, default_cutoff_ms=0)
    assert CALLS[4].call_id not in history(store, per_tenant)
    assert CALLS[5].call_id in history(store, per_tenant)


@pytest.mark.integration
def test_legs_of_a_call_the_scope_does_not_see_are_not_read(store: ClickHouseStore) -> None:
    reader = ScopedReader(store)

    def legs(scope: Scope, call_id: str) -> list[str]:
        return [r["call_id"] for r in reader.query(select(scope, "call_legs", "call_id",
                                                          call_ids=[call_id]))]

    assert legs(USER_101, CALLS[0].call_id) == [CALLS[0].call_id]
    assert legs(USER_101, CALLS[1].call_id) == []  # rang 102 only
    assert legs(A, CALLS[5].call_id) == []  # beta's call
    one = reader.query(select(A, "calls", "call_id", call_ids=[CALLS[1].call_id]))
    assert [r["call_id"] for r in one] == [CALLS[1].call_id]
