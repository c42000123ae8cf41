"""`pbxpipe run | replay | simulate | calls | demo`: the in-process pipeline, the simulated PBX
and the call history."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
import time
from collections.abc import Coroutine
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from contracts.config import Settings, load_settings, redacted
from contracts.errors import AmiAuthError, PbxPipeError
from contracts.logs import configure_logging
from pbxpipe.app import (
    Dsn,
    LogFormat,
    PbxId,
    Profile,
    command_settings,
    fail,
    parse_time,
    parse_zone,
    profile_of,
)
from store.queries import CALL_TYPES, STATUSES


def run(
    ami_host: Annotated[Optional[str], typer.Option(help="[PBXPIPE_AMI_HOST]")] = None,
    ami_port: Annotated[Optional[int], typer.Option(help="[PBXPIPE_AMI_PORT]")] = None,
    ami_user: Annotated[Optional[str], typer.Option(help="[PBXPIPE_AMI_USER]")] = None,
    ami_secret: Annotated[Optional[str], typer.Option(help="[PBXPIPE_AMI_SECRET]")] = None,
    ami_max_retries: Annotated[Optional[int], typer.Option(help="-1 retry forever; N give up (exit 1) after N failed connects [PBXPIPE_AMI_MAX_RETRIES].")] = None,
    pbx_id: PbxId = None,
    pbx_profile: Profile = None,
    clickhouse: Dsn = None,
    log_format: LogFormat = None,
    metrics_port: Annotated[Optional[int], typer.Option(help="Serve Prometheus metrics on this port (0: off) [PBXPIPE_METRICS_PORT].")] = None,
    idle_exit: Annotated[Optional[float], typer.Option(help="Exit after this many seconds without events and open calls.")] = None,
    api: Annotated[bool, typer.Option("--api", help="Serve the panel API from this process too (needed with embedded chDB: one process per directory) [PBXPIPE_API_HOST, PBXPIPE_API_PORT].")] = False,
) -> None:
    """Every stage in one process against a live AMI, into ClickHouse."""
    from pbxpipe.pipeline import LivePipeline, open_store

    settings = command_settings(ami_host=ami_host, ami_port=ami_port, ami_user=ami_user,
                                ami_secret=ami_secret, ami_max_retries=ami_max_retries,
                                pbx_id=pbx_id, pbx_profile=pbx_profile, clickhouse_dsn=clickhouse,
                                log_format=log_format, metrics_port=metrics_port)
    try:
        profile = profile_of(settings)
        import structlog

        structlog.get_logger("pbxpipe").info("pipeline_started", **redacted(settings))
        from pbxpipe.ops import all_of, ami_ready, start_ops, store_ready

        ops = start_ops(settings, "run")  # /metrics, /healthz, /readyz (pbxpipe/ops.py)
        store = open_store(settings)
        if ops:
            ops.readiness = all_of(ami_ready(settings.pbx_id), store_ready())
        from retention.sync import start_background

        recordings = start_background(settings, store)  # the passes of `recordings watch`
        try:
            if settings.kafka_bootstrap:  # the three stages through Kafka (pbxpipe/cmd_kafka.py)
                from pbxpipe.cmd_kafka import run_via_kafka

                main = run_via_kafka(settings, profile, store, idle_exit)
            else:
                main = LivePipeline(settings, profile, store).run(idle_exit=idle_exit)
            asyncio.run(with_api(settings, main) if api else main)
        finally:
            if recordings:
                recordings.stop()
    except AmiAuthError as e:
        fail(str(e), 2)
    except PbxPipeError as e:
        fail(str(e))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


async def with_api(settings: Settings, main: Coroutine[Any, Any, None]) -> None:
    """``main`` with the panel API served beside it in this process, until ``main`` ends."""
    from api.server import build_runtime, serve

    runtime = await asyncio.to_thread(build_runtime, settings)
    stop = asyncio.Event()
    server = asyncio.create_task(serve(settings, runtime, stop), name="api")
    try:
        await main
    finally:
        stop.set()
        await server
        runtime.close()


def replay(
    files: Annotated[list[Path], typer.Argument(help="Raw AMI captures (bytes as received).", exists=True, dir_okay=False)],
    pbx_id: PbxId = None,
    pbx_profile: Profile = None,
    clickhouse: Dsn = None,
    log_format: LogFormat = None,
) -> None:
    """Feed raw AMI captures through the pipeline into ClickHouse (idempotent)."""
    from pbxpipe.pipeline import replay as do_replay

    settings = command_settings(pbx_id=pbx_id, pbx_profile=pbx_profile, clickhouse_dsn=clickhouse,
                                log_format=log_format)
    try:
        profile = profile_of(settings)
        if pbx_id is None and settings.pbx_profile:
            settings = load_settings({"pbx_id": profile.pbx_id, "pbx_profile": settings.pbx_profile,
                                      "clickhouse_dsn": settings.clickhouse_dsn})
        counts = do_replay(files, settings, profile)
    except PbxPipeError as e:
        fail(str(e))
    typer.echo(f"replayed {counts['frames']} frames: {counts['calls']} calls, "
               f"{counts['legs']} legs, {counts['quarantined']} quarantined")


def _parse_mix(mix: str | None) -> dict[str, float]:
    if not mix:
        return {}
    out: dict[str, float] = {}
    for part in mix.split(","):
        kind, sep, weight = part.partition("=")
        try:
            out[kind.strip()] = float(weight) if sep else 1.0
        except ValueError:
            fail(f"--mix: weight of {kind!r} is not a number: {weight!r}")
    return out


def simulate(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="AMI port (0: any free port, printed).")] = 5038,
    user: Annotated[str, typer.Option(help="AMI username clients must log in with.")] = "pbxpipe",
    secret: Annotated[str, typer.Option(help="AMI secret.")] = "pbxpipe",
    rate: Annotated[float, typer.Option(help="New calls per second (real time).")] = 2.0,
    concurrency: Annotated[int, typer.Option(help="At most this many calls at once.")] = 50,
    calls_total: Annotated[int, typer.Option("--calls", help="Calls to place, then stop (0: forever).")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same calls.")] = 0,
    mix: Annotated[Optional[str], typer.Option(help="Scenario mix, kind=weight,… (default: a realistic office mix).")] = None,
    talk: Annotated[str, typer.Option(help="Talk time: exp:<mean s> | uniform:<lo>:<hi> | fixed:<s>.")] = "exp:90",
    speed: Annotated[float, typer.Option(help="Virtual seconds per real second (timestamps and delays).")] = 1.0,
    load_curve: Annotated[str, typer.Option(help="Arrivals over the local day: flat | office | 24 comma-separated weights.")] = "flat",
    manifest: Annotated[Optional[Path], typer.Option(help="Write each placed call's expected record here (JSON Lines).")] = None,
) -> None:
    """A PBX speaking AMI as Asterisk 22 does, playing a seeded mix of calls."""
    from simulator.server import SimulatorConfig, run_simulator

    configure_logging("auto")
    run_simulator(SimulatorConfig(
        host=host, port=port, username=user, secret=secret, calls_per_second=rate,
        max_concurrency=concurrency, total_calls=calls_total, seed=seed, mix=_parse_mix(mix),
        talk_time=talk, speed=speed, load_curve=load_curve,
        manifest_path=str(manifest) if manifest else "",
    ))


# The choices come from the query layer: one list of call types and statuses.
CallType = Enum("CallType", {t: t for t in CALL_TYPES}, type=str)  # type: ignore[misc]
StatusChoice = Enum("StatusChoice", {s: s for s in sorted(STATUSES)}, type=str)  # type: ignore[misc]


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


TABLE_COLUMNS = ("start_local", "direction", "caller", "called", "status", "last_answered_by",
                 "wait_s", "talk_s", "duration_s", "cost")


def calls(
    since: Annotated[Optional[str], typer.Option(help="From this time (ISO; in --tz unless it has an offset).")] = None,
    until: Annotated[Optional[str], typer.Option(help="Until this time, exclusive.")] = None,
    type: Annotated[Optional[CallType], typer.Option("--type", help="Call type.")] = None,
    extension: Annotated[Optional[str], typer.Option(help="Calls that rang, were made or answered by this extension.")] = None,
    number: Annotated[Optional[str], typer.Option(help="Calls from or to this number (digits match).")] = None,
    status: Annotated[Optional[StatusChoice], typer.Option(help="Call status.")] = None,
    tz: Annotated[str, typer.Option(help="Time zone for --since/--until and shown times.")] = "UTC",
    limit: Annotated[int, typer.Option(help="At most this many calls, newest first.")] = 1000,
    format: Annotated[Format, typer.Option("--format", help="table | json | csv")] = Format.table,
    pbx: Annotated[Optional[str], typer.Option("--pbx", help="Only this PBX's calls (a tenant); default: every PBX.")] = None,
    clickhouse: Dsn = None,
) -> None:
    """The call history, read back from ClickHouse (calls past their retention are never shown)."""
    from pbxpipe.pipeline import open_store
    from retention.jobs import default_policy, operator_scope
    from store.queries import call_history
    from store.tenancy import ScopedReader

    settings = command_settings(clickhouse_dsn=clickhouse, log_format="console")
    zone = parse_zone(tz)
    try:
        store = open_store(settings)
        default = default_policy(settings.retention_call_days, settings.retention_recording_days)
        scope = operator_scope(store, default, time.time(), tenant=pbx)
        rows = call_history(ScopedReader(store), scope, since=parse_time(since, zone, "--since"),
                            until=parse_time(until, zone, "--until"),
                            call_type=type.value if type else None, extension=extension,
                            number=number, status=status.value if status else None, tz=tz,
                            limit=limit)
    except PbxPipeError as e:
        fail(str(e))
    except ValueError as e:  # a filter the query layer refuses: --number without digits, --limit
        fail(str(e), 2)
    if format is Format.json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=1))
    elif format is Format.csv:
        buf = io.StringIO()
        if rows:
            w = csv.DictWriter(buf, fieldnames=list(rows[0]))
            w.writeheader()
            for r in rows:
                w.writerow({k: ("|".join(v) if isinstance(v, list) else v) for k, v in r.items()})
        typer.echo(buf.getvalue(), nl=False)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{len(rows)} calls ({tz})")
        for col in TABLE_COLUMNS:
            table.add_column(col)
        for r in rows:
            table.add_row(*("" if r.get(c) is None else str(r.get(c)) for c in TABLE_COLUMNS))
        Console(width=None if sys.stdout.isatty() else 160).print(table)


def demo(
    calls_total: Annotated[int, typer.Option("--calls", help="How many calls the simulator places.")] = 300,
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 7,
    clickhouse: Dsn = None,
) -> None:
    """Simulated PBX + the whole pipeline on embedded defaults, then a report from ClickHouse."""
    from pbxpipe.demo import run_demo

    settings = command_settings(clickhouse_dsn=clickhouse, log_format="json")
    try:
        run_demo(settings, calls_total=calls_total, seed=seed)
    except PbxPipeError as e:
        fail(str(e))


def register(app: typer.Typer) -> None:
    for command in (run, replay, simulate, calls, demo):
        app.command()(command)
