"""Exports of call records to CSV or Parquet, in constant memory, with a manifest.

Rows stream from ClickHouse as Arrow record batches straight into the file writer; nothing holds
more than one batch. Times stay UTC instants; ``<field>_local`` columns give them in the chosen
time zone. The manifest names every file with its row count, size and SHA-256, and is signed
when a signing key is set (retention.signing; ``pbxpipe verify export`` checks it all).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyarrow as pa
import pyarrow.compute as pc
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts import metrics
from contracts.errors import RetentionError
from retention.signing import SIGNATURE_SUFFIX, key_id, sign
from store.clickhouse import ClickHouseStore
from store.objects import ObjectStore, sha256_file
from store.queries import CALL_FIELDS, TimeBound, epoch_ms

log = structlog.get_logger("retention.export")

FORMATS = ("csv", "parquet")
MANIFEST = "manifest.json"
TIME_FIELDS = ("start", "answer", "end")
Progress = Callable[[int], None]


def export_query(since: TimeBound, until: TimeBound, customer: str | None, tz: str) -> tuple[str, dict[str, Any]]:
    zone = _zone(tz)
    conds = ["start >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')",
             "start < fromUnixTimestamp64Milli({until_ms:Int64}, 'UTC')"]
    params: dict[str, Any] = {"since_ms": epoch_ms(since, zone), "until_ms": epoch_ms(until, zone)}
    if customer:
        conds.append("pbx_id = {customer:String}")
        params["customer"] = customer
    cols = ", ".join(f"`{c}`" for c in CALL_FIELDS)
    where = " AND ".join(conds)
    return f"SELECT {cols} FROM calls FINAL WHERE {where} ORDER BY start, call_id", params


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise RetentionError(f"unknown time zone {tz!r}") from None


def _prepare(batch: pa.RecordBatch, fmt: str, tz: str) -> pa.RecordBatch:
    """Plain types for the writers (no dictionaries; lists joined with ``|`` for CSV) and the
    ``*_local`` time columns."""
    names, arrays = [], []
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        if pa.types.is_timestamp(col.type) and col.type.tz is None:
            col = col.cast(pa.timestamp(col.type.unit, tz="UTC"))
        if fmt == "csv" and (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
            col = pc.binary_join(col.cast(pa.list_(pa.string())), "|")
        names.append(name)
        arrays.append(col)
        if name in TIME_FIELDS:
            local = col.cast(pa.timestamp(col.type.unit, tz=tz))
            names.append(f"{name}_local")
            arrays.append(pc.strftime(local, format="%Y-%m-%dT%H:%M:%S%z"))
    return pa.RecordBatch.from_arrays(arrays, names=names)


class _Writer:
    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt = path, fmt
        self._w: Any = None

    def write(self, batch: pa.RecordBatch) -> None:
        if self._w is None:
            if self.fmt == "parquet":
                import pyarrow.parquet as pq

                self._w = pq.ParquetWriter(str(self.path), batch.schema, compression="zstd")
            else:
                import pyarrow.csv as pcsv

                self._w = pcsv.CSVWriter(str(self.path), batch.schema)
        self._w.write_batch(batch)

    def close(self, empty_schema: pa.Schema | None) -> None:
        if self._w is None:  # no rows: still a valid, empty file with a header
            if self.fmt == "parquet":
                import pyarrow.parquet as pq

                pq.write_table(pa.table({}) if empty_schema is None else empty_schema.empty_table(),
                               str(self.path))
            else:
                self.path.write_text("")
            return
        self._w.close()


def export_calls(store: ClickHouseStore, *, since: TimeBound, until: TimeBound,
                 customer: str | None, fmt: str, dest: str, tz: str = "UTC",
                 objects: ObjectStore | None = None, progress: Progress | None = None,
                 name: str = "calls", signer: Ed25519PrivateKey | None = None) -> dict[str, Any]:
    """Write ``<name>.<fmt>`` and ``manifest.json`` (every file of the export with its rows,
    size and SHA-256) to the directory ``dest`` or, with ``objects``, under the key prefix
    ``dest``; with ``signer``, ``manifest.json.sig`` too (retention.signing). Returns the
    manifest."""
    if fmt not in FORMATS:
        raise RetentionError(f"format must be one of {FORMATS}, got {fmt!r}")
    sql, params = export_query(since, until, customer, tz)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="pbxpipe-export-") as tmp:
        out_dir = Path(tmp) if objects is not None else Path(dest)
        out_dir.mkdir(parents=True, exist_ok=True)
        fname = f"{name}.{fmt}"
        path = out_dir / (fname + ".part")
        writer = _Writer(path, fmt)
        rows = 0
        schema = None
        with store.stream_arrow(sql, params) as stream:
            for batch in stream:
                if batch.num_rows == 0:
                    continue
                prepared = _prepare(batch, fmt, tz)
                schema = prepared.schema
                writer.write(prepared)
                rows += batch.num_rows
                if progress:
                    progress(batch.num_rows)
        writer.close(schema)
        final = out_dir / fname
        path.replace(final)  # a half-written export never carries the final name
        sha, size = sha256_file(final)
        manifest = {
            "created_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
            "query": {"since_ms": params["since_ms"], "until_ms": params["until_ms"],
                      "customer": customer or None},
            "tz": tz, "format": fmt, "rows": rows,
            "files": [{"name": fname, "rows": rows, "bytes": size, "sha256": sha}],
            "signed_by": key_id(signer.public_key()) if signer is not None else None,
        }
        mpath = out_dir / MANIFEST
        mpath.write_bytes(json.dumps(manifest, indent=1).encode())
        written = [(final, "text/csv" if fmt == "csv" else "application/vnd.apache.parquet"),
                   (mpath, "application/json")]
        if signer is not None:
            spath = out_dir / (MANIFEST + SIGNATURE_SUFFIX)
            spath.write_bytes(sign(signer, mpath.read_bytes()))
            written.append((spath, "application/json"))
        if objects is not None:
            prefix = dest.strip("/") + "/" if dest.strip("/") else ""
            for f, ctype in written:
                with open(f, "rb") as fh:
                    objects.put(prefix + f.name, fh, f.stat().st_size, content_type=ctype,
                                metadata={"sha256": sha256_file(f)[0]})
    metrics.RETENTION_EXPORTED_ROWS.labels(fmt).inc(rows)
    metrics.RETENTION_JOB_SUCCESS.labels("export").set(time.time())
    log.info("export_written", rows=rows, format=fmt, dest=dest, bytes=size)
    return manifest


def count_rows(store: ClickHouseStore, since: TimeBound, until: TimeBound, customer: str | None,
               tz: str) -> int:
    sql, params = export_query(since, until, customer, tz)
    inner = sql.split(" ORDER BY ")[0]
    return int(store.query(f"SELECT count() AS n FROM ({inner})", params)[0]["n"])


def export_due(store: ClickHouseStore, *, dest: str, fmt: str, within_days: int,
               default: Any, now: float, objects: ObjectStore | None = None,
               tz: str = "UTC", signer: Ed25519PrivateKey | None = None) -> list[dict[str, Any]]:
    """Export every (customer, month) whose calls start expiring within ``within_days`` and that
    was not exported before, to ``<dest>/<customer>/<YYYY-MM>/``; each success is recorded in the
    ``exports`` table, so running it again exports nothing twice."""
    from retention.jobs import load_policies
    from retention.policies import month_bounds, months_due_for_export

    present = [(r["pbx_id"], r["month"]) for r in store.query(
        "SELECT DISTINCT pbx_id, formatDateTime(start, '%Y-%m', 'UTC') AS month FROM calls")]
    exported = {(r["customer"], r["month"]) for r in store.query(
        "SELECT customer, month FROM exports FINAL")}
    due = months_due_for_export(present, exported, load_policies(store), default,
                                datetime.fromtimestamp(now, UTC), within_days)
    done = []
    for customer, month in due:
        since, until = month_bounds(month)
        target = f"{dest.rstrip('/')}/{customer}/{month}"
        manifest = export_calls(store, since=since, until=until, customer=customer, fmt=fmt,
                                dest=target, tz=tz, objects=objects, signer=signer)
        digest = json.dumps(manifest, sort_keys=True).encode()
        import hashlib

        store.command(
            "INSERT INTO exports (customer, month, destination, rows, manifest_sha256, exported_at) "
            "SELECT {c:String}, {m:String}, {d:String}, {n:UInt64}, {s:String}, "
            "fromUnixTimestamp64Milli({t:Int64}, 'UTC')",
            {"c": customer, "m": month, "d": target, "n": manifest["rows"],
             "s": hashlib.sha256(digest).hexdigest(), "t": round(now * 1000)})
        done.append({"customer": customer, "month": month, "destination": target,
                     "rows": manifest["rows"]})
    metrics.RETENTION_JOB_SUCCESS.labels("export_due").set(time.time())
    log.info("exports_due_written", months=len(done))
    return done
