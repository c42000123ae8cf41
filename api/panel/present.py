"""How the panel page shows what the API answers: readable labels, durations, local times, links,
the page's own query strings, and its Content-Security-Policy. Pure: values in, text out."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo

DIRECTIONS: Mapping[str, str] = {"inbound": "Incoming", "outbound": "Outgoing", "internal": "Internal"}
STATUSES: Mapping[str, str] = {  # every contracts.records.Status (a test holds them equal)
    "answered": "Answered", "missed": "Missed", "no_answer": "No answer", "busy": "Busy",
    "failed": "Failed", "congestion": "Congestion",
}
CALL_TYPES: Mapping[str, str] = {  # every store.queries.CALL_TYPES
    "incoming": "Incoming", "outgoing": "Outgoing", "internal": "Internal", "missed": "Missed",
}
OUTCOMES: Mapping[str, str] = {  # a leg's outcome is Asterisk's DialStatus
    "ANSWER": "Answered", "NOANSWER": "No answer", "CANCEL": "Cancelled", "BUSY": "Busy",
    "CHANUNAVAIL": "Unavailable", "CONGESTION": "Congestion",
}
HANGUP_BY: Mapping[str, str] = {"caller": "the caller", "callee": "the called party"}

PAGE_SIZES = (10, 25, 50, 100, 200)
DEFAULT_PAGE = 50
FILTERS = ("since", "until", "extension", "number", "type", "status", "recorded", "limit")
"""The history's filters as the page's form names them (the JSON API's parameters)."""


def label(table: Mapping[str, str], value: str | None) -> str:
    """``value``'s label in ``table``; an unknown value readable as it is ("no_answer": "No answer")."""
    if not value:
        return ""
    return table.get(value) or value.replace("_", " ").capitalize()


def duration(seconds: float | None) -> str:
    """Seconds as a clock reads them: ``0:04``, ``12:30``, ``1:02:03``; nothing for None."""
    if seconds is None:
        return ""
    total = max(0, round(seconds))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def local_time(iso: str) -> str:
    """An API ``*_local`` time (ISO 8601 with milliseconds and offset) to the second, as people
    write it: ``2026-11-24 14:13:07``."""
    return iso[:19].replace("T", " ")


def moment(epoch_s: float | None, tz: str) -> str:
    """An instant in the tenant's time zone, with its weekday: ``Tue 2026-11-24 14:15``."""
    if epoch_s is None:
        return ""
    return datetime.fromtimestamp(epoch_s, ZoneInfo(tz)).strftime("%a %Y-%m-%d %H:%M")


def tel_uri(number: str) -> str:
    """A ``tel:`` link to call a number back (its digits, a leading +, and * #)."""
    return "tel:" + re.sub(r"[^0-9+*#]", "", number)


def money(amount: str, currency: str) -> str:
    """A call's price with its currency; nothing for a call that cost nothing."""
    try:
        if not amount or Decimal(amount) == 0:
            return ""
    except InvalidOperation:
        return amount
    return f"{amount} {currency}".strip()


def form_values(query: Mapping[str, list[str]]) -> dict[str, str]:
    """The filters a request carries, as the form shows them again (empty ones, and the default
    page size, left out: they would only lengthen the page's address)."""
    values = {k: query[k][0] for k in FILTERS if query.get(k) and query[k][0] != ""}
    if values.get("limit") == str(DEFAULT_PAGE):
        del values["limit"]
    return values


def inclusive_until(query: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """The query with a date-only ``until`` moved to the next day: on the page "until 24 Nov"
    includes the 24th, where the API's ``until`` is the exclusive bound. Anything else is left
    for the API's parser to accept or refuse."""
    out = dict(query)
    value = query.get("until")
    if value and len(value) == 1 and len(value[0]) == 10:
        try:
            out["until"] = [(date.fromisoformat(value[0]) + timedelta(days=1)).isoformat()]
        except (ValueError, OverflowError):
            pass
    return out


def page_url(path: str, values: Mapping[str, str], **extra: str | None) -> str:
    """``path`` with the filters (and ``extra``, e.g. a cursor) as its query string."""
    items: dict[str, Any] = {k: v for k, v in values.items() if v}
    items.update({k: v for k, v in extra.items() if v})
    return f"{path}?{urlencode(items)}" if items else path


def content_security_policy(object_store: str) -> str:
    """Everything from this origin only, no inline script or style, no framing. Recordings in
    S3/MinIO play from the object store's presigned links, so its origin may serve media."""
    media = "'self'"
    if object_store.startswith(("http://", "https://")):
        parts = urlsplit(object_store)
        media += f" {parts.scheme}://{parts.netloc}"
    return (f"default-src 'self'; media-src {media}; object-src 'none'; base-uri 'none'; "
            "form-action 'self'; frame-ancestors 'none'")


def heat(n: int, top: int) -> int:
    """A cell's shade, 0 (no calls) to 4 (the busiest cell)."""
    if n <= 0 or top <= 0:
        return 0
    return min(4, 1 + (3 * n) // top)
