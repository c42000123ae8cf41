"""Commands that prove the history against Asterisk's own records: ``reconcile`` (the stored calls
against the PBX's CDR and CEL) and ``rederive`` (today's enrich rules re-run over raw events)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import msgspec
import typer

from contracts.config import Settings
from contracts.errors import InputError, PbxPipeError
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

CdrFiles = Annotated[Optional[list[Path]], typer.Option("--cdr", help="A CDR file: cdr_csv's Master.csv, or a cdr_custom file (csv, json). Repeat for several.")]
CelFiles = Annotated[Optional[list[Path]], typer.Option("--cel", help="A CEL file of cel_custom: the number dialled, exact answer times, pickups. Repeat for several.")]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _period(settings: Settings, since: str | None, until: str | None, last_days: float | None,
            tz: str) -> tuple[float | None, float | None]:
    """The period flags as epoch seconds: --since/--until in --tz, or --last-days (ending an
    hour ago: calls that ended since may not be stored yet)."""
    if last_days is not None:
        if since or until:
            fail("--last-days or --since/--until, not both")
        end = time.time() - 3600
        return end - last_days * 86400, end
    zone = parse_zone(tz)
    a, b = parse_time(since, zone, "--since"), parse_time(until, zone, "--until")
    return (a.timestamp() if a else None), (b.timestamp() if b else None)


def _cdr_sources(settings: Settings, cdr: list[Path], cel: list[Path], capture: list[Path],
                 from_kafka: bool) -> tuple[list[Any], list[Any], list[Any], str]:
    """Asterisk's rows and events from the sources named, what could not be read, and a line
    saying what was read."""
    from reconcile.readers import ami_cdr_rows, read_cdr, read_cel
    from reconcile.sources import capture_frames, topic_frames

    zone = parse_zone(settings.pbx_timezone)
    rows: list[Any] = []
    events: list[Any] = []
    rejected: list[Any] = []
    said = []
    for path in cdr:
        got, bad = read_cdr(path, zone, settings.reconcile_cdr_fields)
        rows += got
        rejected += bad
        said.append(f"cdr {path}")
    for path in capture:
        got, bad = ami_cdr_rows(((f.where, f.env, f.linkedid) for f in
                                 capture_frames(path, settings.pbx_id, rejected)), zone)
        rows += got
        rejected += bad
        said.append(f"capture {path}")
    if from_kafka:
        if not settings.kafka_bootstrap:
            raise InputError("--from-kafka needs PBXPIPE_KAFKA_BOOTSTRAP")

        async def collect() -> list[Any]:
            return [(f.where, f.env, f.linkedid)
                    async for f in topic_frames(settings, settings.pbx_id, rejected)
                    if f.env.name == "Cdr"]

        got, bad = ami_cdr_rows(asyncio.run(collect()), zone)
        rows += got
        rejected += bad
        said.append(f"kafka {settings.kafka_raw_topic}")
    for path in cel:
        got_cel, bad = read_cel(path, zone, settings.reconcile_cel_fields)
        events += got_cel
        rejected += bad
        said.append(f"cel {path}")
    if not rows and not rejected:
        raise InputError("no CDR rows read: name --cdr files, --capture files or --from-kafka")
    return _unique(rows), events, rejected, "; ".join(said)


def _unique(rows: list[Any]) -> list[Any]:
    """One of each row: the same row read from two sources (a rotated file read twice, a file
    and the topic) counts once."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for r in rows:
        key = (r.linkedid, r.uniqueid, r.channel, r.dstchannel, round(r.start), r.sequence,
               r.disposition)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _print_report(report: Any) -> None:
    echo = typer.echo
    echo(f"{report.pbx_id}: calls that started {_iso(report.since)} .. {_iso(report.until)}: "
         f"{report.asterisk_calls} in the PBX's records, {report.stored_calls} stored")
    echo(f"completeness {report.completeness:.2%}: {report.exact} exact"
         + (f" ({report.from_cdr} rebuilt from CDR)" if report.from_cdr else "")
         + f", {len(report.missing)} missing, {len(report.phantoms)} phantoms, "
         f"{len(report.differing)} differing, {len(report.duplicates)} stored twice")
    for f in report.missing:
        echo(f"missing  {f.call_id}  started {_iso(f.start)}")
    for f in report.phantoms:
        echo(f"phantom  {f.call_id}  started {_iso(f.start)}  (not in the PBX's records)")
    for f in report.differing:
        what = "; ".join(f"{d.field}: stored {d.stored!r}, PBX {d.asterisk!r}" for d in f.differences)
        echo(f"differs  {f.call_id}  {what}")
    for call_id in report.duplicates:
        echo(f"twice    {call_id}")
    for call_id in report.rebuilt:
        echo(f"rebuilt  {call_id}  (written from the CDR)")
    if report.rejected:
        echo(f"{len(report.rejected)} rows could not be read:")
        for r in report.rejected[:20]:
            echo(f"  {r.where}: {r.reason}")
    if report.not_calls:
        echo(f"{len(report.not_calls)} linkedids with no trunk or phone channel (not calls of "
             "the PBX): " + ", ".join(report.not_calls[:10]))


def reconcile(
    pbx_id: PbxId = None,
    pbx_profile: Profile = None,
    cdr: CdrFiles = None,
    cel: CelFiles = None,
    capture: Annotated[Optional[list[Path]], typer.Option(help="A raw AMI capture: its Cdr events are the CDR. Repeat for several.")] = None,
    from_kafka: Annotated[bool, typer.Option("--from-kafka", help="The Cdr events in the raw topic (while it retains them) are the CDR.")] = False,
    since: Annotated[Optional[str], typer.Option(help="Calls that started from (ISO, in --tz); default: the first row's start.")] = None,
    until: Annotated[Optional[str], typer.Option(help="...until (exclusive); default: just after the last row's start.")] = None,
    last_days: Annotated[Optional[float], typer.Option(help="The calls of the N days before the last hour (for a schedule).")] = None,
    tz: Annotated[str, typer.Option(help="Time zone of --since/--until.")] = "UTC",
    cdr_fields: Annotated[Optional[str], typer.Option(help="cdr_custom's `fields =` line of the --cdr files [PBXPIPE_RECONCILE_CDR_FIELDS]; empty: cdr_csv.")] = None,
    cel_fields: Annotated[Optional[str], typer.Option(help="cel_custom's `fields =` line of the --cel files [PBXPIPE_RECONCILE_CEL_FIELDS].")] = None,
    tolerance_s: Annotated[Optional[float], typer.Option(help="Seconds a stored time may differ [PBXPIPE_RECONCILE_TOLERANCE_S] (1).")] = None,
    min_completeness: Annotated[Optional[float], typer.Option(help="Alert and --check threshold [PBXPIPE_RECONCILE_MIN_COMPLETENESS] (0.999).")] = None,
    write_missing: Annotated[bool, typer.Option("--write-missing", help="Write the missing calls from the CDR rows (built_from=cdr).")] = False,
    check: Annotated[bool, typer.Option("--check", help="Exit 1 below the threshold, or on phantoms, differences or calls stored twice.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="The report as JSON.")] = False,
    clickhouse: Dsn = None,
    log_format: LogFormat = None,
) -> None:
    """Compare the PBX's stored calls with Asterisk's own records (CDR, and CEL where given):
    calls missing, phantoms, differences; the completeness figure goes to Prometheus.

    Example: ``pbxpipe reconcile --pbx-id acme --cdr /var/log/asterisk/cdr-csv/Master.csv
    --cel /var/log/asterisk/cel-custom/Master.csv --last-days 1``.
    """
    from pbxpipe.ops import write_job_metrics
    from pbxpipe.pipeline import load_rating, open_store
    from reconcile.jobs import reconcile as do_reconcile

    settings = command_settings(
        pbx_id=pbx_id, pbx_profile=pbx_profile, clickhouse_dsn=clickhouse, log_format=log_format,
        reconcile_cdr_fields=cdr_fields, reconcile_cel_fields=cel_fields,
        reconcile_tolerance_s=tolerance_s, reconcile_min_completeness=min_completeness)
    start, end = _period(settings, since, until, last_days, tz)
    try:
        profile = profile_of(settings)
        rows, events, rejected, source = _cdr_sources(settings, cdr or [], cel or [],
                                                      capture or [], from_kafka)
        store = open_store(settings)
        rating = load_rating(settings, profile, store) if write_missing else None
        report = do_reconcile(
            store, pbx_id=settings.pbx_id, profile=profile, rows=rows, cel=events,
            rejected=rejected, since=start, until=end, tolerance_s=settings.reconcile_tolerance_s,
            threshold=settings.reconcile_min_completeness,
            recording_patterns=settings.recordings_userfield_patterns.split(),
            write_missing=write_missing, rate=rating.rate if rating else None, source=source)
    except PbxPipeError as e:
        fail(str(e))
    write_job_metrics()
    if json_:
        typer.echo(json.dumps(msgspec.to_builtins(report), indent=1, ensure_ascii=False))
    else:
        _print_report(report)
    if check and (report.completeness < settings.reconcile_min_completeness or report.phantoms
                  or report.differing or report.duplicates):
        fail(f"{report.pbx_id}: completeness {report.completeness:.2%} (threshold "
             f"{settings.reconcile_min_completeness:.2%}), {len(report.phantoms)} phantoms, "
             f"{len(report.differing)} differing, {len(report.duplicates)} stored twice")


def _sync(agen: AsyncIterator[Any]) -> Iterator[Any]:
    """An async iterator read from synchronous code, on an event loop of its own."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(agen.aclose())  # type: ignore[attr-defined]
        loop.close()


def _raw_frames(settings: Settings, capture: list[Path], from_kafka: bool,
                rejected: list[Any]) -> Iterator[Any]:
    """The PBX's raw frames: capture files, or the raw topic."""
    from reconcile.sources import capture_frames, topic_frames

    if capture and from_kafka:
        raise InputError("--capture or --from-kafka, not both")
    if capture:
        for path in capture:
            yield from capture_frames(path, settings.pbx_id, rejected)
    elif from_kafka:
        if not settings.kafka_bootstrap:
            raise InputError("--from-kafka needs PBXPIPE_KAFKA_BOOTSTRAP")
        yield from _sync(topic_frames(settings, settings.pbx_id, rejected))
    else:
        raise InputError("name the raw events: --capture files or --from-kafka")


def _print_rederive(report: Any, rejected: list[Any]) -> None:
    echo = typer.echo
    span = "" if report.since is None and report.until is None else (
        f" that started {_iso(report.since) if report.since is not None else 'before'} .. "
        f"{_iso(report.until) if report.until is not None else 'the end'}")
    echo(f"{report.pbx_id}: {report.calls} calls{span or ' of the source'} derived again "
         f"(run {report.run_id})")
    echo(f"{report.unchanged} unchanged, {report.changed} changed, {report.new} not stored, "
         f"{report.gone} stored but not in the events, {report.partial} partial in the source "
         "(not compared)")
    if report.changed:
        groups = ", ".join(f"{g} {report.groups.get(g, 0)}" for g in
                           ("status", "direction", "parties", "times", "cost"))
        echo(f"calls changing: {groups}, legs {report.legs}")
        echo("by field: " + ", ".join(f"{f} {n}" for f, n in sorted(report.fields.items())))
        for c in report.examples:
            echo(f"  {c.call_id}  {c.field}: {c.before!r} -> {c.after!r}")
    if report.gone_first:
        echo("not in the events: " + ", ".join(report.gone_first))
    for r in rejected[:20]:
        echo(f"could not read {r.where}: {r.reason}")
    if report.applied:
        echo(f"applied: {report.written} calls written as new versions")
    elif report.changed or report.new:
        echo("nothing written: --apply writes them as new versions")


def rederive(
    pbx_id: PbxId = None,
    pbx_profile: Profile = None,
    capture: Annotated[Optional[list[Path]], typer.Option(help="Raw AMI captures of the PBX (bytes as received). Repeat for several.")] = None,
    from_kafka: Annotated[bool, typer.Option("--from-kafka", help="The raw topic, as far back as it retains events.")] = False,
    since: Annotated[Optional[str], typer.Option(help="Calls that started from (ISO, in --tz); default: all in the source.")] = None,
    until: Annotated[Optional[str], typer.Option(help="...until (exclusive).")] = None,
    tz: Annotated[str, typer.Option(help="Time zone of --since/--until.")] = "UTC",
    apply: Annotated[bool, typer.Option("--apply", help="Write the calls that differ as new versions (idempotent).")] = False,
    json_: Annotated[bool, typer.Option("--json", help="The report as JSON.")] = False,
    clickhouse: Dsn = None,
    log_format: LogFormat = None,
) -> None:
    """Run today's enrich rules over the PBX's raw events again, into a shadow table; print what
    would change per field (status, direction, parties, times, cost, legs); --apply writes it.

    The way to recover after an enrich bug: fix enrich, run this for the period it touched, read
    the diff, run it again with --apply.
    """
    from enrich.partition import fold_to_end
    from pbxpipe.pipeline import load_rating, new_builder, open_store
    from reconcile.rederive import Partial, compare_shadow, derive_into_shadow, run_id_of

    settings = command_settings(pbx_id=pbx_id, pbx_profile=pbx_profile, clickhouse_dsn=clickhouse,
                                log_format=log_format)
    start, end = _period(settings, since, until, None, tz)
    rejected: list[Any] = []
    try:
        profile = profile_of(settings)
        store = open_store(settings)
        rating = load_rating(settings, profile, store)
        partial = Partial()

        def frames() -> Iterator[tuple[int, int, str, Any]]:
            for f in _raw_frames(settings, capture or [], from_kafka, rejected):
                partial.see(f.env)
                yield f.partition, f.offset, f.linkedid, f.env

        now = time.time()
        run_id = run_id_of(settings.pbx_id, start, end, now)
        outputs = fold_to_end(frames(), lambda _pbx: new_builder(settings, profile, rating))
        derive_into_shadow(store, outputs, partial, run_id=run_id, run_at=now,
                           pbx_id=settings.pbx_id, since=start, until=end)
        report = compare_shadow(store, run_id=run_id, pbx_id=settings.pbx_id, since=start,
                                until=end, partial=len(partial.calls), apply=apply)
    except PbxPipeError as e:
        fail(str(e))
    if json_:
        typer.echo(json.dumps({**msgspec.to_builtins(report), "rejected": msgspec.to_builtins(rejected)},
                              indent=1, ensure_ascii=False, default=str))
    else:
        _print_rederive(report, rejected)


def register(app: typer.Typer) -> None:
    app.command("reconcile")(reconcile)
    app.command("rederive")(rederive)
