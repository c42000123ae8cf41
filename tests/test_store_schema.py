"""store.schema and migrations: the tables follow the contracts' Structs, migrating is idempotent."""

from __future__ import annotations

import subprocess
import sys
import types
import typing
from collections.abc import Iterator
from decimal import Decimal

import pytest

from contracts.records import CallRecord, Quarantined
from store.clickhouse import ClickHouseStore
from store.schema import (
    CALLS,
    QUARANTINE,
    RECONCILE_RUNS,
    REDERIVED_CALLS,
    REDERIVED_LEGS,
    TABLES,
    TARIFF_ALERTS,
    PANEL_TABLES,
    TARIFFS,
    Migration,
    Table,
    batch_token,
    load_migrations,
    pending,
    quarantine_id,
    split_statements,
)

TIME_FIELDS = {"start", "answer", "end", "received_at", "valid_from", "valid_to", "hour", "at",
               "created_at", "expires_at", "revoked_at", "updated_at", "run_at", "since", "until"}


def test_split_statements_drops_comments_and_splits_on_line_end_semicolons() -> None:
    sql = "-- header; not a statement\nCREATE TABLE a (x String DEFAULT ';')\nENGINE = Log;\n\n  SELECT 1 ;\n"
    assert split_statements(sql) == ("CREATE TABLE a (x String DEFAULT ';')\nENGINE = Log", "SELECT 1")


def test_migrations_are_numbered_and_ordered() -> None:
    """The shipped migrations load in version order, 0001 first, each with statements."""
    migs = load_migrations()
    assert [m.version for m in migs] == sorted({m.version for m in migs})
    assert migs[0].version == 1 and migs[0].name == "initial"
    assert all(m.statements for m in migs)


def test_pending_skips_applied_versions() -> None:
    migs = [Migration(1, "a", ("x",)), Migration(2, "b", ("y",)), Migration(3, "c", ("z",))]
    assert [m.version for m in pending(migs, [1, 3])] == [2]
    assert pending(migs, [1, 2, 3]) == []


def test_insert_columns_come_from_the_structs() -> None:
    """One source of truth: each table's insert columns are its Struct's fields (plus leading ids)."""
    assert CALLS.insert_columns == CallRecord.__struct_fields__
    assert QUARANTINE.insert_columns == ("id", *Quarantined.__struct_fields__)


def test_quarantine_id_and_batch_token_are_deterministic() -> None:
    """The same content gives the same id/token; different content does not."""
    q = Quarantined(pbx_id="p", received_at=1.5, reason="invalid_utf8", detail="d", raw="x\\xff")
    q2 = Quarantined(pbx_id="p", received_at=1.5, reason="invalid_utf8", detail="d", raw="x\\xfe")
    assert quarantine_id(q) == quarantine_id(Quarantined(**{f: getattr(q, f) for f in q.__struct_fields__}))
    assert quarantine_id(q) != quarantine_id(q2)
    assert batch_token("quarantine", [q, q2]) == batch_token("quarantine", [q, q2])
    assert batch_token("quarantine", [q, q2]) != batch_token("quarantine", [q2, q])


def test_pure_modules_do_not_import_the_driver() -> None:
    """Builders, batching and schema stay pure: importing them pulls in no ClickHouse client."""
    code = (
        "import sys, store.queries, store.batching, store.schema; "
        "print(any(m.startswith(('clickhouse_connect', 'chdb')) for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- against chDB ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseStore]:
    s = ClickHouseStore.connect(f"chdb://{tmp_path_factory.mktemp('chdb-schema')}")
    s.migrate()
    yield s
    s.close()


def _columns(store: ClickHouseStore, table: str) -> list[dict[str, str]]:
    return store.query(
        "SELECT name, type, default_kind FROM system.columns "
        "WHERE database = currentDatabase() AND table = {t:String} ORDER BY position",
        {"t": table},
    )


@pytest.mark.integration
def test_migrate_is_idempotent(store: ClickHouseStore) -> None:
    """Re-running applies nothing, records each version once, and keeps the data."""
    assert store.migrate() == []
    rows = store.query("SELECT version, name FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in load_migrations()]


@pytest.mark.integration
def test_interrupted_migration_can_be_applied_again(store: ClickHouseStore) -> None:
    """A migration whose record was lost (crash between DDL and record) re-applies cleanly:
    every statement is IF NOT EXISTS."""
    store._command("TRUNCATE TABLE schema_migrations")
    assert [m.version for m in store.migrate()] == [m.version for m in load_migrations()]
    assert store.migrate() == []


@pytest.mark.integration
@pytest.mark.parametrize("table", (*TABLES, TARIFFS, TARIFF_ALERTS, *PANEL_TABLES, RECONCILE_RUNS,
                                   REDERIVED_CALLS, REDERIVED_LEGS), ids=lambda t: t.name)
def test_table_columns_match_the_struct(store: ClickHouseStore, table: Table) -> None:
    """Each table has exactly its Struct's fields (plus the documented extra columns), in order,
    with types that follow the field types: times DateTime64(3, 'UTC'), X | None Nullable,
    tuples Array(String), bool Bool, int an integer, Decimal (money) Decimal(18, 4),
    str (Literal) a String."""
    cols = _columns(store, table.name)
    assert [c["name"] for c in cols] == list(table.columns)
    materialized = {c["name"] for c in cols if c["default_kind"] == "MATERIALIZED"}
    assert materialized == set(table.materialized)
    by_name = {c["name"]: c["type"] for c in cols}
    hints = typing.get_type_hints(table.struct)
    for name in table.struct.__struct_fields__:
        ch_type, hint = by_name[name], hints[name]
        args = typing.get_args(hint)
        nullable = isinstance(hint, types.UnionType) and type(None) in args
        assert ch_type.startswith("Nullable(") == nullable, name
        base = next(a for a in args if a is not type(None)) if nullable else hint
        inner = ch_type.removeprefix("Nullable(").removesuffix(")") if nullable else ch_type
        if name in TIME_FIELDS:
            assert inner == "DateTime64(3, 'UTC')", name
        elif typing.get_origin(base) is tuple:
            assert inner == "Array(String)", name
        elif base is bool:
            assert inner == "Bool", name
        elif base is int:
            assert inner in ("Int32", "Int64", "UInt32", "UInt64"), name
        elif base is float:
            assert inner == "Float64", name
        elif base is Decimal:
            assert inner == "Decimal(18, 4)", name
        else:  # str or a Literal of str
            assert inner in ("String", "LowCardinality(String)"), name


@pytest.mark.integration
def test_tables_deduplicate_and_replace_by_version(store: ClickHouseStore) -> None:
    """The engines and settings idempotency relies on are in place."""
    rows = store.query(
        "SELECT name, engine_full FROM system.tables WHERE database = currentDatabase() "
        "AND name IN ('calls', 'call_legs', 'quarantine')"
    )
    assert len(rows) == 3
    for r in rows:
        assert r["engine_full"].startswith("ReplacingMergeTree"), r
        assert "non_replicated_deduplication_window = 1000" in r["engine_full"], r
        assert "PARTITION BY toYYYYMM(" in r["engine_full"], r
