"""The `pbxpipe` command's Typer app and what its commands share: the common flags, settings
from flags and environment, the PBX profile, one-line errors, times and time zones.

The command modules (pbxpipe/cmd_*.py) import from here; pbxpipe/cli.py adds their commands to
the app and runs it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer

from contracts.config import Settings, load_settings
from contracts.logs import configure_logging, register_secrets, secret_values
from contracts.profile import DEFAULT_PROFILE, PbxProfile, load_profile

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Call-data pipeline for hosted PBXs: Asterisk AMI -> call records -> ClickHouse.")

# Flags shared by several commands. Each maps to a Settings field and its PBXPIPE_* variable.
PbxId = Annotated[Optional[str], typer.Option(help="PBX id, prefix of every call id [PBXPIPE_PBX_ID].")]
Profile = Annotated[Optional[Path], typer.Option("--pbx-profile", help="PBX profile TOML: which channels are trunks and phones [PBXPIPE_PBX_PROFILE].")]
Dsn = Annotated[Optional[str], typer.Option("--clickhouse", help="ClickHouse DSN: chdb:///dir (embedded) or http://user:pass@host:8123/db [PBXPIPE_CLICKHOUSE_DSN].")]
LogFormat = Annotated[Optional[str], typer.Option(help="auto | json | console [PBXPIPE_LOG_FORMAT].")]


def command_settings(**flags: Any) -> Settings:
    """Settings from a command's flags over the environment; logging configured, secrets masked."""
    settings = load_settings({k: (str(v) if isinstance(v, Path) else v) for k, v in flags.items()})
    configure_logging(settings.log_format)
    register_secrets(secret_values(settings))  # masked in every log line from now on
    return settings


def profile_of(settings: Settings) -> PbxProfile:
    """The PBX profile the settings name, else the built-in default."""
    if settings.pbx_profile:
        return load_profile(settings.pbx_profile)
    return DEFAULT_PROFILE


def fail(message: str, code: int = 1) -> NoReturn:
    """End the command with a one-line error and exit status ``code``."""
    typer.echo(f"pbxpipe: error: {message}", err=True)
    raise typer.Exit(code)


def parse_zone(tz: str) -> ZoneInfo:
    """The --tz flag's time zone, or a one-line error."""
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        fail(f"--tz: unknown time zone {tz!r}")


def parse_time(value: str | None, tz: ZoneInfo, flag: str) -> datetime | None:
    """An ISO date or time flag, read in ``tz`` unless it has an offset; else a one-line error."""
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{flag}: not an ISO date or time: {value!r} (e.g. 2026-11-24 or 2026-11-24T08:00)")
    return t if t.tzinfo else t.replace(tzinfo=tz)


def iso_utc(t: float) -> str:
    """Epoch seconds as an ISO time in UTC, to the second."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")
