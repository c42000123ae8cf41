"""structlog, configured once: JSON in production, console on a terminal.

Event names are snake_case "noun_verb_past"; values are keyword arguments; one line per batch on
hot paths. Repeated problems are logged once per kind (``log_once``) and counted in metrics.

Context: bind ``pbx``, ``call`` (the call id), ``partition`` and ``offset`` with :func:`bound`
(contextvars, so they follow asyncio tasks) or ``log.bind(...)``. Secrets never reach the output:
values under secret-looking keys are masked, passwords inside URLs (DSNs) are masked in every
string, and every value registered with :func:`register_secrets` (the process's settings:
AMI secret, ClickHouse and object-store passwords, Kafka SASL password) is masked wherever it
appears, exception tracebacks and other libraries' stdlib log records included.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import structlog

_SECRET_KEYS = ("secret", "password", "ami_secret", "passwd", "token")
MASK = "***"
CONTEXT_KEYS = ("pbx", "call", "partition", "offset", "stage")
"""The keys bound as context (see :func:`bound`); bounded by convention, not enforced."""

# scheme://user:password@host -> scheme://user:***@host
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@")
_MIN_SECRET_LEN = 4  # shorter "secrets" would mask ordinary words; such values are no secret
_secrets: set[str] = set()
_secrets_re: re.Pattern[str] | None = None


def register_secrets(values: Iterable[str]) -> None:
    """Mask these values wherever they appear in a log line, from now on."""
    global _secrets_re
    new = {v for v in values if isinstance(v, str) and len(v) >= _MIN_SECRET_LEN}
    if not new - _secrets:
        return
    _secrets.update(new)
    # longest first: a secret containing another is masked whole
    _secrets_re = re.compile("|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True)))


def secret_values(settings: Any) -> list[str]:
    """The secret values of a Settings: secret fields, secret-looking fields, URL passwords."""
    from contracts.config import SECRET_FIELDS

    out: list[str] = []
    for name in getattr(type(settings), "__struct_fields__", ()):
        value = getattr(settings, name)
        if not isinstance(value, str) or not value:
            continue
        if "://" in value:
            with contextlib.suppress(ValueError):
                password = urlsplit(value).password
                if password:
                    out.append(password)
        if name in SECRET_FIELDS and "://" not in value:
            out.append(value)
        elif any(k in name.lower() for k in _SECRET_KEYS):
            out.append(value)
    return out


def scrub(text: str) -> str:
    """``text`` with URL passwords and registered secrets masked."""
    if "://" in text:
        text = _URL_PASSWORD.sub(r"\1" + MASK + "@", text)
    if _secrets_re is not None:
        text = _secrets_re.sub(MASK, text)
    return text


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: MASK if _secret_key(k) and v else _scrub_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub_value(v) for v in value)
    if isinstance(value, BaseException):
        return scrub(repr(value))
    return value


def _secret_key(key: Any) -> bool:
    return isinstance(key, str) and any(s in key.lower() for s in _SECRET_KEYS)


def _drop_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if _secret_key(key) and event[key]:
            event[key] = MASK
        else:
            event[key] = _scrub_value(event[key])
    return event


class _CurrentStderr:
    """Whatever ``sys.stderr`` is when a line is written (tests and tools swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_STDERR: Any = _CurrentStderr()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (tests swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def configure_logging(fmt: str = "auto", level: int = logging.INFO) -> None:
    """``fmt`` is auto (console on a TTY, JSON otherwise), json or console. Logs go to stderr.

    Records of other libraries' stdlib loggers (aiokafka, panoramisk…) at WARNING and above go
    through the same renderer and secret masking.
    """
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
            structlog.processors.format_exc_info,
            _drop_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(_STDERR),
        cache_logger_on_first_use=False,
    )
    handler = _StderrHandler()
    handler.setLevel(max(level, logging.WARNING))
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _drop_secrets,
                    renderer],
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)


@contextlib.contextmanager
def bound(**context: Any) -> Iterator[None]:
    """Bind context (``pbx``, ``call``, ``partition``, ``offset``…) to every log line inside."""
    with structlog.contextvars.bound_contextvars(**context):
        yield


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
