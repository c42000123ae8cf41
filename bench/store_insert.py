"""Insert throughput of the ClickHouse sink: ``python -m bench.store_insert [--rows N] [--repeat K] [DSN]``.

Times ``ClickHouseStore.write_calls`` (column-oriented Native insert, the one the store uses)
against a pyarrow insert of the same records, from CallRecords to acknowledged insert, and prints
rows/s (median of the repeats). DSN defaults to a fresh chDB directory.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import msgspec
import pyarrow as pa  # type: ignore[import-untyped]

from bench.harness import chdb_store, quiet_logs, stopwatch
from contracts.records import CallRecord
from store.clickhouse import ClickHouseStore
from store.schema import CALLS


def sample_calls(n: int, start: float = 1_795_539_179.81) -> list[CallRecord]:
    """``n`` varied, realistic call records (inbound, outbound, internal; answered and not)."""
    out = []
    for i in range(n):
        kind = i % 3
        answered = i % 4 != 0
        t0 = round(start + i * 7.3, 3)
        out.append(
            CallRecord(
                call_id=f"pbx1:{t0}.{i}", pbx_id=f"pbx{i % 5}", linkedid=f"{t0}.{i}",
                direction=("inbound", "outbound", "internal")[kind],
                caller="+48601234567" if kind == 0 else str(101 + i % 20),
                caller_name="Łukasz Żółć" if i % 2 else "",
                called=("+48221234501", f"0{600000000 + i}", str(102 + i % 20))[kind],
                answered=answered, first_answered_by="101" if answered else None,
                last_answered_by="102" if answered else None,
                status="answered" if answered else ("missed" if kind == 0 else "no_answer"),
                start=t0, answer=round(t0 + 4.008, 3) if answered else None,
                end=round(t0 + 19.011, 3), duration_s=19.011,
                wait_s=4.008 if answered else None, talk_s=15.003 if answered else 0.0,
                hangup_cause=16, hangup_cause_text="Normal Clearing", hangup_by="caller",
                extensions_rang=("101", "102", "103")[: 1 + i % 3], queue="support" if i % 7 == 0 else "",
                transferred=False, forwarded=False,
                recordings=(f"rec/{i}.wav",) if i % 5 == 0 else (),
                disposition="ANSWERED" if answered else "NO ANSWER", incomplete=False, version=7,
            )
        )
    return out


def arrow_table(records: Sequence[CallRecord]) -> pa.Table:
    """The same rows as a pyarrow Table (the alternative measured against)."""
    cols = list(zip(*(msgspec.structs.astuple(r) for r in records), strict=True))
    arrays = {}
    for name, col in zip(CALLS.insert_columns, cols, strict=True):
        if name in ("start", "answer", "end"):
            arrays[name] = pa.array(
                [None if t is None else round(t * 1000) for t in col], type=pa.timestamp("ms", tz="UTC")
            )
        elif name in ("extensions_rang", "recordings"):
            arrays[name] = pa.array([list(x) for x in col], type=pa.list_(pa.string()))
        else:
            arrays[name] = pa.array(col)
    return pa.table(arrays)


def measure(store: ClickHouseStore, records: list[CallRecord], repeat: int) -> dict[str, float]:
    client = store._client  # the bench compares insert paths below the store's API

    def native(token: str) -> None:
        store.write_calls(records, token)

    def arrow(token: str) -> None:
        client.insert_arrow("calls", arrow_table(records), settings={"insert_deduplication_token": token})

    paths: list[tuple[str, Callable[[str], None]]] = [("native column-oriented", native), ("pyarrow", arrow)]
    times: dict[str, list[float]] = {name: [] for name, _ in paths}
    for name, fn in paths:
        fn(f"warmup-{name}-{time.time()}")
    for k in range(repeat):  # interleaved, so machine noise hits both paths alike
        for name, fn in paths:
            client.command("TRUNCATE TABLE calls")
            with stopwatch() as t:
                fn(f"{name}-{k}-{time.time()}")
            times[name].append(t.seconds)
    return {name: len(records) / statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("dsn", nargs="?", default="")
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    quiet_logs()
    with chdb_store(args.dsn) as store:
        for name, rate in measure(store, sample_calls(args.rows), args.repeat).items():
            print(f"{name:>24}: {rate:>10,.0f} rows/s  ({args.rows} rows, median of {args.repeat})")


if __name__ == "__main__":
    main()
