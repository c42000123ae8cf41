"""Query parameters, parsed strictly: each bad one is a :class:`BadParameter` that names it. Pure.

The API declares its parameters as plain strings and parses them here, so every refusal reads the
same way (``since: not an ISO 8601 date or time``) whatever the parameter, and nothing a client
sends can reach the query layer unchecked.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from contracts.errors import BadParameter
from contracts.records import Status
from store.queries import CALL_TYPES, normalize_number

MAX_PAGE = 1000
DEFAULT_PAGE = 50
MAX_TEXT = 64
_EXTENSION = re.compile(r"^[A-Za-z0-9*#+_.-]{1,32}$")
_CALL_ID = re.compile(r"^[A-Za-z0-9_.:@+-]{1,200}$")
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_LATEST = datetime(2200, 1, 1, tzinfo=UTC)


class CallFilters(msgspec.Struct, frozen=True, kw_only=True):
    """What a call-history request asks for (the panel's filters)."""

    since: datetime | None = None
    until: datetime | None = None
    call_type: str | None = None
    extension: str | None = None
    number: str | None = None
    status: str | None = None
    recorded: bool | None = None

    def fingerprint(self) -> str:
        return fingerprint(self)


def fingerprint(*values: Any) -> str:
    """Ties a cursor to the filters it was made for."""
    return hashlib.sha256(msgspec.json.encode(values)).hexdigest()[:16]


def only(query: Mapping[str, Any], allowed: Sequence[str]) -> None:
    """Refuse parameters the endpoint does not know (a typo would otherwise be ignored silently)."""
    for name in query:
        if name not in allowed:
            raise BadParameter(name, f"unknown parameter; this endpoint takes {', '.join(allowed) or 'none'}")


def text(query: Mapping[str, Any], name: str, max_len: int = MAX_TEXT) -> str | None:
    value = query.get(name)
    if value is None:
        return None
    if isinstance(value, list):
        if len(value) != 1:
            raise BadParameter(name, "given more than once")
        value = value[0]
    if not isinstance(value, str):
        raise BadParameter(name, "not text")
    if len(value) > max_len:
        raise BadParameter(name, f"longer than {max_len} characters")
    return value


def zone(query: Mapping[str, Any], default: str) -> tuple[str, ZoneInfo]:
    name = text(query, "tz") or default
    try:
        return name, ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadParameter("tz", f"unknown time zone {name!r} (a tz database name, e.g. Europe/Warsaw)") from None


def time_bound(query: Mapping[str, Any], name: str, tz: ZoneInfo) -> datetime | None:
    """An ISO 8601 date or date-time; without an offset it is read in ``tz`` (a date is its
    midnight)."""
    value = text(query, name)
    if value is None or value == "":
        return None
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            t = datetime(d.year, d.month, d.day, tzinfo=tz)
        else:
            t = datetime.fromisoformat(value)
            t = t if t.tzinfo is not None else t.replace(tzinfo=tz)
    except (ValueError, OverflowError):
        raise BadParameter(name, "not an ISO 8601 date or time (e.g. 2026-11-24 or 2026-11-24T08:00+01:00)") from None
    try:
        if not _EARLIEST <= t <= _LATEST:
            raise BadParameter(name, "out of range")
    except (ValueError, OverflowError):
        raise BadParameter(name, "out of range") from None
    return t


def time_range(query: Mapping[str, Any], tz: ZoneInfo, *, default_days: int | None = None,
               max_days: int | None = None, now: datetime | None = None
               ) -> tuple[datetime | None, datetime | None]:
    since, until = time_bound(query, "since", tz), time_bound(query, "until", tz)
    if since is not None and until is not None and until <= since:
        raise BadParameter("until", "must be after since")
    if default_days is not None and since is None:
        end = until or now or datetime.now(UTC)
        since = end - timedelta(days=default_days)
    if max_days is not None and since is not None:
        end = until or now or datetime.now(UTC)
        if end - since > timedelta(days=max_days):
            raise BadParameter("since", f"the range is longer than {max_days} days")
    return since, until


def choice(query: Mapping[str, Any], name: str, choices: Sequence[str]) -> str | None:
    value = text(query, name)
    if value is None or value == "":
        return None
    if value not in choices:
        raise BadParameter(name, f"must be one of {', '.join(choices)}")
    return value


def boolean(query: Mapping[str, Any], name: str) -> bool | None:
    value = text(query, name)
    if value is None or value == "":
        return None
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise BadParameter(name, "must be true or false")


def integer(query: Mapping[str, Any], name: str, *, default: int, low: int, high: int) -> int:
    value = text(query, name)
    if value is None or value == "":
        return default
    if not re.fullmatch(r"[0-9]{1,9}", value):
        raise BadParameter(name, f"must be a whole number from {low} to {high}")
    n = int(value)
    if not low <= n <= high:
        raise BadParameter(name, f"must be from {low} to {high}")
    return n


def extension(query: Mapping[str, Any], name: str = "extension") -> str | None:
    value = text(query, name)
    if value is None or value == "":
        return None
    if not _EXTENSION.match(value):
        raise BadParameter(name, "not an extension")
    return value


def number(query: Mapping[str, Any], name: str = "number") -> str | None:
    value = text(query, name)
    if value is None or value == "":
        return None
    if not re.fullmatch(r"[0-9+()\-. /]{1,40}", value) or not normalize_number(value):
        raise BadParameter(name, "not a phone number (digits, with + ( ) - . / and spaces)")
    return value


def call_filters(query: Mapping[str, Any], tz: ZoneInfo) -> CallFilters:
    since, until = time_range(query, tz)
    return CallFilters(
        since=since, until=until,
        call_type=choice(query, "type", tuple(CALL_TYPES)),
        extension=extension(query), number=number(query),
        status=choice(query, "status", sorted(get_args(Status))),
        recorded=boolean(query, "recorded"),
    )


def call_id(value: str) -> str:
    if not isinstance(value, str) or not _CALL_ID.match(value):
        raise BadParameter("call_id", "not a call id")
    return value


# -- keyset cursors -----------------------------------------------------------------------------


def encode_cursor(at_ms: int, row_id: str, filters_id: str) -> str:
    """An opaque position after which the next page starts: the last row's (time, id) and the
    filters it belongs to (their :func:`fingerprint`)."""
    raw = msgspec.json.encode([at_ms, row_id, filters_id])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


MAX_CURSOR = 400


def cursor(query: Mapping[str, Any], filters_id: str) -> tuple[int, str] | None:
    """The ``cursor`` parameter: where the page starts (None: the first page)."""
    return decode_cursor(text(query, "cursor", MAX_CURSOR), filters_id)


def decode_cursor(value: str | None, filters_id: str) -> tuple[int, str] | None:
    if value is None or value == "":
        return None
    bad = BadParameter("cursor", "not a cursor of this listing (use next_cursor as given, with the same filters)")
    if len(value) > MAX_CURSOR or not re.fullmatch(r"[A-Za-z0-9_-]+", value):
        raise bad
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        start_ms, cid, got = msgspec.json.decode(raw, type=tuple[int, str, str])
    except (ValueError, msgspec.DecodeError):
        raise bad from None
    if got != filters_id or not _CALL_ID.match(cid) or not 0 <= start_ms < 2**42:
        raise bad
    return start_ms, cid
