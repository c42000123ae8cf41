"""The stages through Kafka, measured (``python -m bench --kafka``).

Each stage runs as its own process (``pbxpipe ingest --capture``, ``pbxpipe enrich``,
``pbxpipe store``) over the same capture, one after the other, so each one's rate, CPU and
peak RSS are its own. Ceilings on the same machine: plain framing of the same bytes, and a plain
Arrow insert of the same rows into the same ClickHouse. Then the live path
(:mod:`bench.end_to_end`): the load player placing ``--rate`` calls/s over AMI -> ingest ->
Kafka -> enrich -> Kafka -> store, each stage its own process, and the latency from each call's
last Hangup to its row being inserted (queryable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.end_to_end import run_end_to_end
from bench.harness import PBXPIPE, Watched, broker, frame, quiet_logs, ratio, spawn, stopwatch


def _run_stage(env: dict[str, str], log: Path, *args: str) -> tuple[dict[str, Any], float, float]:
    """Run one stage to completion: its summary log line, CPU seconds, peak RSS (bytes)."""
    proc = spawn([*PBXPIPE, *args], env, log)
    watched = Watched(args[0], proc.pid)
    while proc.poll() is None:
        watched.sample()
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"stage {args[0]} failed: see {log}")
    summary: dict[str, Any] = {}
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") in ("capture_ingested", "enrich_stopped", "store_stopped"):
                summary = entry
    return summary, watched.cpu_s, float(watched.peak_rss)


def _framing_ceiling(data: bytes) -> float:
    """Frames/s of plain framing (split at blank lines, as ingest does), nothing else."""
    n, seconds = frame(data, raw=True)
    return n / seconds


def _raw_topic_check(bootstrap: str, capture: bytes) -> str:
    """Reads the raw topic back: the frames, in (epoch, seq) order, must be the capture's bytes
    (after the banner line) exactly; a frame sent twice must be the same bytes both times."""
    from contracts import kafka as k
    from contracts.config import load_settings
    from contracts.envelope import frames_decoder
    from ingest.framing import AmiFramer
    from kafkaio.client import read_to_end
    from kafkaio.consume import kind_of

    settings = load_settings({"kafka_bootstrap": bootstrap})
    topic = settings.kafka_raw_topic
    frames: dict[tuple[int, int], bytes] = {}
    differing = 0

    async def main() -> None:
        nonlocal differing
        async for records in read_to_end(settings, topic):
            for r in records:
                if kind_of(r) != k.KIND_AMI:
                    continue
                batch = frames_decoder.decode(r.value or b"")
                pos = 0
                for seq, size in zip(batch.seqs, batch.sizes):
                    raw = batch.raw[pos : pos + size]
                    pos += size
                    if frames.setdefault((batch.epoch, seq), raw) != raw:
                        differing += 1

    asyncio.run(main())
    got = b"".join(frames[m] for m in sorted(frames))
    probe = AmiFramer()
    probe.feed_raw(capture[:4096])
    expected = capture[capture.find(b"\n") + 1 :] if probe.banner is not None else capture
    corrupted = abs(len(got) - len(expected))
    if got != expected:
        import numpy as np

        n = min(len(got), len(expected))
        corrupted += int(np.count_nonzero(np.frombuffer(got, np.uint8, n)
                                          != np.frombuffer(expected, np.uint8, n)))
    return (f"{len(frames):,} frames, {len(got):,} of {len(expected):,} bytes back from Kafka, "
            f"{corrupted + differing} corrupted")


STORE_BATCH_ROWS = 50_000
"""The store stage's batch here (PBXPIPE_BATCH_ROWS), and the ceiling's."""

STORE_LOAD_CALLS = 250_000
"""Calls the store stage is timed on: enrich's records, copied with new ids up to this many, so
the figure is the insert path's and not the engine's first insert (~0.1 s slower than the next)
or the group join: at 100,000 (three batches) those were still ~15% of the busy time."""


def _copy_records(env: dict[str, str], copies: int) -> None:
    """Append ``copies`` copies of the records topic's batches to it, call and leg ids suffixed
    ``#n``: more distinct rows of the same shape, through the same wire format."""
    import pyarrow.compute as pc

    from contracts.config import load_settings
    from kafkaio import records_topic
    from kafkaio.client import Producer, make_producer, read_to_end
    from kafkaio.consume import kind_of

    settings = load_settings({"kafka_bootstrap": env["PBXPIPE_KAFKA_BOOTSTRAP"],
                              "kafka_idempotence": False})
    topic = settings.kafka_records_topic

    async def main() -> None:
        producer = Producer(make_producer(settings), "bench")
        await producer.start()
        try:
            async for records in read_to_end(settings, topic, only_existing=True):
                out = []
                for r in records:
                    kind = records_topic.BY_MESSAGE_KIND[kind_of(r)]
                    if kind is records_topic.QUARANTINE:
                        continue
                    data = records_topic.decode(kind, r.value or b"")
                    ids = [n for n in ("call_id", "leg_id") if n in data.column_names]
                    for c in range(1, copies + 1):
                        copy = data
                        for name in ids:
                            i = copy.schema.get_field_index(name)
                            copy = copy.set_column(i, copy.schema.field(i),
                                                   pc.binary_join_element_wise(
                                                       copy.column(i), f"#{c}", ""))
                        out.append((r.key or b"", records_topic.encode(copy),
                                    kind.batch_kind, r.timestamp / 1000))
                await producer.send(topic, out)
        finally:
            await producer.stop()

    asyncio.run(main())


def _arrow_ceiling(dsn: str, optimize_on_insert: int) -> tuple[float, int]:
    """Plain Arrow inserts of the stored calls and legs (all columns) into copies of their tables,
    in batches of the store's size: call rows/s of the insert alone. (``parties`` is MATERIALIZED:
    ClickHouse computes it on insert, so it is never sent; ``SELECT *`` leaves it out.)"""
    import clickhouse_connect

    from store.clickhouse import chdb_path

    client = clickhouse_connect.get_client(interface="chdb", path=chdb_path(dsn))
    # in a hashed order, as they arrive (read in key order, they would insert ~2x faster)
    tables = {name: client.query_arrow(f"SELECT * FROM {name} ORDER BY cityHash64({key})")
              for name, key in (("calls", "call_id"), ("call_legs", "leg_id"))}
    for name in tables:
        client.command(f"DROP TABLE IF EXISTS {name}_ceiling")
        client.command(f"CREATE TABLE {name}_ceiling AS {name}")
    calls = tables["calls"].num_rows
    batches = max(1, -(-sum(t.num_rows for t in tables.values()) // STORE_BATCH_ROWS))
    with stopwatch() as t:
        for b in range(batches):
            for name, data in tables.items():
                step = -(-data.num_rows // batches)
                client.insert_arrow(f"{name}_ceiling", data.slice(b * step, step),
                                    settings={"insert_deduplication_token": f"ceiling-{name}-{b}",
                                              "optimize_on_insert": optimize_on_insert})
    for name in tables:
        client.command(f"DROP TABLE {name}_ceiling")
    client.close()
    return calls / t.seconds, calls


def run_kafka_bench(capture: bytes, args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="pbxpipe-bench-"))
    with broker(tmp) as kafka:
        fetch_wait = os.environ.get("PBXPIPE_KAFKA_FETCH_MAX_WAIT_MS", "")
        if kafka.ours:  # Tansu holds a waiting fetch to its end even when data arrives
            fetch_wait = fetch_wait or "50"
        dsn = f"chdb:///{tmp / 'ch'}"
        env = {**os.environ, "PBXPIPE_KAFKA_BOOTSTRAP": kafka.bootstrap, "PBXPIPE_LOG_FORMAT": "json",
               "PBXPIPE_KAFKA_IDEMPOTENCE": os.environ.get("PBXPIPE_KAFKA_IDEMPOTENCE", "false"),
               "PBXPIPE_KAFKA_SPOOL_DIR": str(tmp / "spool"), "PBXPIPE_CLICKHOUSE_DSN": dsn,
               "PBXPIPE_BATCH_ROWS": "50000", "PBXPIPE_KAFKA_PARTITIONS": "4"}
        if fetch_wait:
            env["PBXPIPE_KAFKA_FETCH_MAX_WAIT_MS"] = fetch_wait
        cap = tmp / "capture.log"
        cap.write_bytes(capture)
        print(f"\nthrough Kafka ({kafka.bootstrap}; each stage its own process, one after the other)")
        framing = _framing_ceiling(capture)
        ing, ing_cpu, ing_rss = _run_stage(env, tmp / "ingest.log", "ingest", "--capture", str(cap))
        ing_rate = ing["frames"] / ing["busy_s"]
        print(f"ingest  : {ing_rate:>10,.0f} events/s  cpu {ing_cpu:6.1f} s  peak RSS "
              f"{ing_rss / 2**20:5.0f} MiB   ceiling (plain framing) {framing:,.0f}/s -> "
              f"{ratio(ing_rate, framing)}; {_raw_topic_check(kafka.bootstrap, capture)}")
        enr, enr_cpu, enr_rss = _run_stage(env, tmp / "enrich.log", "enrich", "--idle-exit", "1")
        enr_rate = enr["events"] / enr["busy_s"]
        print(f"enrich  : {enr_rate:>10,.0f} events/s  cpu {enr_cpu:6.1f} s  peak RSS "
              f"{enr_rss / 2**20:5.0f} MiB   ({enr['records']} records)")
        copies = max(0, -(-STORE_LOAD_CALLS // max(args.calls, 1)) - 1)
        _copy_records(env, copies)
        # batches close on size here (age: the tail only), so the rate is the insert path's
        sto, sto_cpu, sto_rss = _run_stage({**env, "PBXPIPE_BATCH_ROWS": str(STORE_BATCH_ROWS),
                                            "PBXPIPE_BATCH_AGE_S": "0.05"},
                                           tmp / "store.log", "store", "--idle-exit", "1")
        sto_rate = sto["calls"] / max(sto["busy_s"], 1e-9)
        arrow, _ = _arrow_ceiling(dsn, optimize_on_insert=0)
        arrow_default, _ = _arrow_ceiling(dsn, optimize_on_insert=1)
        print(f"store   : {sto_rate:>10,.0f} call rows/s ({sto['rows'] / max(sto['busy_s'], 1e-9):,.0f} "
              f"rows/s with legs; {sto['calls']} calls: enrich's and {copies} copies)  cpu "
              f"{sto_cpu:6.1f} s  peak RSS {sto_rss / 2**20:5.0f} MiB\n"
              f"          ceiling (plain Arrow insert of the same calls and legs, "
              f"{STORE_BATCH_ROWS:,} rows a batch, as the store: optimize_on_insert=0) "
              f"{arrow:,.0f} call rows/s -> {ratio(sto_rate, arrow)}; with ClickHouse's default "
              f"optimize_on_insert=1 {arrow_default:,.0f}/s")
        quiet_logs()
        run_end_to_end(env, tmp, rate=args.rate, seconds=args.seconds, grace=args.grace,
                       seed=args.seed, broker_pid=kafka.pid)
