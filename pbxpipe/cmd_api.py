"""The panel API and who may use it: ``pbxpipe api``, ``api-keys``, ``groups``, ``tenants``."""

from __future__ import annotations

import getpass
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from contracts.errors import PbxPipeError
from pbxpipe.app import Dsn, command_settings, fail, iso_utc

keys_app = typer.Typer(no_args_is_help=True, help="API keys for the panel API (shown once, stored as a hash).")
groups_app = typer.Typer(no_args_is_help=True, help="Named groups of extensions and queues that supervisors see.")
tenants_app = typer.Typer(no_args_is_help=True, help="Tenants' own settings: name and time zone.")


def api(
    host: Annotated[str | None, typer.Option(help="Address to listen on [PBXPIPE_API_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [PBXPIPE_API_PORT].")] = None,
    clickhouse: Dsn = None,
    openapi: Annotated[Path | None, typer.Option(help="Write the OpenAPI document to this file and exit.")] = None,
) -> None:
    """Serve the panel API and the reference panel page (http://HOST:PORT/)."""
    if openapi is not None:
        from api.app import openapi_schema

        openapi.write_text(json.dumps(openapi_schema(), indent=1, sort_keys=True) + "\n")
        return
    import asyncio

    from api.server import build_runtime, serve

    from pbxpipe.ops import start_ops, store_ready

    settings = command_settings(api_host=host, api_port=port, clickhouse_dsn=clickhouse)
    try:
        ops = start_ops(settings, "api")  # /metrics, /healthz, /readyz on PBXPIPE_METRICS_PORT
        runtime = build_runtime(settings)
        if ops:
            ops.readiness = store_ready()
        asyncio.run(serve(settings, runtime))
    except PbxPipeError as e:
        fail(str(e))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _keys(clickhouse: str | None) -> Any:
    from api.keys import KeyStore
    from pbxpipe.pipeline import open_store

    settings = command_settings(clickhouse_dsn=clickhouse, log_format="console")
    return KeyStore(open_store(settings))


_DURATION = re.compile(r"^(\d{1,5})([dh])$")


def _expiry(value: str | None) -> float | None:
    """``--expires``: a date or time (ISO 8601, UTC unless it has an offset), or ``90d`` / ``12h``."""
    if value is None:
        return None
    m = _DURATION.match(value)
    if m:
        return time.time() + int(m.group(1)) * (86400 if m.group(2) == "d" else 3600)
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        fail(f"--expires: not a date, a time or a duration such as 90d or 12h: {value!r}")
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


@keys_app.command("create")
def keys_create(
    pbx: Annotated[str, typer.Option("--pbx", help="The tenant (PBX id) the key reads.")],
    role: Annotated[str, typer.Option(help="admin | supervisor | user | billing")],
    extensions: Annotated[str | None, typer.Option(help="A user's own extensions, comma-separated.")] = None,
    group: Annotated[str | None, typer.Option(help="A supervisor's group (pbxpipe groups set).")] = None,
    name: Annotated[str | None, typer.Option(help="What the key is for (shown in lists).")] = None,
    expires: Annotated[str | None, typer.Option(help="When it stops working: a date or time, or 90d, 12h.")] = None,
    clickhouse: Dsn = None,
) -> None:
    """Create a key and print it once: only its hash is kept."""
    exts = [e.strip() for e in (extensions or "").split(",") if e.strip()]
    try:
        row, key = _keys(clickhouse).create_key(
            pbx_id=pbx, role=role, extensions=exts, group=group or "", name=name or "",
            expires_at=_expiry(expires), created_by=getpass.getuser())
    except PbxPipeError as e:
        fail(str(e))
    typer.echo(key)
    typer.echo(f"key id {row.key_id}: {row.role} of {row.pbx_id}"
               + (f", extensions {','.join(row.extensions)}" if row.extensions else "")
               + (f", group {row.group_name}" if row.group_name else "")
               + (f", expires {iso_utc(row.expires_at)}" if row.expires_at else "")
               + ". Keep the key now: it is not shown again.", err=True)


@keys_app.command("list")
def keys_list(
    pbx: Annotated[str | None, typer.Option("--pbx", help="Only this tenant's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per key.")] = False,
    clickhouse: Dsn = None,
) -> None:
    """The keys (never their secrets): id, tenant, role, scope, created, expires, revoked."""
    try:
        rows = _keys(clickhouse).list_keys(pbx)
    except PbxPipeError as e:
        fail(str(e))
    for r in rows:
        item = {"key_id": r.key_id, "pbx_id": r.pbx_id, "role": r.role, "name": r.name,
                "extensions": list(r.extensions), "group": r.group_name,
                "created": iso_utc(r.created_at),
                "expires": iso_utc(r.expires_at) if r.expires_at else None,
                "revoked": iso_utc(r.revoked_at) if r.revoked_at else None}
        if as_json:
            typer.echo(json.dumps(item))
        else:
            state = "revoked" if r.revoked_at else "expired" if r.expires_at and r.expires_at < time.time() else "active"
            typer.echo(f"{r.key_id}  {r.pbx_id:<16} {r.role:<10} {state:<8} "
                       f"{','.join(r.extensions) or r.group_name or '-':<16} {r.name}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (pbxpipe api-keys list).")],
                clickhouse: Dsn = None) -> None:
    """Revoke a key: refused from then on (within the API's key cache, a few seconds)."""
    try:
        row = _keys(clickhouse).revoke_key(key_id)
    except PbxPipeError as e:
        fail(str(e))
    typer.echo(f"revoked {row.key_id} ({row.role} of {row.pbx_id})")


@groups_app.command("set")
def groups_set(
    pbx: Annotated[str, typer.Option("--pbx", help="The tenant.")],
    name: Annotated[str, typer.Argument(help="The group's name.")],
    extensions: Annotated[str, typer.Option(help="Its extensions, comma-separated.")] = "",
    queues: Annotated[str, typer.Option(help="Its queues, comma-separated.")] = "",
    clickhouse: Dsn = None,
) -> None:
    """Create or replace a group: its supervisors see calls of these extensions and queues."""
    split = lambda v: [x.strip() for x in v.split(",") if x.strip()]  # noqa: E731
    try:
        g = _keys(clickhouse).set_group(pbx, name, split(extensions), split(queues))
    except PbxPipeError as e:
        fail(str(e))
    typer.echo(f"group {g.name} of {g.pbx_id}: extensions {','.join(g.extensions) or '-'}, "
               f"queues {','.join(g.queues) or '-'}")


@groups_app.command("delete")
def groups_delete(pbx: Annotated[str, typer.Option("--pbx", help="The tenant.")],
                  name: Annotated[str, typer.Argument(help="The group's name.")],
                  clickhouse: Dsn = None) -> None:
    """Delete a group: its supervisors then see no calls."""
    try:
        _keys(clickhouse).set_group(pbx, name, [], [], deleted=True)
    except PbxPipeError as e:
        fail(str(e))
    typer.echo(f"deleted group {name} of {pbx}")


@groups_app.command("list")
def groups_list(pbx: Annotated[str | None, typer.Option("--pbx", help="Only this tenant's.")] = None,
                clickhouse: Dsn = None) -> None:
    try:
        rows = _keys(clickhouse).list_groups(pbx)
    except PbxPipeError as e:
        fail(str(e))
    for g in rows:
        typer.echo(f"{g.pbx_id:<16} {g.name:<16} extensions {','.join(g.extensions) or '-'}  "
                   f"queues {','.join(g.queues) or '-'}")


@tenants_app.command("set")
def tenants_set(
    pbx: Annotated[str, typer.Option("--pbx", help="The tenant (PBX id).")],
    timezone: Annotated[str, typer.Option(help="Its time zone (tz database name): hours and days in the panel.")],
    name: Annotated[str, typer.Option(help="Its name.")] = "",
    clickhouse: Dsn = None,
) -> None:
    """Set a tenant's name and time zone."""
    try:
        t = _keys(clickhouse).set_tenant(pbx, name=name, timezone=timezone)
    except PbxPipeError as e:
        fail(str(e))
    typer.echo(f"{t.pbx_id}: {t.name or '-'} ({t.timezone})")


@tenants_app.command("list")
def tenants_list(clickhouse: Dsn = None) -> None:
    try:
        rows = _keys(clickhouse).list_tenants()
    except PbxPipeError as e:
        fail(str(e))
    for t in rows:
        typer.echo(f"{t.pbx_id:<16} {t.timezone:<20} {t.name}")


def register(app: typer.Typer) -> None:
    app.command("api")(api)
    app.add_typer(keys_app, name="api-keys")
    app.add_typer(groups_app, name="groups")
    app.add_typer(tenants_app, name="tenants")

