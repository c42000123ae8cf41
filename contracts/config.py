"""Settings, in one place: each field is read from ``PBXPIPE_<FIELD>`` and matches a CLI flag."""

from __future__ import annotations

import os
from typing import Any

import msgspec

from contracts.errors import ConfigError

ENV_PREFIX = "PBXPIPE_"
SECRET_FIELDS = frozenset({"ami_secret", "clickhouse_dsn"})


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    pbx_id: str = "pbx1"
    pbx_profile: str = ""  # TOML file; empty = the built-in PJSIP profile
    ami_host: str = "127.0.0.1"
    ami_port: int = 5038
    ami_user: str = "pbxpipe"
    ami_secret: str = ""
    ami_ping_interval_s: float = 10.0
    ami_ping_timeout_s: float = 5.0
    ami_reconnect_max_s: float = 30.0
    ami_max_retries: int = -1  # -1: retry forever; 0: exit non-zero on the first failure
    max_frame_bytes: int = 1 << 20
    clickhouse_dsn: str = "chdb:///./data/clickhouse"
    batch_rows: int = 10_000
    batch_age_s: float = 1.0
    queue_size: int = 10_000
    call_grace_s: float = 2.0  # after the last Hangup, wait this long for late events (Cdr…)
    call_timeout_s: float = 4 * 3600.0  # close a call whose Hangup never comes, flagged incomplete
    log_format: str = "auto"  # auto | json | console
    metrics_port: int = 0  # 0: no HTTP endpoint


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load_settings(overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Defaults, then ``PBXPIPE_*`` environment variables, then explicit overrides (CLI flags)."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    for field in Settings.__struct_fields__:
        if env_name(field) in env:
            raw[field] = env[env_name(field)]
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as e:
        raise ConfigError(f"invalid setting: {e} (environment variables {ENV_PREFIX}*)") from None


def redacted(settings: Settings) -> dict[str, Any]:
    """Settings safe to log: secrets and DSN passwords masked."""
    out = msgspec.structs.asdict(settings)
    for f in SECRET_FIELDS:
        if f == "clickhouse_dsn":
            out[f] = redact_dsn(out[f])
        elif out[f]:
            out[f] = "***"
    return out


def redact_dsn(dsn: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
