"""End to end at a given call rate: ``python -m bench.end_to_end --rate 500 --seconds 20``.

The load player (simulator/player.py, its own process) places calls over AMI at ``--rate``;
``pbxpipe ingest`` and ``pbxpipe enrich`` run as their own processes, as in production; the store
stage runs in this process, so the latency from each call's real hangup (its record's ``end``,
the wall-clock Timestamp the player wrote) to its row's insert is exact. Prints the calls asked,
placed (at what rate, for how long) and stored, missing and doubled call ids against the player's
manifest, per-process CPU and peak RSS, the latency p50/p99/max, and whether the run met the
target "500 calls/s sustained, p99 hangup -> queryable <= 1 s". A local Tansu broker is started
unless PBXPIPE_KAFKA_BOOTSTRAP is set.

Latency settings (each a ``PBXPIPE_*`` variable the stages read): ``call_grace_s`` (``--grace``,
0.3) is the wait after a call's last Hangup for late events, the largest part of the latency;
the store's ``batch_age_s`` 0.1 (a batch of ~50 calls and their legs at 500 calls/s, ten inserts
a second); ``kafka_linger_ms`` 10 (a produce round waits that long for more: fewer, larger
requests; against 2 ms, ingest used 9.5 s of CPU instead of 14 and the broker 31 s instead of 44
over a 20 s run, latency no worse); ``kafka_fetch_max_wait_ms`` 50: Tansu does not answer a
waiting fetch when data arrives (producer -> consumer at p50: 0.13 s with aiokafka's 500 ms
default, 0.017 s with 50 ms), and there are two consumer hops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.harness import (
    PBXPIPE,
    PLAYER,
    Watched,
    broker,
    chdb_store,
    free_port,
    pct,
    quiet_logs,
    spawn,
    Stopwatch,
)

TARGET_RATE = 500.0  # calls/s sustained end to end
TARGET_P99_S = 1.0  # and p99 hangup -> queryable
PBX_ID = "e2e"
SECRET = "bench-e2e"


def _read_status(path: Path) -> dict[str, Any]:
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        return dict(json.loads(path.read_text()))
    return {}


def _stop(proc: subprocess.Popen[bytes], name: str, timeout: float = 30.0) -> int:
    """SIGTERM (a stage drains and commits), then kill after ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"  ({name} did not stop within {timeout:g} s: killed)")
            proc.kill()
            proc.wait()
    return proc.returncode


def run_end_to_end(env: dict[str, str], tmp: Path, *, rate: float, seconds: float,
                   grace: float = 0.3, seed: int = 1, broker_pid: int | None = None,
                   batch_age_s: float = 0.1, linger_ms: int = 10,
                   fetch_wait_ms: int = 50) -> dict[str, Any]:
    """Run the player, ingest and enrich processes and the store stage here; print and return
    the figures. ``env`` must name the broker (PBXPIPE_KAFKA_BOOTSTRAP) and ClickHouse
    (PBXPIPE_CLICKHOUSE_DSN, embedded chDB: this process is its only user meanwhile)."""
    from contracts.config import load_settings

    total = int(rate * seconds)
    port = free_port()
    run = f"e2e-{int(time.time())}"
    stage_env = {
        **env, "PBXPIPE_PBX_ID": PBX_ID, "PBXPIPE_AMI_PORT": str(port), "PBXPIPE_AMI_SECRET": SECRET,
        "PBXPIPE_LOG_FORMAT": "json", "PBXPIPE_KAFKA_IDEMPOTENCE": env.get("PBXPIPE_KAFKA_IDEMPOTENCE", "false"),
        "PBXPIPE_KAFKA_RAW_TOPIC": f"{run}.raw", "PBXPIPE_KAFKA_RECORDS_TOPIC": f"{run}.records",
        "PBXPIPE_KAFKA_ENRICH_GROUP": f"{run}-enrich", "PBXPIPE_KAFKA_STORE_GROUP": f"{run}-store",
        "PBXPIPE_KAFKA_SPOOL_DIR": str(tmp / f"{run}-spool"), "PBXPIPE_CALL_GRACE_S": str(grace),
        "PBXPIPE_BATCH_AGE_S": str(batch_age_s), "PBXPIPE_KAFKA_LINGER_MS": str(linger_ms),
        "PBXPIPE_KAFKA_FETCH_MAX_WAIT_MS": str(fetch_wait_ms),
    }
    settings = load_settings(environ=stage_env)
    status_path, manifest_path = tmp / f"{run}-player.json", tmp / f"{run}-placed.jsonl"
    print(f"\nend to end: {total} calls at {rate:g} calls/s for {seconds:g} s; player -> pbxpipe ingest "
          f"-> Kafka -> pbxpipe enrich -> Kafka -> store (this process) -> chDB; call_grace_s "
          f"{grace:g}, batch_age_s {batch_age_s:g}, kafka_linger_ms {linger_ms}, kafka_fetch_max_wait_ms "
          f"{fetch_wait_ms}")
    t = Stopwatch()
    player = spawn([*PLAYER, "--port", str(port), "--calls", str(total), "--rate", str(rate),
                    "--seed", str(seed), "--secret", SECRET, "--status", str(status_path),
                    "--manifest", str(manifest_path), "--linger", "3600", "--log-format", "json"],
                   stage_env, tmp / f"{run}-player.log")
    procs: dict[str, subprocess.Popen[bytes]] = {"player": player}
    try:
        while _read_status(status_path).get("state") != "ready":
            if player.poll() is not None:
                raise SystemExit(f"the player exited ({player.returncode}): see {tmp / f'{run}-player.log'}")
            time.sleep(0.2)
        print(f"  player ready: {total} calls rendered in {t.elapsed:.1f} s")
        quiet_logs()
        result = asyncio.run(_measure(settings, stage_env, tmp, run, procs, status_path, broker_pid))
    finally:
        for name, proc in reversed(procs.items()):
            if name == "player":
                proc.kill()
                proc.wait()
            else:
                _stop(proc, name)
    placed = [json.loads(line) for line in manifest_path.read_text(encoding="utf-8").splitlines()]
    return _report(result, placed, total, rate, seconds)


async def _measure(settings: Any, env: dict[str, str], tmp: Path, run: str,
                   procs: dict[str, subprocess.Popen[bytes]], status_path: Path,
                   broker_pid: int | None) -> dict[str, Any]:
    from contracts import metrics
    from store.stage import StoreStage

    inserted: Counter[str] = Counter()
    latency: list[tuple[float, float]] = []  # (hangup, seconds to insert)
    starts: list[float] = []

    def written(table: str, rows: Any) -> None:  # an Arrow table of the rows inserted
        if table != "calls":
            return
        now = time.time()
        inserted.update(rows.column("call_id").to_pylist())
        latency.extend((end, now - end) for end in rows.column("end").to_pylist())
        starts.extend(rows.column("start").to_pylist())

    with chdb_store(settings.clickhouse_dsn) as store:
        sink = StoreStage(settings, store, on_written=written)
        await sink.start()  # creates the records topic
        stop = asyncio.Event()
        storing = asyncio.create_task(sink.run(stop))
        procs["enrich"] = spawn([*PBXPIPE, "enrich"], env, tmp / f"{run}-enrich.log")
        watched = [Watched("player", procs["player"].pid), Watched("enrich", procs["enrich"].pid),
                   Watched("store (bench process)", os.getpid())]
        if broker_pid is not None:
            watched.append(Watched("broker", broker_pid))

        def sample() -> None:
            for w in watched:
                w.sample()
            for name, p in procs.items():
                if p.poll() is not None:
                    raise SystemExit(f"{name} exited ({p.returncode}): see {tmp / f'{run}-{name}.log'}")
            if storing.done():
                storing.result()

        try:
            # both consumer groups joined before the first call: a join takes seconds, not a call's
            enrich_log = tmp / f"{run}-enrich.log"
            while not (sink.consumer.assignment() and b'"partitions_assigned"' in enrich_log.read_bytes()):
                sample()
                await asyncio.sleep(0.1)
            procs["ingest"] = spawn([*PBXPIPE, "ingest"], env, tmp / f"{run}-ingest.log")
            watched.insert(1, Watched("ingest", procs["ingest"].pid))
            status: dict[str, Any] = {}
            while status.get("state") not in ("playing", "finished", "failed"):
                sample()
                await asyncio.sleep(0.05)
                status = _read_status(status_path)
            for w in watched:
                w.mark()
            wall_start = float(status["wall_start"])
            while (status := _read_status(status_path)).get("state") not in ("finished", "failed"):
                sample()
                await asyncio.sleep(0.25)
            if status["state"] == "failed":
                raise SystemExit(f"the player failed: {status.get('error')}")
            placed = {json.loads(line)["linkedid"] for line in
                      (tmp / f"{run}-placed.jsonl").read_text(encoding="utf-8").splitlines()}
            wanted = {f"{PBX_ID}:{linkedid}" for linkedid in placed}
            deadline = time.time() + settings.call_grace_s + 60
            while not wanted <= inserted.keys() and time.time() < deadline:
                sample()
                await asyncio.sleep(0.1)
            sample()
            window = time.time() - wall_start
            for name in ("ingest", "enrich"):  # SIGTERM: they drain and commit
                await asyncio.to_thread(_stop, procs.pop(name), name)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await storing
            await sink.close()
        stored = {r["call_id"] for r in store.query(
            "SELECT DISTINCT call_id FROM calls FINAL WHERE pbx_id = {pbx:String}", {"pbx": PBX_ID})}
    inserts = {}
    for table in ("calls", "call_legs"):
        n = metrics.REGISTRY.get_sample_value("pbxpipe_store_insert_duration_seconds_count", {"table": table})
        total_s = metrics.REGISTRY.get_sample_value("pbxpipe_store_insert_duration_seconds_sum", {"table": table})
        if n:
            inserts[table] = (int(n), (total_s or 0.0) / n)
    return {"player": status, "inserts": inserts, "inserted": inserted, "latency": latency, "starts": starts,
            "stored": stored, "window_s": window,
            "processes": [(w.name, w.cpu_s, w.peak_rss) for w in watched]}


def _report(result: dict[str, Any], placed: list[dict[str, Any]], total: int, rate: float,
            seconds: float) -> dict[str, Any]:
    player, inserted, stored = result["player"], result["inserted"], result["stored"]
    wanted = {f"{PBX_ID}:{p['linkedid']}" for p in placed}
    missing = len(wanted - stored)
    doubled = sum(1 for n in inserted.values() if n > 1)
    unexpected = len(stored - wanted)
    starts = sorted(result["starts"])
    span = starts[-1] - starts[0] if len(starts) > 1 else 0.0
    placed_rate = (len(starts) - 1) / span if span > 0 else 0.0
    lat = sorted(s for _, s in result["latency"])
    p50, p99, worst = pct(lat, 0.5), pct(lat, 0.99), (lat[-1] if lat else float("nan"))
    window = result["window_s"]
    print(f"  calls: asked {total}; placed {len(placed)} at {placed_rate:.1f} calls/s sustained over "
          f"{span:.1f} s (first to last call start); stored {len(stored & wanted)}, missing {missing}, "
          f"doubled {doubled}, unexpected {unexpected}")
    print(f"  player: behind schedule p50 {player.get('lag_p50_s', 0) * 1000:.1f} ms, p99 "
          f"{player.get('lag_p99_s', 0) * 1000:.1f} ms, max {player.get('lag_max_s', 0) * 1000:.1f} ms, "
          f"{player.get('late_events', 0)} events > 100 ms late"
          f"{'' if player.get('kept_up') else ' (the PLAYER fell behind: the rate is not the pipeline’s)'}; "
          f"{player.get('frames_sent', 0)} frames in {player.get('writes', 0)} writes")
    print(f"  last Hangup -> row inserted: p50 {p50:.2f} s  p99 {p99:.2f} s  max {worst:.2f} s "
          f"({len(lat)} calls)")
    by_window: dict[int, list[float]] = {}
    t0 = min((h for h, _ in result["latency"]), default=0.0)
    for hangup, s in result["latency"]:
        by_window.setdefault(int((hangup - t0) // 5), []).append(s)
    print("  p99 by 5 s of hangups: " + " ".join(
        f"{pct(sorted(v), 0.99):.2f}" for _, v in sorted(by_window.items())))
    print("  calls ended per second, same 5 s: " + " ".join(
        f"{len(v) / 5:.0f}" for _, v in sorted(by_window.items())))
    if result["inserts"]:
        print("  store inserts: " + ", ".join(f"{table} {n} x {mean * 1000:.0f} ms"
                                              for table, (n, mean) in result["inserts"].items()))
    print(f"  {'process':<22} {'cpu s':>7} {'cpu %':>6} {'peak RSS':>9}   (over {window:.1f} s from the "
          f"first call to the last row)")
    for name, cpu, rss in result["processes"]:
        print(f"  {name:<22} {cpu:7.1f} {100 * cpu / max(window, 1e-9):5.0f}% {rss / 2**20:6.0f} MiB")
    reasons = []
    if placed_rate < TARGET_RATE * 0.98:
        reasons.append(f"placed {placed_rate:.0f} calls/s < {TARGET_RATE:.0f}")
    ended_peak = max((len(v) / 5 for v in by_window.values()), default=0.0)
    if ended_peak < TARGET_RATE * 0.9:  # calls last minutes: hangups reach the start rate late
        reasons.append(f"hangups peaked at {ended_peak:.0f} calls/s in 5 s (run longer, e.g. "
                       "--seconds 60, for them to reach the start rate)")
    if not p99 <= TARGET_P99_S:
        reasons.append(f"p99 {p99:.2f} s > {TARGET_P99_S:g} s")
    if missing or doubled:
        reasons.append(f"{missing} missing, {doubled} doubled")
    met = not reasons
    print(f"  target {TARGET_RATE:.0f} calls/s with p99 <= {TARGET_P99_S:g} s: "
          f"{'MET' if met else 'NOT MET (' + '; '.join(reasons) + ')'}")
    return {"asked": total, "placed": len(placed), "placed_rate": placed_rate, "sustained_s": span,
            "stored": len(stored & wanted), "missing": missing, "doubled": doubled,
            "p50_s": p50, "p99_s": p99, "max_s": worst, "met": met, "player": player,
            "processes": result["processes"], "median_s": statistics.median(lat) if lat else None}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.end_to_end", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=TARGET_RATE, help="new calls per second")
    p.add_argument("--seconds", type=float, default=20.0, help="how long to place calls")
    p.add_argument("--grace", type=float, default=0.3, help="call_grace_s: the wait for late events")
    p.add_argument("--batch-age", type=float, default=0.1, help="the store's batch_age_s")
    p.add_argument("--fetch-wait", type=int, default=50, help="kafka_fetch_max_wait_ms of the consumers")
    p.add_argument("--linger", type=int, default=10, help="kafka_linger_ms of the producers")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="pbxpipe-e2e-"))
    with broker(tmp) as kafka:
        env = {**os.environ, "PBXPIPE_KAFKA_BOOTSTRAP": kafka.bootstrap}
        env.setdefault("PBXPIPE_CLICKHOUSE_DSN", f"chdb:///{tmp / 'ch'}")
        run_end_to_end(env, tmp, rate=a.rate, seconds=a.seconds, grace=a.grace, seed=a.seed,
                       broker_pid=kafka.pid, batch_age_s=a.batch_age,
                       fetch_wait_ms=a.fetch_wait, linger_ms=a.linger)


if __name__ == "__main__":
    main()
