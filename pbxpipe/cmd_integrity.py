"""Commands for tamper evidence: ``keys create`` (the export signing key) and ``verify export``,
``verify recording`` (exit 1 with the reason of each failure)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from contracts.errors import ConfigError, PbxPipeError
from pbxpipe.app import Dsn, command_settings, fail

keys_app = typer.Typer(no_args_is_help=True, help="The key that signs export manifests.")
verify_app = typer.Typer(no_args_is_help=True,
                         help="Check exports and recordings against their checksums and signature.")
Objects = Annotated[Optional[str], typer.Option("--object-store", help="dir:///<dir> or http(s)://host:port/<bucket> [PBXPIPE_OBJECT_STORE].")]


@keys_app.command("create")
def keys_create(
    path: Annotated[Path, typer.Argument(help="Where the private key goes (mode 0600); the public key is written beside it as PATH.pub.")],
) -> None:
    """Make an Ed25519 key pair for signing exports; prints the public key to give to whoever
    verifies them. Set PBXPIPE_EXPORT_SIGNING_KEY to PATH."""
    from retention.signing import create_keys, key_id, public_pem

    try:
        public_path, public = create_keys(path)
    except PbxPipeError as e:
        fail(str(e))
    typer.echo(public_pem(public), nl=False)
    typer.echo(f"key {key_id(public)}: private key {path} (keep it secret), public key {public_path}")


def _report(checks: list[Any]) -> None:
    """Each check on a line; exit 1 naming the failures when any failed."""
    for c in checks:
        typer.echo(f"{'ok    ' if c.ok else 'FAILED'} {c.what}: {c.detail}")
    failed = [c for c in checks if not c.ok]
    if failed:
        fail(f"{len(failed)} of {len(checks)} checks failed: "
             + "; ".join(f"{c.what}: {c.detail}" for c in failed))


@verify_app.command("export")
def verify_export(
    location: Annotated[str, typer.Argument(help="The export: a directory, or s3://bucket/prefix.")],
    public_key: Annotated[Optional[Path], typer.Option(help="The signer's public key (PEM); default: that of PBXPIPE_EXPORT_SIGNING_KEY.")] = None,
    object_store: Objects = None,
) -> None:
    """Check an export: the manifest's signature, and every file against the size and SHA-256
    it lists; a file missing, altered or added fails."""
    from retention.integrity import DirFiles, ObjectFiles
    from retention.integrity import verify_export as check_export
    from retention.signing import load_public_key

    settings = command_settings(log_format="console", object_store=object_store)
    try:
        key = public_key or (Path(settings.export_signing_key) if settings.export_signing_key else None)
        if key is None:
            raise ConfigError("no key to verify with: --public-key FILE (or PBXPIPE_EXPORT_SIGNING_KEY)")
        public = load_public_key(key)
        if location.startswith("s3://"):
            from pbxpipe.cmd_retention import export_objects

            objects, prefix = export_objects(settings, location)
            files: Any = ObjectFiles(objects, prefix)
        else:
            if not Path(location).is_dir():
                raise ConfigError(f"{location}: not a directory")
            files = DirFiles(location)
        checks = check_export(files, public)
    except PbxPipeError as e:
        fail(str(e))
    _report(checks)


@verify_app.command("recording")
def verify_recording(
    call_id: Annotated[str, typer.Argument(help="The call id (<pbx>:<linkedid>).")],
    clickhouse: Dsn = None,
    object_store: Objects = None,
) -> None:
    """Re-hash each stored recording of a call against the SHA-256 taken when it was uploaded."""
    from pbxpipe.pipeline import open_store
    from retention.integrity import verify_recording as check_recording
    from store.object_stores import open_object_store

    settings = command_settings(log_format="console", clickhouse_dsn=clickhouse,
                                object_store=object_store)
    try:
        checks = check_recording(open_store(settings), open_object_store(settings), call_id)
    except PbxPipeError as e:
        fail(str(e))
    _report(checks)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
    app.add_typer(verify_app, name="verify")
