"""`pbxpipe ingest | enrich | store`: the stages as separate processes joined by Kafka.

Every setting of a stage is a flag named after its Settings field (``--kafka-bootstrap``) and
the environment variable ``PBXPIPE_<FIELD>``; the flags are generated from contracts.config, so
the two never drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
import typing
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import msgspec
import structlog
import typer

from contracts.config import Settings, env_name, load_settings, redacted
from contracts.errors import AmiAuthError, PbxPipeError
from contracts.logs import configure_logging
from contracts.profile import PbxProfile
from pbxpipe.app import fail, iso_utc, profile_of

log = structlog.get_logger("pbxpipe.kafka")

KAFKA_FIELDS = tuple(f for f in Settings.__struct_fields__ if f.startswith("kafka_"))
COMMON = ("log_format", "metrics_port")
INGEST_FIELDS = ("pbx_id", "ami_host", "ami_port", "ami_user", "ami_secret", "ami_max_retries",
                 "max_frame_bytes", "queue_size", *KAFKA_FIELDS, *COMMON)
ENRICH_FIELDS = ("pbx_profile", "call_grace_s", "call_timeout_s", *KAFKA_FIELDS, *COMMON)
STORE_FIELDS = ("clickhouse_dsn", "batch_rows", "batch_age_s", *KAFKA_FIELDS, *COMMON)
DEAD_LETTER_FIELDS = (*KAFKA_FIELDS, "log_format")

IdleExit = Annotated[Optional[float], typer.Option(
    help="Exit once caught up and idle for this many seconds (tests, one-off backfills).")]


def _settings_flags(fields: tuple[str, ...]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command one flag per Settings field; it receives them as ``overrides``."""

    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        resolved = typing.get_type_hints(fn, include_extras=True)
        own = [p.replace(annotation=resolved[p.name])
               for p in inspect.signature(fn).parameters.values() if p.name != "overrides"]
        hints = Settings.__annotations__
        params = list(own)
        for field in fields:
            flag = "--" + field.replace("_", "-")
            typ = eval(hints[field]) if isinstance(hints[field], str) else hints[field]  # noqa: S307
            decl = f"{flag}/--no-{flag[2:]}" if typ is bool else flag
            params.append(inspect.Parameter(
                field, inspect.Parameter.KEYWORD_ONLY, default=None,
                annotation=Annotated[Optional[typ], typer.Option(decl, help=f"[{env_name(field)}]")],  # type: ignore[valid-type]
            ))

        def command(**kwargs: Any) -> None:
            overrides = {f: kwargs.pop(f) for f in fields}
            fn(overrides=overrides, **kwargs)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__doc__ = fn.__doc__
        command.__name__ = fn.__name__
        return command

    return wrap


def _settings(overrides: dict[str, Any], component: str) -> Settings:
    """Settings of one stage; serves its /metrics, /healthz and /readyz when metrics_port is set."""
    from pbxpipe.ops import always_ready, ami_ready, start_ops, store_ready

    settings = load_settings(overrides)
    configure_logging(settings.log_format)
    readiness = {"ingest": ami_ready(settings.pbx_id), "store": store_ready()}.get(
        component, always_ready)
    start_ops(settings, component, readiness)
    return settings


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def _run(stage: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run one stage until it is done or SIGTERM/SIGINT sets its stop event; errors as exit codes."""

    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        await stage(stop)

    try:
        asyncio.run(main())
    except AmiAuthError as e:
        fail(str(e), 2)
    except PbxPipeError as e:
        fail(str(e))


async def ingest_main(settings: Settings, captures: list[Path] | None = None,
                      idle_exit: float | None = None, stop: asyncio.Event | None = None) -> None:
    from ingest.stage import IngestStage

    stage = IngestStage(settings)
    stop = stop or asyncio.Event()
    try:
        await stage.start()  # inside: a failed start still closes the clients
        if captures:
            n = await stage.run_capture(captures)
            log.info("capture_ingested", frames=n, sent=stage.sent, spooled_bytes=stage.spool.bytes,
                     busy_s=round(stage.busy_s, 3))
        else:
            await stage.run_ami(stop, idle_exit)
    finally:
        await stage.close()


async def enrich_main(settings: Settings, profile: PbxProfile, idle_exit: float | None = None,
                      stop: asyncio.Event | None = None) -> None:
    from enrich.stage import EnrichStage

    stage = EnrichStage(settings, profile, rate=_rate(settings, profile))
    stop = stop or asyncio.Event()
    try:
        await stage.start()  # inside: a failed start still closes the clients
        await stage.run(stop, idle_exit)
    finally:
        await stage.close()


def _rate(settings: Settings, profile: PbxProfile) -> Callable[[Any], Any] | None:
    """The tariff's pure rating function for the call builders (None with tariffs off)."""
    from enrich.rating import rating_stage

    stage = rating_stage(settings, profile)
    return stage.rate if stage is not None else None


def _spend_watch(settings: Settings, store: Any) -> Callable[[str, Any], None] | None:
    """Unusual-traffic alerts over the call rows once they are stored (None with tariffs off)."""
    from pbxpipe.pipeline import load_rating
    from store.schema import TARIFF_ALERTS, batch_token

    stage = load_rating(settings, profile_of(settings), store)
    if stage is None:
        return None
    import pyarrow.acero  # noqa: F401  observe_table's group_by runs on it: loaded now, not in the first flush

    def observe(table: str, rows: Any) -> None:  # an Arrow table of the stored rows
        if table != "calls":
            return
        alerts = stage.observe_table(rows)
        if alerts:
            store.write_structs(TARIFF_ALERTS, alerts, batch_token("tariff_alerts", alerts))

    return observe


def open_kafka_store(settings: Settings) -> Any:
    """ClickHouse for the store stage: few quick retries, the stage backs off on its own."""
    from store.clickhouse import ClickHouseStore, RetryPolicy

    store = ClickHouseStore.connect(settings.clickhouse_dsn,
                                    retry=RetryPolicy(attempts=2, initial_s=0.2, max_s=1.0))
    store.migrate()
    return store


async def store_main(settings: Settings, store: Any = None, idle_exit: float | None = None,
                     stop: asyncio.Event | None = None) -> None:
    from store.stage import StoreStage

    store = store if store is not None else open_kafka_store(settings)
    stage = StoreStage(settings, store, on_written=_spend_watch(settings, store))
    stop = stop or asyncio.Event()
    try:
        await stage.start()  # inside: a failed start still closes the clients
        await stage.run(stop, idle_exit)
    finally:
        await stage.close()


async def run_via_kafka(settings: Settings, profile: PbxProfile, store: Any,
                        idle_exit: float | None = None) -> None:
    """`pbxpipe run` with Kafka configured: the three stages in one process, through Kafka.

    With ``idle_exit``, ingest ends after that long without frames; enrich and store end once
    they have stayed caught up, with nothing open or pending, for as long.
    """
    from enrich.stage import EnrichStage
    from ingest.stage import IngestStage
    from store.stage import StoreStage

    stop = asyncio.Event()
    _stop_on_signals(stop)
    ingest = IngestStage(settings)
    enrich = EnrichStage(settings, profile, rate=_rate(settings, profile))
    sink = StoreStage(settings, store)
    tasks: list[asyncio.Task[None]] = []
    try:
        await ingest.start()  # creates the topics
        # both starts end (started or failed) before anything is closed: a close racing a start
        # in progress would leave its clients half made
        for result in await asyncio.gather(enrich.start(), sink.start(), return_exceptions=True):
            if isinstance(result, BaseException):
                raise result
        tasks += [asyncio.create_task(ingest.run_ami(stop, idle_exit), name="ingest"),
                  asyncio.create_task(enrich.run(stop), name="enrich"),
                  asyncio.create_task(sink.run(stop), name="store")]
        quiet_since: float | None = None
        while True:
            done, _ = await asyncio.wait(tasks, timeout=0.1, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()  # a failure of any stage ends the run
            if stop.is_set():
                break
            if idle_exit is None or not tasks[0].done():
                continue
            now = asyncio.get_running_loop().time()
            if not (ingest.idle and enrich.idle and sink.idle):
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= idle_exit:
                break
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ingest.close()
        await enrich.close()
        await sink.close()


def register(app: typer.Typer) -> None:
    @app.command()
    @_settings_flags(INGEST_FIELDS)
    def ingest(
        overrides: dict[str, Any],
        capture: Annotated[Optional[list[Path]], typer.Option(help="Raw AMI capture(s) to send instead of a live AMI.", exists=True, dir_okay=False)] = None,
        idle_exit: IdleExit = None,
    ) -> None:
        """One PBX's AMI (or a capture) -> the raw-events topic; a local spool while Kafka is down."""
        settings = _settings(overrides, "ingest")
        log.info("ingest_started", **redacted(settings))
        _run(lambda stop: ingest_main(settings, capture, idle_exit, stop))

    @app.command()
    @_settings_flags(ENRICH_FIELDS)
    def enrich(overrides: dict[str, Any], idle_exit: IdleExit = None) -> None:
        """Raw-events topic -> call records and legs on the records topic (a consumer group)."""
        settings = _settings(overrides, "enrich")
        _run(lambda stop: enrich_main(settings, profile_of(settings), idle_exit, stop))

    @app.command()
    @_settings_flags(STORE_FIELDS)
    def store(overrides: dict[str, Any], idle_exit: IdleExit = None) -> None:
        """Records topic -> ClickHouse in batches, committing after each insert (a consumer group)."""
        settings = _settings(overrides, "store")
        _run(lambda stop: store_main(settings, None, idle_exit, stop))

    letters = typer.Typer(help="The dead-letter topic: what the stages could not read; sending it "
                               "back once the cause is fixed.", no_args_is_help=True)
    app.add_typer(letters, name="dead-letters")

    @letters.command("list")
    @_settings_flags(DEAD_LETTER_FIELDS)
    def dead_letters_list(
        overrides: dict[str, Any],
        json_: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
        limit: Annotated[int, typer.Option(help="The newest this many (0: all).")] = 100,
    ) -> None:
        """The dead letters: where each came from, which stage refused it and why."""
        from kafkaio.dead_letters import dead_letters

        settings = load_settings(overrides)
        configure_logging(settings.log_format)
        try:
            found = [d for _, d in asyncio.run(dead_letters(settings))]
        except PbxPipeError as e:
            fail(str(e))
        found.sort(key=lambda d: d.timestamp)
        shown = found[-limit:] if limit > 0 else found
        if json_:
            for d in shown:
                typer.echo(msgspec.json.encode(d).decode())
            return
        if not found:
            typer.echo(f"no dead letters in {settings.kafka_dead_letter_topic}")
            return
        import sys

        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{len(shown)} of {len(found)} dead letters in "
                            f"{settings.kafka_dead_letter_topic}, oldest first")
        for col in ("at (UTC)", "stage", "reason", "detail", "from", "kind", "key", "bytes"):
            table.add_column(col)
        for d in shown:
            table.add_row(iso_utc(d.timestamp), d.stage, d.reason, d.detail,
                          f"{d.origin_topic}/{d.origin_partition}@{d.origin_offset}", d.kind, d.key,
                          str(d.value_bytes))
        Console(width=None if sys.stdout.isatty() else 200).print(table)

    @letters.command("replay")
    @_settings_flags(DEAD_LETTER_FIELDS)
    def dead_letters_replay(
        overrides: dict[str, Any],
        stage: Annotated[Optional[str], typer.Option(help="Only those this stage refused.")] = None,
        reason: Annotated[Optional[str], typer.Option(help="Only those of this reason.")] = None,
        dry_run: Annotated[bool, typer.Option(help="Say what would be sent; send nothing.")] = False,
    ) -> None:
        """Send dead letters back to the topic they came from, for the stage to read again.

        Records-topic ones only: the store collapses a row sent twice; enrich skips old frames."""
        import json

        from kafkaio.dead_letters import replay

        settings = load_settings(overrides)
        configure_logging(settings.log_format)
        try:
            result = asyncio.run(replay(settings, stage=stage, reason=reason, dry_run=dry_run))
        except PbxPipeError as e:
            fail(str(e))
        typer.echo(json.dumps(result, indent=1))
