"""What rating outbound calls produces: a call's rating, the price-list rows and spend alerts as stored.

Money is ``decimal.Decimal`` everywhere (ClickHouse ``Decimal(18, 4)``): a price list is exact
and so is every cost computed from it; floats would make a re-rating disagree in the last grosz.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec

Category = Literal["national", "mobile", "international", "premium", "emergency"]
CATEGORIES: tuple[str, ...] = ("national", "mobile", "international", "premium", "emergency")

RatingOutcome = Literal["", "rated", "unanswered", "no_match", "no_band", "bad_number"]


class Rating(msgspec.Struct, frozen=True, kw_only=True):
    """How one call was rated. These are the last fields of ``CallRecord``, in the same order."""

    cost: Decimal = Decimal(0)
    cost_buy: Decimal = Decimal(0)
    margin: Decimal = Decimal(0)
    currency: str = ""
    billed_s: int = 0
    rating: str = ""  # a RatingOutcome
    called_e164: str = ""
    tariff_plan: str = ""
    tariff_version: str = ""
    tariff_prefix: str = ""
    destination: str = ""
    destination_category: str = ""
    tariff_band: str = ""
    rate: Decimal = Decimal(0)
    increments: str = ""


class TariffRow(msgspec.Struct, frozen=True, kw_only=True):
    """One price-list row as loaded into ClickHouse (table ``tariffs``), so dashboards can join
    ``calls`` on (tariff_version, tariff_plan, tariff_prefix)."""

    version: str
    source: str  # the file it came from
    line: int
    plan: str
    prefix: str  # E.164 digits, no "+"
    destination: str
    category: str
    band: str
    days: str  # as written: "mon-fri", "sat,sun,hol", "" = every day
    hours: str  # as written: "08:00-18:00", "" = all day
    valid_from: float | None  # epoch seconds (UTC); None: always
    valid_to: float | None  # exclusive
    sell_per_min: Decimal
    connection_fee: Decimal
    min_charge: Decimal
    short_call_fee: Decimal
    increments: str
    free_s: int
    buy_per_min: Decimal
    buy_connection_fee: Decimal
    buy_increments: str
    rounding: str
    decimals: int
    currency: str


class TariffAlert(msgspec.Struct, frozen=True, kw_only=True):
    """Unusual traffic: spend or calls to watched destinations in one clock hour above a limit."""

    alert_id: str  # deterministic (scope, key, hour, kind): a replay collapses to one row
    pbx_id: str
    scope: str  # extension | customer
    key: str  # the extension ("pbx1/101") or the customer ("pbx1")
    hour: float  # start of the clock hour (epoch seconds, UTC)
    kind: str  # spend | calls
    threshold: Decimal
    calls: int  # watched calls in the hour when the limit was crossed
    cost: Decimal  # their spend
    currency: str
    categories: str  # the watched categories, comma-separated
    call_id: str  # the call that crossed the limit
    at: float  # its start
