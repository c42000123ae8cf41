"""The ClickHouse sink: idempotent columnar inserts of call records, legs and quarantined input.

Always through clickhouse-connect: ``chdb:///<dir>`` runs the embedded engine in this process,
``http://user:pass@host:8123/db`` talks to a server; the same SQL runs on both.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import clickhouse_connect
import msgspec
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
import structlog
import tenacity
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import (
    DatabaseError,
    OperationalError,
    ProgrammingError,
)

from contracts.config import redact_dsn
from contracts.errors import StoreError, StoreUnavailable
from contracts.metrics import (
    STORE_BATCH_ROWS,
    STORE_INSERT_FAILURES,
    STORE_INSERT_SECONDS,
    STORE_ROWS,
)
from contracts.records import CallLeg, CallRecord, Quarantined
from store.schema import (
    CALL_LEGS,
    CALLS,
    MIGRATIONS_TABLE_DDL,
    QUARANTINE,
    Migration,
    Table,
    load_migrations,
    is_access_statement,
    pending,
    quarantine_id,
)

log = structlog.get_logger("store.clickhouse")

R = TypeVar("R")

# ClickHouse error codes worth retrying: overload, timeouts, network, full disk, read-only replicas, Keeper.
# Anything else (unknown table, type mismatch, syntax) fails the same way every time.
RETRYABLE_CODES = frozenset(
    {
        3,  # UNEXPECTED_END_OF_FILE
        159,  # TIMEOUT_EXCEEDED
        164,  # READONLY
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY
        243,  # NOT_ENOUGH_SPACE: push back until the disk is freed
        252,  # TOO_MANY_PARTS
        285,  # TOO_FEW_LIVE_REPLICAS
        319,  # UNKNOWN_STATUS_OF_INSERT
        425,  # SYSTEM_ERROR
        999,  # KEEPER_EXCEPTION
    }
)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with capped, fully jittered exponential backoff.

    After failed attempt n (1-based) it waits a random time in [0, min(max_s, initial_s * 2**(n-1))];
    after ``attempts`` failures it gives up (StoreUnavailable), leaving the batch to the caller.
    """

    attempts: int = 5
    initial_s: float = 0.5
    max_s: float = 10.0
    connect_timeout_s: int = 5  # HTTP only; clickhouse-connect takes whole seconds (>= 1)
    send_receive_timeout_s: int = 60


def is_retryable(exc: BaseException) -> bool:
    """Whether trying the same request again may succeed (the server or the network is down)."""
    if isinstance(exc, (OperationalError, OSError)):
        return True
    if isinstance(exc, DatabaseError):
        return getattr(exc, "code", None) in RETRYABLE_CODES
    return False


def describe(exc: BaseException) -> str:
    """One line saying why: the innermost OS error ("connection refused") or the first message line."""
    inner: BaseException | None = exc
    while inner is not None:
        if isinstance(inner, TimeoutError):
            return "timed out"
        if isinstance(inner, OSError) and inner.strerror:
            return inner.strerror.lower()
        inner = inner.__cause__ or inner.__context__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def chdb_path(dsn: str) -> str:
    """The directory of a ``chdb://`` DSN.

    ``chdb:///abs/dir`` is absolute; ``chdb:///./dir`` and ``chdb:///../dir`` are relative to the
    working directory (the default setting ``chdb:///./data/clickhouse`` means ``./data/clickhouse``,
    where a plain URL parser would read ``/data/clickhouse``).
    """
    rest = dsn[len("chdb://") :].split("?", 1)[0]
    if rest.startswith(("/./", "/../")):
        rest = rest[1:]
    if not rest or rest in ("/", "memory", ":memory:"):
        raise StoreError(f"chDB needs a data directory: chdb:///<dir>, got {dsn!r}")
    return rest


class ClickHouseStore:
    """Writes batches idempotently and runs parameterised queries, retrying while ClickHouse is down.

    Every write takes an ``insert_deduplication_token``: re-sending a batch with the same token
    (after a timeout whose outcome is unknown, or a replay) is a no-op, and the tables'
    ReplacingMergeTree collapses the same records sent under another token when read with FINAL.
    """

    def __init__(self, client: Client, *, dsn: str, retry: RetryPolicy = RetryPolicy()) -> None:
        self._client = client
        self.dsn = redact_dsn(dsn)
        self.embedded = dsn.startswith("chdb:")  # chDB in this process, not a server
        self.retry = retry
        self._types: dict[str, list[str]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def connect(cls, dsn: str, *, retry: RetryPolicy = RetryPolicy()) -> ClickHouseStore:
        """Open ``chdb:///<dir>`` (created if missing) or ``http(s)://user:pass@host:port/db``.

        chDB hosts one engine per process: clients on the same directory share it (each gets its
        own handle), but opening another directory while one is open fails with a StoreError.
        An unreachable server raises StoreUnavailable after ``retry.attempts`` tries.
        """
        # clickhouse-connect logs a bare "Unexpected Http Driver Exception" WARNING before raising
        # the error we report ourselves (with its cause); unconfigured, Python prints it to stderr.
        driver_log = logging.getLogger("clickhouse_connect")
        if driver_log.level == logging.NOTSET:
            driver_log.setLevel(logging.ERROR)
        redacted = redact_dsn(dsn)
        if dsn.startswith("chdb:"):
            path = chdb_path(dsn)
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create chDB directory {path}: {e.strerror}") from None

            def open_client() -> Client:
                try:
                    return clickhouse_connect.get_client(interface="chdb", path=path, tz_mode="aware")
                except ProgrammingError as e:
                    if "already initialized" not in str(e):
                        raise
                    raise StoreError(
                        f"cannot open chDB at {path}: this process already runs chDB on another "
                        "directory (one per process; close every store on it first)"
                    ) from None

        elif dsn.startswith(("http://", "https://")):

            def open_client() -> Client:
                return clickhouse_connect.get_client(
                    dsn=dsn,
                    connect_timeout=retry.connect_timeout_s,
                    send_receive_timeout=retry.send_receive_timeout_s,
                    autogenerate_session_id=False,  # no server session: safe from several threads
                    query_retries=0,  # retries are ours, with backoff
                    client_name="pbxpipe",
                    tz_mode="aware",
                )

        else:
            raise StoreError(f"unsupported ClickHouse DSN {redacted!r}: use chdb:///<dir> or http://…")
        client = _retrying(retry, open_client, what=f"connect to ClickHouse at {redacted}", table="")
        log.debug("store_connected", dsn=redacted)
        return cls(client, dsn=dsn, retry=retry)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ----------------------------------------------------------------------------

    def migrate(self) -> list[Migration]:
        """Apply the migrations not recorded in ``schema_migrations`` yet; returns those applied."""
        self._command(MIGRATIONS_TABLE_DDL)
        applied = [int(r["version"]) for r in self.query("SELECT DISTINCT version FROM schema_migrations")]
        done = pending(load_migrations(), applied)
        for mig in done:
            for statement in mig.statements:
                if self.embedded and is_access_statement(statement):
                    continue  # chDB has no users or row policies (store/tenancy.py is the wall)
                self._command(statement)
            self._command(
                "INSERT INTO schema_migrations (version, name, applied_at) "
                "SELECT {version:UInt32}, {name:String}, now64(3, 'UTC')",
                {"version": mig.version, "name": mig.name},
            )
            log.info("migration_applied", version=mig.version, name=mig.name)
        self._types.clear()
        return done

    # -- writes ----------------------------------------------------------------------------

    def write_calls(self, records: Sequence[CallRecord], token: str) -> int:
        """Insert call records; returns the rows sent (a deduplicated re-send still counts them)."""
        return self._write(CALLS, [msgspec.structs.astuple(r) for r in records], token)

    def write_legs(self, legs: Sequence[CallLeg], token: str) -> int:
        return self._write(CALL_LEGS, [msgspec.structs.astuple(leg) for leg in legs], token)

    def write_quarantine(self, items: Sequence[Quarantined], token: str) -> int:
        return self._write(
            QUARANTINE, [(quarantine_id(q), *msgspec.structs.astuple(q)) for q in items], token
        )

    def _write(self, table: Table, rows: list[tuple[Any, ...]], token: str) -> int:
        if not rows:
            return 0
        if not token:
            raise ValueError("an insert_deduplication_token is required (store.schema.batch_token)")
        names = table.insert_columns
        types = self._column_types(table)
        columns: list[Sequence[Any]] = list(zip(*rows, strict=True))
        for i, type_name in enumerate(types):
            if "DateTime64(3" in type_name:  # epoch seconds -> integer milliseconds, exact
                columns[i] = [None if t is None else round(t * 1000) for t in columns[i]]

        def insert(settings: dict[str, Any]) -> None:
            self._client.insert(
                table.name,
                columns,
                column_names=names,
                column_type_names=types,
                column_oriented=True,
                settings=settings,
            )

        return self._insert(table, insert, len(rows), token)

    def write_arrow(self, table: Table, data: pa.Table, token: str) -> int:
        """Insert an Arrow table of the table's insert columns (kafkaio.records_topic's batches:
        epoch-second floats where ClickHouse has DateTime64(3)); returns the rows sent.

        The fast path: the columns go to ClickHouse as they are, no Python object per row.
        """
        if not data.num_rows:
            return 0
        if not token:
            raise ValueError("an insert_deduplication_token is required (store.schema.batch_token)")
        if tuple(data.column_names) != table.insert_columns:
            raise StoreError(f"{table.name}: columns {data.column_names} are not "
                             f"{list(table.insert_columns)}")
        for i, type_name in enumerate(self._column_types(table)):
            if "DateTime64(3" in type_name and pa.types.is_floating(data.schema.field(i).type):
                # epoch seconds -> integer milliseconds, rounded half to even like round()
                ms = pc.round(pc.multiply(data.column(i), 1000.0)).cast(pa.int64())
                data = data.set_column(i, data.field(i).name, ms.cast(pa.timestamp("ms", "UTC")))

        def insert(settings: dict[str, Any]) -> None:
            self._client.insert_arrow(table.name, data, settings=settings)

        return self._insert(table, insert, data.num_rows, token)

    def _insert(self, table: Table, send: Callable[[dict[str, Any]], None], rows: int,
                token: str) -> int:
        # optimize_on_insert=0: ReplacingMergeTree would collapse duplicates inside each inserted
        # block, a sort-and-merge pass that costs about a third of the insert (bench.kafka_stages
        # prints both ceilings); the duplicates a replay brings collapse at merges and under FINAL
        # all the same.
        settings = {"insert_deduplicate": 1, "insert_deduplication_token": token,
                    "optimize_on_insert": 0}

        def insert() -> None:
            started = time.perf_counter()
            send(settings)
            STORE_INSERT_SECONDS.labels(table.name).observe(time.perf_counter() - started)

        _retrying(self.retry, insert, what=f"insert into {table.name} at {self.dsn}", table=table.name)
        STORE_ROWS.labels(table.name).inc(rows)
        STORE_BATCH_ROWS.labels(table.name).observe(rows)
        log.debug("batch_written", table=table.name, rows=rows, token=token)
        return rows

    def write_structs(self, table: Table, items: Sequence[msgspec.Struct], token: str) -> int:
        """Insert Structs into any table shaped like them (retention's tables)."""
        return self._write(table, [msgspec.structs.astuple(i) for i in items], token)

    def write_led(self, table: Table, lead: tuple[Any, ...], items: Sequence[msgspec.Struct],
                  token: str) -> int:
        """Insert Structs with the same values of the table's leading columns in front of each
        (a shadow table's run id and time)."""
        if len(lead) != len(table.leading):
            raise ValueError(f"{table.name} leads with {table.leading}, got {len(lead)} values")
        return self._write(table, [(*lead, *msgspec.structs.astuple(i)) for i in items], token)

    def _column_types(self, table: Table) -> list[str]:
        """ClickHouse types of the insert columns, read once from the table (the migrations are
        the source of truth), so inserts need no DESCRIBE round trip."""
        if table.name not in self._types:
            rows = self.query(
                "SELECT name, type FROM system.columns "
                "WHERE database = currentDatabase() AND table = {table:String}",
                {"table": table.name},
            )
            found = {r["name"]: r["type"] for r in rows}
            missing = [c for c in table.insert_columns if c not in found]
            if missing:
                raise StoreError(
                    f"table {table.name} lacks columns {missing}: run the migrations first"
                )
            self._types[table.name] = [found[c] for c in table.insert_columns]
        return self._types[table.name]

    # -- reads -----------------------------------------------------------------------------

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None,
              settings: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a SELECT with server-side parameters (``{name:Type}`` in ``sql``); one dict per row.

        DateTime64 values come back as timezone-aware UTC datetimes.
        """

        def run() -> list[dict[str, Any]]:
            result = self._client.query(sql, parameters=dict(parameters or {}),
                                        settings=dict(settings or {}))
            return list(result.named_results())

        return _retrying(self.retry, run, what=f"query at {self.dsn}", table="")

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None,
                settings: Mapping[str, Any] | None = None) -> None:
        """Run DDL or a mutation (retention, holds, erasure), retried like every call."""

        def run() -> None:
            self._client.command(sql, parameters=dict(parameters or {}),
                                 settings=dict(settings or {}))

        _retrying(self.retry, run, what=f"command at {self.dsn}", table="")

    def stream_arrow(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Any:
        """A context manager yielding pyarrow RecordBatches as the server sends them (exports:
        constant memory). Not retried: a stream cannot resume half-way."""
        try:
            return self._client.query_arrow_stream(sql, parameters=dict(parameters or {}))
        except Exception as e:
            raise StoreError(f"query at {self.dsn} failed: {describe(e)}") from e

    def raw_stream(self, sql: str, parameters: Mapping[str, Any] | None = None,
                   settings: Mapping[str, Any] | None = None, fmt: str = "CSV") -> Any:
        """The result in ClickHouse's own ``fmt`` as a file-like byte stream, read as the server
        (or chDB, for block-wise formats such as CSV) produces it. Not retried."""
        try:
            return self._client.raw_stream(sql, parameters=dict(parameters or {}),
                                           settings=dict(settings or {}) or None, fmt=fmt)
        except Exception as e:
            raise StoreError(f"query at {self.dsn} failed: {describe(e)}") from e

    def query_arrow(self, sql: str, parameters: Mapping[str, Any] | None = None,
                    settings: Mapping[str, Any] | None = None) -> pa.Table:
        """A SELECT's result as one Arrow table (retried like every query)."""

        def run() -> pa.Table:
            return self._client.query_arrow(sql, parameters=dict(parameters or {}),
                                            settings=dict(settings or {}))

        return _retrying(self.retry, run, what=f"query at {self.dsn}", table="")

    def _command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        def run() -> None:
            self._client.command(sql, parameters=dict(parameters or {}))

        _retrying(self.retry, run, what=f"command at {self.dsn}", table="")


connect = ClickHouseStore.connect


def _retrying(policy: RetryPolicy, fn: Callable[[], R], *, what: str, table: str) -> R:
    """Call ``fn``; retry what may succeed later, then raise StoreUnavailable; StoreError otherwise."""

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "store_call_retried",
            what=what,
            attempt=state.attempt_number,
            wait_s=round(state.upcoming_sleep, 3),
            error=describe(exc) if exc else "",
        )

    attempts = 0

    def attempt() -> R:
        nonlocal attempts
        attempts += 1
        try:
            return fn()
        except Exception:
            if table:
                STORE_INSERT_FAILURES.labels(table).inc()
            raise

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(policy.attempts, 1)),
        wait=tenacity.wait_random_exponential(multiplier=policy.initial_s, max=policy.max_s),
        retry=tenacity.retry_if_exception(is_retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    started = time.monotonic()
    try:
        return retrying(attempt)
    except StoreError:
        raise
    except Exception as e:
        if not is_retryable(e):
            raise StoreError(f"{what} failed: {describe(e)}") from e
        elapsed = time.monotonic() - started
        raise StoreUnavailable(
            f"ClickHouse unavailable: {what} failed {attempts} times in {elapsed:.1f}s: {describe(e)}"
        ) from None
