"""The ClickHouse schema: which Struct each table stores, and the versioned migrations that create it.

The migrations (``store/migrations/NNNN_name.sql``) are the one source of truth for column types; the
insert column lists come from the contracts' msgspec Structs, and a test checks that the two agree.
Pure: no client here, ``ClickHouseStore.migrate`` runs what this module loads.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources

import msgspec

from contracts.access import AccessGroup, ApiKey, RecordingAccess, Tenant
from contracts.reconcile import ReconcileRun
from contracts.records import CallLeg, CallRecord, Quarantined
from contracts.tariffs import TariffAlert, TariffRow


@dataclass(frozen=True)
class Table:
    """A table that stores one Struct per row.

    ``leading`` columns are computed by the store and inserted before the Struct's fields;
    ``materialized`` columns are computed by ClickHouse from the others (never inserted, not in
    ``SELECT *``).
    """

    name: str
    struct: type[msgspec.Struct]
    leading: tuple[str, ...] = ()
    materialized: tuple[str, ...] = ()

    @property
    def insert_columns(self) -> tuple[str, ...]:
        return self.leading + self.struct.__struct_fields__

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column, in table order."""
        return self.insert_columns + self.materialized


CALLS = Table("calls", CallRecord, materialized=("parties", "numbers"))
"""``parties``: every extension or number in the call (caller, called, first/last_answered_by,
extensions_rang), one bloom-filtered array for the call-history ``extension`` filter;
``numbers``: the keys of caller and called (store.queries.number_key), for the ``number`` filter."""

CALL_LEGS = Table("call_legs", CallLeg)

QUARANTINE = Table("quarantine", Quarantined, leading=("id",))
"""``id``: :func:`quarantine_id`, so the same bad frame replayed collapses to one row."""

TABLES = (CALLS, CALL_LEGS, QUARANTINE)

# tariffs (migration 0002)
TARIFFS = Table("tariffs", TariffRow)
TARIFF_ALERTS = Table("tariff_alerts", TariffAlert)

# the panel API (migration 0004)
API_KEYS = Table("api_keys", ApiKey)
API_GROUPS = Table("api_groups", AccessGroup)
TENANTS = Table("tenants", Tenant)
RECORDING_ACCESS = Table("recording_access", RecordingAccess)
PANEL_TABLES = (API_KEYS, API_GROUPS, TENANTS, RECORDING_ACCESS)

# reconcile (migration 0007)
RECONCILE_RUNS = Table("reconcile_runs", ReconcileRun)
REDERIVED_CALLS = Table("rederived_calls", CallRecord, leading=("run_id", "run_at"))
"""The shadow of ``calls`` that ``pbxpipe rederive`` fills: one run's records, by ``run_id``."""
REDERIVED_LEGS = Table("rederived_legs", CallLeg, leading=("run_id", "run_at"))

MIGRATIONS_TABLE_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version UInt32,
    name String,
    applied_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""
"""Created before anything else, so the applied versions can be read; two concurrent migrators
record a version twice at worst, and the engine collapses that."""


def quarantine_id(item: Quarantined) -> str:
    """Deterministic id of a quarantined item: a hash of all its fields."""
    return hashlib.blake2b(msgspec.msgpack.encode(item), digest_size=16).hexdigest()


def batch_token(table: str, items: Iterable[CallRecord | CallLeg | Quarantined]) -> str:
    """An ``insert_deduplication_token`` derived from a batch's content: ids and versions.

    For callers without offsets to name a batch by (imports from a file, tests). The same records in
    the same order give the same token, so re-sending the batch is a no-op.
    """
    h = hashlib.blake2b(table.encode(), digest_size=16)
    for item in items:
        if isinstance(item, CallRecord):
            key = f"{item.call_id}\x00{item.version}"
        elif isinstance(item, CallLeg):
            key = f"{item.leg_id}\x00{item.version}"
        else:
            key = quarantine_id(item)
        h.update(key.encode())
        h.update(b"\x01")
    return f"{table}:{h.hexdigest()}"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


_FILE_RE = re.compile(r"^(\d{4})_(\w+)\.sql$")
_STATEMENT_END_RE = re.compile(r";[ \t]*$", re.MULTILINE)


def split_statements(sql: str) -> tuple[str, ...]:
    """Statements of a migration file: ``--`` comment lines dropped, split on a ``;`` ending a line.

    Deliberately simple (no SQL parser): a migration must not end a line with ``;`` inside a string.
    """
    text = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return tuple(s.strip() for s in _STATEMENT_END_RE.split(text) if s.strip())


_ACCESS_STATEMENT = re.compile(
    r"^\s*(?:(?:CREATE|ALTER|DROP)\s+(?:ROLE|ROW\s+POLICY|POLICY|USER|SETTINGS\s+PROFILE|QUOTA)\b"
    r"|GRANT\b|REVOKE\b)", re.IGNORECASE)


def is_access_statement(statement: str) -> bool:
    """Whether a migration statement manages users, roles or row policies: a ClickHouse server
    applies it; chDB, which has no users, passes over it."""
    return bool(_ACCESS_STATEMENT.match(statement))


def load_migrations() -> list[Migration]:
    """Every ``migrations/NNNN_name.sql`` shipped with the package, in version order."""
    found: list[Migration] = []
    for entry in resources.files("store").joinpath("migrations").iterdir():
        m = _FILE_RE.match(entry.name)
        if m is None:
            continue
        found.append(Migration(int(m[1]), m[2], split_statements(entry.read_text(encoding="utf-8"))))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in store/migrations: {versions}")
    return found


def pending(migrations: Sequence[Migration], applied: Iterable[int]) -> list[Migration]:
    """The migrations not applied yet, in order."""
    done = set(applied)
    return [m for m in migrations if m.version not in done]
