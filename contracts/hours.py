"""A PBX's business hours, in its own time zone: ``Mon-Fri 07:00-17:00, Sat 09:00-13:00``. Pure.

Ops alerts that only make sense while people call (no events for 30 minutes) ask ingest whether
its PBX is open now (``pbxpipe_ingest_pbx_open``), so daylight saving time and each PBX's
zone are handled here, with the tz database, not in PromQL (which knows only UTC).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from contracts.errors import ConfigError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPAN = re.compile(r"^\s*(?P<days>[a-z]{3}(?:\s*-\s*[a-z]{3})?)\s+"
                   r"(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$")


@dataclass(frozen=True)
class Span:
    """Open from ``start`` to ``end`` (local wall-clock time, end excluded) on ``days`` (0 = Monday).
    An ``end`` of 24:00 is the day's end."""

    days: frozenset[int]
    start: time
    end: time | None  # None: 24:00


@dataclass(frozen=True)
class BusinessHours:
    spans: tuple[Span, ...]
    zone: ZoneInfo

    def open_at(self, when: datetime) -> bool:
        """Whether the PBX is open at ``when`` (an aware datetime, any zone)."""
        local = when.astimezone(self.zone)
        day, clock = local.weekday(), local.time().replace(tzinfo=None)
        return any(day in s.days and s.start <= clock and (s.end is None or clock < s.end)
                   for s in self.spans)


def _clock(text: str, what: str) -> time | None:
    hour, minute = (int(x) for x in text.split(":"))
    if (hour, minute) == (24, 0):
        return None
    if hour > 23 or minute > 59:
        raise ConfigError(f"{what}: {text!r} is not a time of day (HH:MM, 00:00-24:00)")
    return time(hour, minute)


def parse_business_hours(spec: str, zone: str, what: str = "business_hours") -> BusinessHours:
    """``Mon-Fri 07:00-17:00, Sat 09:00-13:00`` (days Mon..Sun, a range or one day; times
    HH:MM, end excluded, 24:00 the day's end) in the tz database ``zone``; an empty spec is
    never open. Raises ConfigError saying what is wrong."""
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {zone!r} (a tz database name such as "
                          "Europe/Warsaw)") from None
    spans = []
    for part in filter(str.strip, spec.split(",")):
        m = _SPAN.match(part.lower())
        if m is None:
            raise ConfigError(f"{what}: {part.strip()!r} is not 'Mon-Fri 07:00-17:00' "
                              "(days, then a time range)")
        first, _, last = (d.strip() for d in m["days"].partition("-"))
        last = last or first
        if first not in DAYS or last not in DAYS:
            raise ConfigError(f"{what}: unknown day in {part.strip()!r} (Mon, Tue … Sun)")
        a, b = DAYS.index(first), DAYS.index(last)
        days = frozenset(range(a, b + 1)) if a <= b else frozenset((*range(a, 7), *range(b + 1)))
        start, end = _clock(m["start"], what), _clock(m["end"], what)
        if start is None or (end is not None and end <= start):
            raise ConfigError(f"{what}: {part.strip()!r} ends before it starts (past midnight: "
                              "two spans, 'Mon-Fri 22:00-24:00, Tue-Sat 00:00-06:00')")
        spans.append(Span(days, start, end))
    return BusinessHours(tuple(spans), tz)
