"""A tenant's calls as one CSV or Parquet file, streamed as ClickHouse reads them.

CSV is ClickHouse's own CSV output passed through as it arrives (memory stays flat whatever the
range: nothing here holds more than one block). Parquet is written here from Arrow tables read
a window at a time (``WINDOW`` calls, keyset on the sorting key), each window a row group.
Calls come oldest first.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from api.runtime import Request
from store.tenancy import ScopedQuery, ScopedReader, select

FORMATS = ("csv", "parquet")
WINDOW = 65_536
READ_BYTES = 1 << 16

_COLUMNS = (
    ("call_id", "call_id"),
    ("start_utc", "toString(start)"),
    ("start_local", "toString(toTimeZone(start, {tz:String}))"),
    ("direction", "direction"), ("caller", "caller"), ("caller_name", "caller_name"),
    ("called", "called"), ("status", "status"), ("answered", "answered"),
    ("first_answered_by", "ifNull(first_answered_by, '')"),
    ("last_answered_by", "ifNull(last_answered_by, '')"),
    ("extensions_rang", "arrayStringConcat(extensions_rang, '|')"), ("queue", "queue"),
    ("duration_s", "duration_s"), ("wait_s", "wait_s"), ("talk_s", "talk_s"),
    ("recorded", "notEmpty(recordings)"), ("transferred", "transferred"),
    ("forwarded", "forwarded"), ("hangup_cause", "hangup_cause"), ("hangup_by", "hangup_by"),
    ("incomplete", "incomplete"), ("cost", "toString(cost)"), ("currency", "currency"),
    ("billed_s", "billed_s"), ("destination", "destination"),
    ("destination_category", "destination_category"),
)
_BUY = (("cost_buy", "toString(cost_buy)"), ("margin", "toString(margin)"))


def columns(req: Request) -> tuple[tuple[str, str], ...]:
    """(name, SQL) of the exported columns; buy prices for the roles that see them."""
    return _COLUMNS + _BUY if req.principal.may("costs_buy") else _COLUMNS


def export_query(req: Request, since: datetime | None, until: datetime | None, tz: str,
                 after: tuple[int, str] | None = None, limit: int | None = None) -> ScopedQuery:
    where: list[str] = []
    params: dict[str, Any] = {"tz": tz}
    if since is not None:
        where.append("start >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')")
        params["since_ms"] = round(since.timestamp() * 1000)
    if until is not None:
        where.append("start < fromUnixTimestamp64Milli({until_ms:Int64}, 'UTC')")
        params["until_ms"] = round(until.timestamp() * 1000)
    cols = ", ".join(f"{sql} AS `{name}`" for name, sql in columns(req))
    if after is not None:
        where.append("start >= fromUnixTimestamp64Milli({after_ms:Int64}, 'UTC')")
        where.append("(start, call_id) > (fromUnixTimestamp64Milli({after_ms:Int64}, 'UTC'), {after_id:String})")
        params["after_ms"], params["after_id"] = after
        cols += ", toUnixTimestamp64Milli(start) AS `_start_ms`"
    elif limit is not None:
        cols += ", toUnixTimestamp64Milli(start) AS `_start_ms`"
    return select(req.scope, "calls", cols, where=where, parameters=params,
                  order_by="toDate(start), start, call_id",
                  limit=str(int(limit)) if limit is not None else "")


def csv_stream(reader: ScopedReader, req: Request, since: datetime | None,
               until: datetime | None, tz: str) -> Iterator[bytes]:
    """The header line, then ClickHouse's CSV of the calls as it streams."""
    yield (",".join(name for name, _ in columns(req)) + "\r\n").encode()
    stream = reader.raw_stream(export_query(req, since, until, tz), "CSV")
    try:
        while chunk := stream.read(READ_BYTES):
            yield chunk
    finally:
        stream.close()


def parquet_stream(reader: ScopedReader, req: Request, since: datetime | None,
                   until: datetime | None, tz: str) -> Iterator[bytes]:
    """A Parquet file written a window of calls at a time, each window one row group."""
    sink = _Pipe()
    writer: pq.ParquetWriter | None = None
    after: tuple[int, str] | None = None
    while True:
        table: pa.Table = reader.arrow(export_query(req, since, until, tz, after=after, limit=WINDOW))
        if table.num_rows:
            last = table.slice(table.num_rows - 1)
            after = (int(last.column("_start_ms")[0].as_py()), str(last.column("call_id")[0].as_py()))
            table = _plain(table.drop_columns(["_start_ms"]))
            if writer is None:
                writer = pq.ParquetWriter(sink, table.schema, compression="zstd")
            writer.write_table(table)
            yield sink.drain()
        if table.num_rows < WINDOW:
            break
    if writer is None:  # no calls: a valid file with the columns and no rows
        writer = pq.ParquetWriter(sink, _empty_schema(req), compression="zstd")
    writer.close()
    yield sink.drain()


class _Pipe(io.RawIOBase):
    """A write-only file that hands its bytes on as they are written: the Parquet writer counts
    offsets with tell(), which goes on counting after each drain."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        b = bytes(data)
        self._parts.append(b)
        self._written += len(b)
        return len(b)

    def tell(self) -> int:
        return self._written

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def _plain(table: pa.Table) -> pa.Table:
    """Dictionary (LowCardinality) columns as plain ones, so every row group has one schema."""
    cols: list[Any] = []
    for col in table.columns:
        cols.append(col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col)
    return pa.table(cols, names=table.column_names)


def _empty_schema(req: Request) -> pa.Schema:
    return pa.schema([(name, pa.string()) for name, _ in columns(req)])
