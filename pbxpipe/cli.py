"""The `pbxpipe` command: the only place that wires ingest, enrich and store together.

The Typer app and what the commands share are in pbxpipe/app.py; each command module
(pbxpipe/cmd_*.py) adds its commands with ``register(app)``, in the order --help lists them.
"""

from __future__ import annotations

import sys

from contracts.errors import PbxPipeError
from pbxpipe import (
    cmd_api,
    cmd_integrity,
    cmd_kafka,
    cmd_ops,
    cmd_pipeline,
    cmd_reconcile,
    cmd_retention,
    cmd_tariffs,
)
from pbxpipe.app import app

COMMAND_MODULES = (cmd_pipeline, cmd_api, cmd_kafka, cmd_retention, cmd_ops, cmd_tariffs,
                   cmd_reconcile, cmd_integrity)

for _module in COMMAND_MODULES:
    _module.register(app)


def main() -> None:
    try:
        app()
    except PbxPipeError as e:  # configuration errors raised while parsing settings
        print(f"pbxpipe: error: {e}", file=sys.stderr)
        sys.exit(1)
