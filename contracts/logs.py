"""structlog, configured once: JSON in production, console on a terminal.

Event names are snake_case "noun_verb_past"; values are keyword arguments; one line per batch on
hot paths. Repeated problems are logged once per kind (``log_once``) and counted in metrics.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = ("secret", "password", "ami_secret")


def _drop_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if any(s in key.lower() for s in _SECRET_KEYS):
            event[key] = "***"
    return event


def configure_logging(fmt: str = "auto", level: int = logging.INFO) -> None:
    """``fmt`` is auto (console on a TTY, JSON otherwise), json or console. Logs go to stderr."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


class LogOnce:
    """Logs the first occurrence of each kind of problem; later ones are only counted."""

    def __init__(self, logger: Any) -> None:
        self._log = logger
        self._seen: set[str] = set()

    def warning(self, kind: str, event: str, **kw: Any) -> None:
        if kind in self._seen:
            return
        self._seen.add(kind)
        self._log.warning(event, kind=kind, first_of_kind=True, **kw)
