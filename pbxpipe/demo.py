"""`pbxpipe demo`: a simulated PBX places calls, the live pipeline stores them, a report reads them back."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from contracts.config import Settings
from contracts.logs import configure_logging
from contracts.profile import DEFAULT_PROFILE
from contracts.records import CallRecord
from pbxpipe.pipeline import LivePipeline, open_store
from retention.jobs import default_policy, operator_scope
from store import queries
from store.clickhouse import ClickHouseStore
from store.tenancy import Scope, ScopedReader

DEMO_DSN = "chdb:///./data/demo"
DEMO_TZ = "Europe/Warsaw"
DEMO_SECRET = "demo-secret"
DEMO_USER_EXTENSION = "101"


async def _play(settings: Settings, calls_total: int, seed: int, console: Console) -> int:
    from simulator.server import SimulatorConfig, serve

    # A business day (08:00-18:00 local) compressed into well under a minute.
    day = datetime.now(ZoneInfo(DEMO_TZ)).replace(hour=8, minute=0, second=0, microsecond=0)
    sim = await serve(SimulatorConfig(
        host="127.0.0.1", port=0, username=settings.ami_user, secret=DEMO_SECRET,
        total_calls=calls_total, calls_per_second=calls_total / 20.0, speed=1800.0, seed=seed,
        start_time=day.timestamp(), max_concurrency=200,
    ))
    settings = msgspec.structs.replace(settings, ami_port=sim.port, ami_secret=DEMO_SECRET,
                                       ami_host="127.0.0.1", call_grace_s=0.5)
    store = open_store(settings)
    done = 0
    with Progress(TextColumn("[bold]calls stored"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("calls", total=calls_total)

        def on_record(record: CallRecord) -> None:
            nonlocal done
            done += 1
            progress.update(task, completed=done)

        pipeline = LivePipeline(settings, DEFAULT_PROFILE, store, on_record=on_record)
        stop = asyncio.Event()

        async def stop_when_played() -> None:
            await sim.done.wait()
            # the last calls' grace period, then the pipeline drains and stops
            while pipeline.builder.open_calls or done < calls_total:
                await asyncio.sleep(0.2)
                if sim.done.is_set() and pipeline.builder.open_calls == 0:
                    break
            stop.set()

        watcher = asyncio.create_task(stop_when_played())
        try:
            await pipeline.run(stop=stop)
        finally:
            watcher.cancel()
            await sim.close()
    return done


def _table(title: str, rows: list[dict], columns: list[str] | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    cols = columns or (list(rows[0]) if rows else [])
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*("" if r.get(c) is None else str(r.get(c)) for c in cols))
    return table


def _money(rows: list[dict]) -> list[dict]:
    """Decimals as "12.34" (tariffs)."""
    return [{k: queries.money_str(v) if isinstance(v, Decimal) else v for k, v in r.items()} for r in rows]


def report(store: ClickHouseStore, scope: Scope, console: Console, tz: str = DEMO_TZ) -> None:
    """A short report read back from ClickHouse."""
    reader = ScopedReader(store)
    console.print(_table("Calls by type", queries.calls_by_type(reader, scope)))
    console.print(_table(f"Answered vs missed (incoming, by day, {tz})",
                         queries.answered_vs_missed(reader, scope, tz=tz)))
    missed = queries.missed_not_called_back(reader, scope, tz=tz)
    console.print(_table(f"Missed calls not yet called back: {len(missed)} numbers",
                         missed[:10], ["number", "missed_calls", "last_missed_local"]))
    hours = queries.busiest_hour(reader, scope, tz=tz)
    if hours:
        top = hours[0]
        console.print(f"[bold]Busiest hour ({tz}):[/bold] {top['hour']:02d}:00-{top['hour']:02d}:59 "
                      f"with {top['calls']} calls")
    console.print(_table("Top destinations (outgoing)", queries.top_destinations(reader, scope, limit=5)))
    spend = ["calls", "answered_calls", "billed_s", "cost", "cost_buy", "margin", "currency"]
    console.print(_table("Spend by destination (sell price; buy = carrier)",  # tariffs
                         _money(queries.spend_by_destination(reader, scope, limit=10)),
                         ["destination", "category", *spend]))
    console.print(_table("Spend by extension", _money(queries.spend_by_extension(reader, scope, limit=10)),
                         ["extension", *spend]))


def run_demo(settings: Settings, *, calls_total: int = 300, seed: int = 7) -> None:
    console = Console(width=None if sys.stdout.isatty() else 120)
    configure_logging("console", level=logging.WARNING)
    data = Path("data/demo")
    if settings.clickhouse_dsn == Settings().clickhouse_dsn:  # embedded default: a fresh demo dir
        shutil.rmtree(data, ignore_errors=True)
        settings = msgspec.structs.replace(settings, clickhouse_dsn=DEMO_DSN)
    console.print(f"[bold]pbx-pipeline demo[/bold]: a simulated Asterisk places {calls_total} calls "
                  f"(a business day at 1800x); AMI -> enrich -> ClickHouse ({settings.clickhouse_dsn})")
    stored = asyncio.run(_play(settings, calls_total, seed, console))
    console.print(f"{stored} call records stored.\n")
    store = ClickHouseStore.connect(settings.clickhouse_dsn)
    default = default_policy(settings.retention_call_days, settings.retention_recording_days)
    report(store, operator_scope(store, default, time.time()), console)
    dsn = settings.clickhouse_dsn
    admin, user = _demo_keys(store, settings.pbx_id)
    store.close()
    console.print("\n[bold]Try next:[/bold]")
    for cmd in (f".venv/bin/pbxpipe calls --clickhouse {dsn} --type missed --tz {DEMO_TZ}",
                f".venv/bin/pbxpipe calls --clickhouse {dsn} --extension 101 --format json",
                f".venv/bin/pbxpipe calls --clickhouse {dsn} --since 2026-01-01 --format csv",
                ".venv/bin/pbxpipe tariffs show 0700123456 --at 2026-11-24T10:00"):
        console.print(f"  {cmd}", soft_wrap=True)
    url = f"http://{settings.api_host}:{settings.api_port}"
    console.print("\n[bold]The panel API and page on the demo data[/bold] (keys made for the demo):")
    console.print(f"  .venv/bin/pbxpipe api --clickhouse {dsn}        then open {url}/", soft_wrap=True)
    console.print(f"  admin key ({settings.pbx_id}):            {admin}", soft_wrap=True)
    console.print(f"  user key (extension {DEMO_USER_EXTENSION}):  {user}", soft_wrap=True)
    console.print(f"  curl -H 'Authorization: Bearer {admin}' '{url}/v1/calls?limit=5'", soft_wrap=True)
    console.print("  docs/api.md has the endpoints; pbxpipe api-keys create makes more keys.")


def _demo_keys(store: ClickHouseStore, pbx_id: str) -> tuple[str, str]:
    """An admin key and a user key for the demo's PBX, and its time zone."""
    from api.keys import KeyStore

    keys = KeyStore(store)
    keys.set_tenant(pbx_id, name="Demo company", timezone=DEMO_TZ)
    _, admin = keys.create_key(pbx_id=pbx_id, role="admin", name="demo admin")
    _, user = keys.create_key(pbx_id=pbx_id, role="user", extensions=[DEMO_USER_EXTENSION],
                              name="demo user")
    return admin, user
