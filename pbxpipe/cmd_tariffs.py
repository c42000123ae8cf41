"""Commands for price lists and call cost: ``tariffs check|show|load`` and ``rerate``."""

from __future__ import annotations

import json
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from contracts.config import Settings
from contracts.errors import PbxPipeError, TariffError
from pbxpipe.app import (  # one flag grammar for every command
    command_settings,
    fail,
    parse_time,
    parse_zone,
    profile_of,
)

Dsn = Annotated[Optional[str], typer.Option("--clickhouse", help="ClickHouse DSN [PBXPIPE_CLICKHOUSE_DSN].")]
TariffPath = Annotated[Optional[str], typer.Option("--tariff", help="Rates CSV or a directory with rates.csv, customers.csv, holidays.csv; empty: the sample PLN list [PBXPIPE_TARIFF_PATH].")]
Profile = Annotated[Optional[Path], typer.Option("--pbx-profile", help="PBX profile TOML: how numbers are dialled (country code, prefixes) [PBXPIPE_PBX_PROFILE].")]
Tz = Annotated[Optional[str], typer.Option("--tariff-tz", help="Local time of bands, dates and holidays [PBXPIPE_TARIFF_TIMEZONE].")]

tariffs_app = typer.Typer(no_args_is_help=True, help="Price lists: validate, explain a number's rating, load into ClickHouse.")

EXAMPLE_SECONDS = (0, 1, 29, 30, 31, 59, 60, 61, 90, 120, 300)


def _settings(**flags: Any) -> Settings:
    return command_settings(log_format="console", **flags)


@tariffs_app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="A rates, customers or holidays CSV, or a price-list directory.", exists=True)],
    tariff_tz: Tz = None,
) -> None:
    """Validate a price list: every problem with its file, line, column and reason."""
    from enrich.rating import check_file

    settings = _settings(tariff_timezone=tariff_tz)
    try:
        typer.echo(check_file(file, settings))
    except TariffError as e:
        typer.echo("\n".join(e.issues), err=True)
        fail(f"{len(e.issues)} problem(s) in the price list")
    except PbxPipeError as e:
        fail(str(e))


@tariffs_app.command("show")
def show(
    number: Annotated[str, typer.Argument(help="The number as dialled (0601234567, 0048…, +44…).")],
    at: Annotated[Optional[str], typer.Option(help="When (ISO, in the tariff's time zone unless it has an offset); default now.")] = None,
    customer: Annotated[Optional[str], typer.Option(help="Customer (PBX id) whose plan applies; default PBXPIPE_PBX_ID.")] = None,
    seconds: Annotated[Optional[str], typer.Option(help="Talk times to price, comma-separated.")] = None,
    tariff: TariffPath = None,
    pbx_profile: Profile = None,
    tariff_tz: Tz = None,
) -> None:
    """How a number would be rated, and why: plan, matched prefix, band, increments, example costs."""
    from enrich.rating import load_tariff, zone_of
    from enrich.tariffs import Rater
    from store.queries import money_str

    settings = _settings(tariff_path=tariff, pbx_profile=pbx_profile, tariff_timezone=tariff_tz)
    try:
        profile = profile_of(settings)
        tar = load_tariff(settings)
        zone = zone_of(settings)
        when = parse_time(at, zone, "--at")
        epoch = when.timestamp() if when else time.time()
        talk = [int(s) for s in (seconds.split(",") if seconds else EXAMPLE_SECONDS)]
    except ValueError:
        fail(f"--seconds: whole numbers, comma-separated, got {seconds!r}")
        raise AssertionError from None
    except PbxPipeError as e:
        fail(str(e))
        raise AssertionError from None
    who = customer or (profile.pbx_id if settings.pbx_profile else settings.pbx_id)
    rater = Rater(tar, profile)
    q = rater.quote(number, epoch, who)
    out = typer.echo
    out(f"number      {number} -> {'+' + q.e164 if q.e164 else 'not a phone number'}"
        f"  (country code {profile.country_code}, national prefix {profile.national_prefix!r}, "
        f"international {profile.international_prefix!r})")
    listed = "listed" if who in tar.plans else "not listed: default plan"
    out(f"customer    {who} -> plan {q.plan} ({listed})")
    out(f"price list  version {tar.version}")
    out(f"at          {q.local.isoformat(timespec='seconds')} {q.local.strftime('%A')}"
        f"{', a holiday' if q.holiday else ''} ({tar.zone})")
    if q.e164 is None:
        raise typer.Exit(1)
    found = rater.prefixes(q.e164, q.plan)
    out(f"prefixes    {', '.join(found) or 'none'} in plan {q.plan}"
        + ("; the longest valid then wins" if found else ""))
    for row in q.considered:
        days = row.days_text or "every day"
        hours = row.hours_text or "all day"
        mark = "->" if row is q.rate else "  "
        out(f"  {mark} line {row.line}: {row.prefix} {row.destination} ({row.category}), band "
            f"{row.band}: {days}, {hours}"
            + ("" if row.applies(q.local, q.holiday) else "  (does not apply now)"))
    r = q.rate
    if r is None:
        out(f"outcome     {q.outcome}: "
            + ("no row of this plan matches the number" if q.outcome == "no_match"
               else "no band of the matched prefix covers this time"))
        raise typer.Exit(1)
    out(f"sell        {r.sell_per_min} {r.currency}/min, increments {r.increments}, connection "
        f"{r.connection_fee}, minimum {r.min_charge}, free {r.free_s} s, short-call fee "
        f"{r.short_call_fee}, rounding {r.rounding} to {r.decimals} decimals")
    out(f"buy         {r.buy_per_min} {r.currency}/min, increments {r.buy_increments}, connection "
        f"{r.buy_connection_fee}")
    out(f"{'talk s':>8} {'billed s':>9} {'cost':>10} {'buy':>10} {'margin':>10}")
    for s in talk:
        rating = rater.rate(number, epoch, who, answered=True, talk_s=float(s))
        out(f"{s:>8} {rating.billed_s:>9} {money_str(rating.cost):>10} "
            f"{money_str(rating.cost_buy):>10} {money_str(rating.margin):>10}")


@tariffs_app.command("load")
def load(tariff: TariffPath = None, clickhouse: Dsn = None, tariff_tz: Tz = None) -> None:
    """Load the price list into ClickHouse (table tariffs), for dashboards to join."""
    from enrich.rating import load_tariff
    from pbxpipe.pipeline import open_store
    from store.tariffs import publish

    settings = _settings(tariff_path=tariff, clickhouse_dsn=clickhouse, tariff_timezone=tariff_tz)
    try:
        tar = load_tariff(settings)
        n = publish(open_store(settings), tar)
    except PbxPipeError as e:
        fail(str(e))
        raise AssertionError from None
    typer.echo(f"version {tar.version}: {n} rows loaded" if n else f"version {tar.version} already loaded")


def rerate(
    since: Annotated[str, typer.Option(help="Calls that started from this time (ISO, in --tz unless it has an offset).")],
    until: Annotated[str, typer.Option(help="… until this time, exclusive.")],
    plan: Annotated[Optional[str], typer.Option(help="Only calls on this plan (before or after re-rating).")] = None,
    customer: Annotated[Optional[str], typer.Option(help="Only this customer's (PBX id) calls.")] = None,
    tz: Annotated[str, typer.Option(help="Time zone of --since/--until.")] = "UTC",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report the difference, write nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    tariff: TariffPath = None,
    pbx_profile: Profile = None,
    clickhouse: Dsn = None,
    tariff_tz: Tz = None,
) -> None:
    """Rate stored outbound calls again after a price-list change; writes a new version of each
    call whose cost changed (idempotent) and reports totals before and after."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from enrich.rating import load_tariff
    from enrich.tariffs import Rater
    from pbxpipe.pipeline import open_store
    from store.queries import money_str
    from store.tariffs import publish
    from store.tariffs import rerate as do_rerate

    settings = _settings(tariff_path=tariff, pbx_profile=pbx_profile, clickhouse_dsn=clickhouse,
                         tariff_timezone=tariff_tz)
    zone = parse_zone(tz)
    err = Console(stderr=True)
    try:
        profile = profile_of(settings)
        tar = load_tariff(settings)
        store = open_store(settings)
        if not dry_run:
            publish(store, tar)
        with Progress(TextColumn("[bold]re-rating"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=err, transient=False,
                      disable=not err.is_terminal) as progress:
            task = progress.add_task("calls", total=None)

            def step(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            report = do_rerate(store, Rater(tar, profile).rate_call, since=parse_time(since, zone, "--since"),
                               until=parse_time(until, zone, "--until"), plan=plan, pbx_id=customer,
                               tz=tz, progress=step, dry_run=dry_run)
    except PbxPipeError as e:
        fail(str(e))
        raise AssertionError from None
    data = report.as_dict() | {"tariff_version": tar.version, "dry_run": dry_run}
    if as_json:
        typer.echo(json.dumps(data, indent=1))
        return
    table = Table(title=f"re-rated {report.calls} calls with price list {tar.version}"
                        + (" (dry run: nothing written)" if dry_run else ""), title_justify="left")
    for col in ("currency", "cost before", "cost after", "difference", "margin before", "margin after"):
        table.add_column(col, justify="right")
    for cur in sorted(set(report.before) | set(report.after)):
        zero = Decimal(0)
        b, a = report.before.get(cur, zero), report.after.get(cur, zero)
        table.add_row(cur or "-", money_str(b), money_str(a), money_str(a - b),
                      money_str(report.margin_before.get(cur, zero)),
                      money_str(report.margin_after.get(cur, zero)))
    Console(width=None if sys.stdout.isatty() else 120).print(table)
    typer.echo(f"{report.changed} calls changed" + ("" if dry_run else " (written as new row versions)"))


def register(app: typer.Typer) -> None:
    app.add_typer(tariffs_app, name="tariffs")
    app.command("rerate")(rerate)
