"""What the statistics endpoints answer."""

from __future__ import annotations

import msgspec


class LoadCell(msgspec.Struct, frozen=True, kw_only=True):
    weekday: int  # 1 Monday … 7 Sunday, in the time zone asked for
    hour: int  # 0-23
    calls: int
    answered: int
    missed: int
    avg_wait_s: float | None  # of answered calls


class Peak(msgspec.Struct, frozen=True, kw_only=True):
    calls: int  # the most calls in progress at once
    at: float | None  # when that was first reached (epoch s)


class Load(msgspec.Struct, frozen=True, kw_only=True):
    tz: str
    since: float | None
    until: float | None
    cells: list[LoadCell]
    peak: Peak


class SpendRow(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    key: str  # the destination, the extension, or the month (YYYY-MM)
    category: str = ""
    currency: str
    calls: int
    answered_calls: int
    billed_s: int
    cost: str
    cost_buy: str | None = None
    margin: str | None = None


class Costs(msgspec.Struct, frozen=True, kw_only=True):
    by: str
    rows: list[SpendRow]


class MissedNumber(msgspec.Struct, frozen=True, kw_only=True):
    number: str
    missed_calls: int
    last_missed: float
    last_missed_local: str
    last_call_id: str
