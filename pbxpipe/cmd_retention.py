"""Commands for recordings, retention, legal holds, export and erasure."""

from __future__ import annotations

import getpass
import json
import sys
import time
from enum import Enum
from typing import Annotated, Any

import msgspec
import typer

from contracts.config import Settings
from contracts.errors import PbxPipeError
from pbxpipe.app import (  # one flag grammar for every command
    command_settings,
    fail,
    iso_utc,
    parse_time,
    parse_zone,
)

Dsn = Annotated[str | None, typer.Option("--clickhouse", help="ClickHouse DSN [PBXPIPE_CLICKHOUSE_DSN].")]
Objects = Annotated[str | None, typer.Option("--object-store", help="dir:///<dir> or http(s)://host:port/<bucket> [PBXPIPE_OBJECT_STORE].")]

recordings_app = typer.Typer(no_args_is_help=True, help="Call recordings in object storage.")
retention_app = typer.Typer(no_args_is_help=True, help="Retention policies, expiry and legal holds.")


class ExportFormat(str, Enum):
    csv = "csv"
    parquet = "parquet"


class HoldKind(str, Enum):
    call = "call"
    number = "number"
    customer = "customer"


def _settings(**flags: Any) -> Settings:
    return command_settings(log_format="console", **flags)


def _open(settings: Settings) -> tuple[Any, Any]:
    from pbxpipe.pipeline import open_store
    from store.object_stores import open_object_store

    return open_store(settings), open_object_store(settings)


def _default(settings: Settings) -> Any:
    from retention.jobs import default_policy

    return default_policy(settings.retention_call_days, settings.retention_recording_days)


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=1, ensure_ascii=False, default=str))


@recordings_app.command("url")
def recordings_url(
    call_id: Annotated[str, typer.Argument(help="The call id (<pbx>:<linkedid>).")],
    ttl: Annotated[int | None, typer.Option(help="Seconds the link works [PBXPIPE_RECORDINGS_URL_TTL_S] (900).")] = None,
    clickhouse: Dsn = None,
    object_store: Objects = None,
) -> None:
    """Print a presigned link to each recording of a call, valid for a short time."""
    settings = _settings(clickhouse_dsn=clickhouse, object_store=object_store,
                         recordings_url_ttl_s=ttl)
    try:
        store, objects = _open(settings)
        rows = store.query("SELECT key FROM recordings FINAL WHERE call_id = {c:String} ORDER BY key",
                           {"c": call_id})
        if not rows:
            fail(f"no recording of call {call_id!r}")
        for r in rows:
            typer.echo(objects.presigned_url(r["key"], settings.recordings_url_ttl_s))
    except PbxPipeError as e:
        fail(str(e))


Spool = Annotated[str | None, typer.Option("--spool", help="The PBX's recording directory, mounted here [PBXPIPE_RECORDINGS_SPOOL].")]
Lookback = Annotated[float | None, typer.Option(help="Calls this recent [PBXPIPE_RECORDINGS_SYNC_LOOKBACK_DAYS] (7).")]
MaxFiles = Annotated[int | None, typer.Option(help="Uploads per pass at most [PBXPIPE_RECORDINGS_SYNC_MAX_FILES] (1000).")]


def _recordings_sync(settings: Settings) -> Any:
    from retention.sync import recordings_sync

    if not settings.recordings_spool:
        fail("no recording spool: set PBXPIPE_RECORDINGS_SPOOL (or --spool) to the PBX's "
              "recording directory as mounted here")
    store, objects = _open(settings)
    return recordings_sync(settings, store, objects)


@recordings_app.command("sync")
def recordings_sync_once(clickhouse: Dsn = None, object_store: Objects = None, spool: Spool = None,
                         lookback_days: Lookback = None, max_files: MaxFiles = None) -> None:
    """One pass: upload the recordings of stored calls that are not linked yet (idempotent)."""
    settings = _settings(clickhouse_dsn=clickhouse, object_store=object_store,
                         recordings_spool=spool, recordings_sync_lookback_days=lookback_days,
                         recordings_sync_max_files=max_files)
    try:
        result = _recordings_sync(settings).run_pass()
    except PbxPipeError as e:
        fail(str(e))
    typer.echo(f"{result.uploaded} uploaded, {result.pending} pending, {result.missing} missing, "
               f"{result.failed} failed ({result.calls} calls looked at)"
               + (", more ready: run again" if result.more else ""))
    if result.aborted:
        fail(result.aborted)


@recordings_app.command("watch")
def recordings_watch(
    clickhouse: Dsn = None, object_store: Objects = None, spool: Spool = None,
    lookback_days: Lookback = None, max_files: MaxFiles = None,
    interval: Annotated[float | None, typer.Option(help="Seconds between passes [PBXPIPE_RECORDINGS_SYNC_INTERVAL_S] (10).")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve /metrics, /healthz, /readyz here [PBXPIPE_METRICS_PORT].")] = None,
    log_format: Annotated[str | None, typer.Option(help="auto | json | console [PBXPIPE_LOG_FORMAT].")] = None,
) -> None:
    """The recordings service: a pass every few seconds until stopped (SIGTERM)."""
    import signal
    import threading

    from pbxpipe.ops import start_ops

    settings = command_settings(clickhouse_dsn=clickhouse, object_store=object_store,
                           recordings_spool=spool, recordings_sync_lookback_days=lookback_days,
                           recordings_sync_max_files=max_files, recordings_sync_interval_s=interval,
                           metrics_port=metrics_port, log_format=log_format)
    ops = start_ops(settings, "recordings")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        sync = _recordings_sync(settings)
    except PbxPipeError as e:
        fail(str(e))
    if ops:
        ops.readiness = sync.readiness
    sync.watch(stop)


@retention_app.command("set")
def retention_set(
    customer: Annotated[str, typer.Option(help="Customer (PBX id).")],
    call_days: Annotated[int, typer.Option(help="Days call records live.")],
    recording_days: Annotated[int | None, typer.Option(help="Days recordings live (<= call days).")] = None,
    clickhouse: Dsn = None,
) -> None:
    """Give a customer its own retention (takes effect with `retention apply`)."""
    from pbxpipe.pipeline import open_store
    from retention.jobs import set_policy
    from retention.policies import make_policy

    settings = _settings(clickhouse_dsn=clickhouse)
    try:
        policy = make_policy(customer, call_days, recording_days)
        set_policy(open_store(settings), policy, time.time())
    except PbxPipeError as e:
        fail(str(e))
    typer.echo(f"{customer}: calls {policy.call_days} days, recordings {policy.recording_days} days")


@retention_app.command("apply")
def retention_apply(clickhouse: Dsn = None, object_store: Objects = None) -> None:
    """Set the ClickHouse TTLs and the bucket lifecycle rules from the policies; sync holds."""
    from retention.jobs import apply

    settings = _settings(clickhouse_dsn=clickhouse, object_store=object_store)
    try:
        store, objects = _open(settings)
        out = apply(store, objects, _default(settings), time.time())
    except PbxPipeError as e:
        fail(str(e))
    for table, ttl in out["ttl"].items():
        typer.echo(f"{table}: TTL {ttl}")
    for rule in out["lifecycle"]:
        typer.echo(f"lifecycle {rule.rule_id}: {rule.prefix}* expires after {rule.days} days")
    typer.echo(f"held rows copied: {out['held_rows_synced']}")


@retention_app.command("status")
def retention_status(clickhouse: Dsn = None, object_store: Objects = None) -> None:
    """Each policy and what expires next (JSON); with Kafka configured, its topics' retention."""
    from retention.jobs import status

    settings = _settings(clickhouse_dsn=clickhouse, object_store=object_store)
    try:
        store, objects = _open(settings)
        out = status(store, objects, _default(settings), time.time())
    except PbxPipeError as e:
        fail(str(e))
    if settings.kafka_bootstrap:
        out["kafka_topics"] = _kafka_topics(settings)
    _echo_json(out)


def _kafka_topics(settings: Settings) -> dict[str, Any]:
    """The topics' retention (they hold phone numbers too), or why it is unknown."""
    import asyncio

    from kafkaio.client import topics_retention

    try:
        return asyncio.run(topics_retention(settings))
    except PbxPipeError as e:
        return {"error": str(e)}


@retention_app.command("hold")
def retention_hold(
    kind: Annotated[HoldKind, typer.Argument(help="call | number | customer")],
    value: Annotated[str, typer.Argument(help="The call id, number or customer id.")],
    reason: Annotated[str, typer.Option(help="Why (case reference).")] = "",
    clickhouse: Dsn = None,
    object_store: Objects = None,
) -> None:
    """Put a call, a number or a customer on legal hold: kept past expiry until released."""
    from retention.jobs import place_hold

    settings = _settings(clickhouse_dsn=clickhouse, object_store=object_store)
    try:
        store, objects = _open(settings)
        hold, copied = place_hold(store, objects, kind.value, value, reason, getpass.getuser(),
                                  time.time())
    except PbxPipeError as e:
        fail(str(e))
    typer.echo(f"hold {hold.hold_id}: {kind.value} {value} ({copied} rows kept aside)")


@retention_app.command("holds")
def retention_holds(
    json_: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
    clickhouse: Dsn = None,
) -> None:
    """List the legal holds in force: id, kind, value, since, who, reason."""
    from pbxpipe.pipeline import open_store
    from retention.jobs import active_holds

    settings = _settings(clickhouse_dsn=clickhouse)
    try:
        holds = active_holds(open_store(settings))
    except PbxPipeError as e:
        fail(str(e))
    if json_:
        _echo_json([{**msgspec.structs.asdict(h), "created_at": iso_utc(h.created_at)} for h in holds])
        return
    if not holds:
        typer.echo("no legal holds")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(holds)} legal holds")
    for col in ("hold", "kind", "value", "since (UTC)", "by", "reason"):
        table.add_column(col)
    for h in holds:
        table.add_row(h.hold_id, h.kind, h.value, iso_utc(h.created_at), h.created_by, h.reason)
    Console(width=None if sys.stdout.isatty() else 160).print(table)


@retention_app.command("release")
def retention_release(hold_id: str, clickhouse: Dsn = None, object_store: Objects = None) -> None:
    """Release a legal hold."""
    from retention.jobs import release_hold

    settings = _settings(clickhouse_dsn=clickhouse, object_store=object_store)
    try:
        store, objects = _open(settings)
        release_hold(store, objects, hold_id, time.time())
    except PbxPipeError as e:
        fail(str(e))
    typer.echo(f"hold {hold_id} released")


@retention_app.command("export-due")
def retention_export_due(
    to: Annotated[str, typer.Option("--to", help="Directory or s3://bucket/prefix.")],
    within_days: Annotated[int, typer.Option(help="Months whose calls start expiring within this many days.")] = 30,
    format: Annotated[ExportFormat, typer.Option("--format")] = ExportFormat.parquet,
    clickhouse: Dsn = None,
    object_store: Objects = None,
) -> None:
    """Export every month about to expire that has not been exported (idempotent, recorded)."""
    from retention.export import export_due

    settings = _settings(clickhouse_dsn=clickhouse, object_store=object_store)
    try:
        store, objects, dest = _export_target(settings, to)
        done = export_due(store, dest=dest, fmt=format.value, within_days=within_days,
                          default=_default(settings), now=time.time(), objects=objects,
                          signer=_signer(settings))
    except PbxPipeError as e:
        fail(str(e))
    for d in done:
        typer.echo(f"{d['customer']} {d['month']}: {d['rows']} rows -> {d['destination']}")
    typer.echo(f"{len(done)} months exported")


def _signer(settings: Settings) -> Any:
    """The key that signs export manifests, None when none is set."""
    from retention.signing import load_private_key

    return load_private_key(settings.export_signing_key) if settings.export_signing_key else None


def _export_target(settings: Settings, to: str) -> tuple[Any, Any, str]:
    from pbxpipe.pipeline import open_store

    store = open_store(settings)
    if not to.startswith("s3://"):
        return store, None, to
    objects, prefix = export_objects(settings, to)
    return store, objects, prefix


def export_objects(settings: Settings, to: str) -> tuple[Any, str]:
    """The bucket and key prefix of an ``s3://bucket/prefix`` export, on the S3 endpoint of
    PBXPIPE_OBJECT_STORE."""
    from contracts.errors import ConfigError
    from store.minio import MinioObjectStore

    bucket, _, prefix = to[len("s3://"):].partition("/")
    if not settings.object_store.startswith(("http://", "https://")):
        raise ConfigError("s3:// exports need an S3 endpoint: PBXPIPE_OBJECT_STORE=http(s)://host:port/<bucket>")
    base = settings.object_store.rsplit("/", 1)[0]
    objects = MinioObjectStore.from_url(f"{base}/{bucket}", access_key=settings.s3_access_key,
                                        secret_key=settings.s3_secret_key, region=settings.s3_region,
                                        sse=settings.s3_sse)
    return objects, prefix


def export(
    since: Annotated[str, typer.Option(help="From (ISO date/time, in --tz unless it has an offset).")],
    until: Annotated[str, typer.Option(help="Until, exclusive.")],
    to: Annotated[str, typer.Option("--to", help="Directory or s3://bucket/prefix.")],
    customer: Annotated[str | None, typer.Option(help="Only this customer (PBX id).")] = None,
    format: Annotated[ExportFormat, typer.Option("--format")] = ExportFormat.csv,
    tz: Annotated[str, typer.Option(help="Time zone of --since/--until and of the *_local columns.")] = "UTC",
    clickhouse: Dsn = None,
    object_store: Objects = None,
) -> None:
    """Export call records (streamed, constant memory) with a manifest of rows and checksums."""
    from rich.progress import Progress

    from retention.export import count_rows, export_calls

    settings = _settings(clickhouse_dsn=clickhouse, object_store=object_store)
    zone = parse_zone(tz)
    start, end = parse_time(since, zone, "--since"), parse_time(until, zone, "--until")
    assert start is not None and end is not None
    try:
        store, objects, dest = _export_target(settings, to)
        total = count_rows(store, start, end, customer, tz)
        with Progress(transient=True) as bar:
            task = bar.add_task("exporting", total=total)
            manifest = export_calls(store, since=start, until=end, customer=customer,
                                    fmt=format.value, dest=dest, tz=tz, objects=objects,
                                    progress=lambda n: bar.advance(task, n),
                                    signer=_signer(settings))
    except PbxPipeError as e:
        fail(str(e))
    f = manifest["files"][0]
    typer.echo(f"exported {manifest['rows']} rows to {to}: {f['name']} sha256 {f['sha256']}"
               + (f", manifest signed by key {manifest['signed_by']}" if manifest["signed_by"]
                  else ", manifest not signed (PBXPIPE_EXPORT_SIGNING_KEY)"))


def erase(
    number: Annotated[str, typer.Option(help="The phone number or extension to erase.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, change nothing (audited).")] = False,
    actor: Annotated[str | None, typer.Option(help="Who asks (audit); default the OS user.")] = None,
    clickhouse: Dsn = None,
    object_store: Objects = None,
) -> None:
    """Remove every call record and recording involving a number; holds win and are reported."""
    from retention.jobs import erase_number

    settings = _settings(clickhouse_dsn=clickhouse, object_store=object_store)
    try:
        store, objects = _open(settings)
        out = erase_number(store, objects, number, actor=actor or getpass.getuser(),
                           now=time.time(), dry_run=dry_run)
    except PbxPipeError as e:
        fail(str(e))
    verb = "would erase" if dry_run else "erased"
    typer.echo(f"{verb} {out['calls']} calls, {out['legs']} legs, {out['recordings']} recordings, "
               f"{out['quarantined']} quarantined frames")
    for call_id, holds in sorted(out["held"].items()):
        typer.echo(f"kept (legal hold {', '.join(holds)}): {call_id}")


def register(app: typer.Typer) -> None:
    app.add_typer(recordings_app, name="recordings")
    app.add_typer(retention_app, name="retention")
    app.command("export")(export)
    app.command("erase")(erase)
