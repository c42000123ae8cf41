"""Outbound call cost from a price list, rated the way operators bill. Pure: text in, costs out.

A price list is three CSV texts (see ``enrich/data/tariffs_pl/README.md`` for the columns):
``rates`` (one row per plan, destination prefix and time band), ``customers`` (customer -> plan,
``*`` = the default plan) and ``holidays`` (local dates billed as holidays). :func:`parse_tariff`
validates them, naming file, line, column and reason for every mistake, and :class:`Rater` rates:

* the dialled number is read as E.164 with the PBX profile's prefixes (``00`` international,
  ``0`` national + country code, ``+``);
* the customer's plan (else the default plan), then the **longest prefix** with rows valid when
  the call started (``valid_from`` inclusive, ``valid_to`` exclusive, local time); among that
  prefix's rows the **first, in file order, whose days and hours contain the call's local start**
  (on a holiday only rows listing ``hol`` or every day apply). No such row: ``no_band``;
* seconds = ``floor(talk_s)`` (Asterisk's billsec); a call of 0 s or of at most ``free_s`` costs
  ``short_call_fee``; otherwise billed = the first increment, then whole next increments, and
  cost = connection fee + rate x billed / 60, at least ``min_charge``, rounded as the row says.
  The buy (carrier) price uses its own increments and connection fee; margin = sell - buy.
  Emergency destinations are free. Unanswered calls cost nothing (they still show what they
  dialled).

No I/O, no clock: the time zone object and the texts are passed in.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import (
    ROUND_DOWN,
    ROUND_HALF_EVEN,
    ROUND_HALF_UP,
    ROUND_UP,
    Context,
    Decimal,
    InvalidOperation,
)
from typing import Any, Literal
from zoneinfo import ZoneInfo

import msgspec

from contracts.errors import TariffError
from contracts.profile import PbxProfile
from contracts.records import CallRecord
from contracts.tariffs import CATEGORIES, Rating, TariffRow

Rounding = Literal["half_up", "up", "down", "half_even"]
ROUNDINGS: Mapping[str, str] = {
    "half_up": ROUND_HALF_UP,
    "up": ROUND_UP,
    "down": ROUND_DOWN,
    "half_even": ROUND_HALF_EVEN,
}
MAX_DECIMALS = 4  # ClickHouse Decimal(18, 4)
HOLIDAY = 7  # the "hol" day token, next to weekdays 0 (mon) .. 6 (sun)
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEFAULT_PLAN = "default"

_CTX = Context(prec=40)  # far more digits than any price list needs: rounding happens once, at the end
_SIXTY = Decimal(60)

# -- numbers -----------------------------------------------------------------------------------

_SEPARATORS = re.compile(r"[\s\-./()]")


def to_e164(number: str, *, country_code: str, national_prefix: str = "0",
            international_prefix: str = "00") -> str | None:
    """The dialled number as E.164 digits without "+", or None when it is not a number.

    ``+44…`` and ``<international_prefix>44…`` are international; ``<national_prefix>601…`` and a
    bare ``601…`` (or ``112``) are national and get the country code.
    """
    s = _SEPARATORS.sub("", number)
    if not s:
        return None
    if s.startswith("+"):
        digits = s[1:]
    elif international_prefix and s.startswith(international_prefix):
        digits = s[len(international_prefix):]
    elif national_prefix and s.startswith(national_prefix):
        digits = country_code + s[len(national_prefix):]
    else:
        digits = country_code + s
    if not digits or not digits.isascii() or not digits.isdigit() or len(digits) > 15 + 4:
        return None
    return digits


# -- the price list --------------------------------------------------------------------------


class Increments(msgspec.Struct, frozen=True):
    first: int
    next: int

    def __str__(self) -> str:
        return f"{self.first}/{self.next}"

    def billed(self, seconds: int) -> int:
        """Seconds charged for ``seconds`` of talk: the first increment, then whole next ones."""
        if seconds <= 0:
            return 0
        if seconds <= self.first:
            return self.first
        return self.first + -(-(seconds - self.first) // self.next) * self.next


class Rate(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the rates file, parsed."""

    source: str
    line: int
    plan: str
    prefix: str
    destination: str
    category: str
    band: str
    days: frozenset[int] | None  # None: every day (holidays included)
    days_text: str
    hours: tuple[int, int] | None  # seconds of the local day, [start, end); end < start crosses midnight
    hours_text: str
    valid_from: datetime | None
    valid_to: datetime | None
    sell_per_min: Decimal
    connection_fee: Decimal
    min_charge: Decimal
    short_call_fee: Decimal
    increments: Increments
    free_s: int
    buy_per_min: Decimal
    buy_connection_fee: Decimal
    buy_increments: Increments
    rounding: str
    decimals: int
    currency: str

    def valid_at(self, t: datetime) -> bool:
        return (self.valid_from is None or self.valid_from <= t) and (
            self.valid_to is None or t < self.valid_to
        )

    def applies(self, local: datetime, holiday: bool) -> bool:
        """Whether the row's days and hours contain this local time."""
        if self.days is not None:
            if holiday:
                if HOLIDAY not in self.days:
                    return False
            elif local.weekday() not in self.days:
                return False
        if self.hours is None:
            return True
        s = local.hour * 3600 + local.minute * 60 + local.second
        start, end = self.hours
        return start <= s < end if start < end else (s >= start or s < end)

    def sell(self, seconds: int) -> tuple[Decimal, int]:
        """(sell price, billed seconds) for ``seconds`` of talk."""
        if self.category == "emergency":
            return Decimal(0), 0
        if seconds <= 0 or seconds <= self.free_s:
            return self._round(self.short_call_fee), 0
        billed = self.increments.billed(seconds)
        raw = _CTX.add(self.connection_fee, _CTX.divide(_CTX.multiply(self.sell_per_min, billed), _SIXTY))
        return self._round(max(raw, self.min_charge)), billed

    def buy(self, seconds: int) -> Decimal:
        if self.category == "emergency" or seconds <= 0:
            return Decimal(0)
        billed = self.buy_increments.billed(seconds)
        raw = _CTX.add(self.buy_connection_fee, _CTX.divide(_CTX.multiply(self.buy_per_min, billed), _SIXTY))
        return self._round(raw)

    def _round(self, amount: Decimal) -> Decimal:
        return amount.quantize(Decimal(1).scaleb(-self.decimals), rounding=ROUNDINGS[self.rounding])

    def row(self, version: str) -> TariffRow:
        """As stored in ClickHouse."""
        return TariffRow(
            version=version, source=self.source, line=self.line, plan=self.plan,
            prefix=self.prefix, destination=self.destination, category=self.category,
            band=self.band, days=self.days_text, hours=self.hours_text,
            valid_from=self.valid_from.timestamp() if self.valid_from else None,
            valid_to=self.valid_to.timestamp() if self.valid_to else None,
            sell_per_min=self.sell_per_min, connection_fee=self.connection_fee,
            min_charge=self.min_charge, short_call_fee=self.short_call_fee,
            increments=str(self.increments), free_s=self.free_s, buy_per_min=self.buy_per_min,
            buy_connection_fee=self.buy_connection_fee, buy_increments=str(self.buy_increments),
            rounding=self.rounding, decimals=self.decimals, currency=self.currency,
        )


@dataclass(frozen=True)
class Tariff:
    """A validated price list: rates, customers' plans, holidays, and its content version."""

    rates: tuple[Rate, ...]
    plans: Mapping[str, str]  # customer (pbx_id) -> plan
    default_plan: str
    holidays: frozenset[date]
    zone: ZoneInfo
    version: str = ""

    def plan_of(self, customer: str) -> str:
        return self.plans.get(customer, self.default_plan)

    def rows(self) -> list[TariffRow]:
        return [r.row(self.version) for r in self.rates]


# -- parsing and validation --------------------------------------------------------------------

RATE_COLUMNS: Mapping[str, str | None] = {  # column -> default (None: required)
    "plan": None,
    "prefix": None,
    "destination": None,
    "category": None,
    "band": "",
    "days": "",
    "hours": "",
    "valid_from": "",
    "valid_to": "",
    "sell_per_min": None,
    "connection_fee": "0",
    "min_charge": "0",
    "short_call_fee": "0",
    "increments": "60/60",
    "free_s": "0",
    "buy_per_min": "0",
    "buy_connection_fee": "0",
    "buy_increments": "1/1",
    "rounding": "half_up",
    "decimals": "2",
    "currency": None,
}
CUSTOMER_COLUMNS: Mapping[str, str | None] = {"customer": None, "plan": None}
HOLIDAY_COLUMNS: Mapping[str, str | None] = {"date": None, "name": ""}

FileKind = Literal["rates", "customers", "holidays"]


class _Bad(Exception):
    def __init__(self, column: str, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.reason = reason


@dataclass
class _Issues:
    items: list[str] = field(default_factory=list)

    def add(self, source: str, line: int, column: str, reason: str) -> None:
        where = f"{source}:{line}" if line else source
        self.items.append(f"{where}: {column}: {reason}" if column else f"{where}: {reason}")


def file_kind(text: str) -> FileKind | None:
    """Which file of a price list a CSV text is, from its header."""
    header = _header(text)
    if header is None:
        return None
    cols = set(header)
    if {"prefix", "sell_per_min"} <= cols:
        return "rates"
    if cols == {"customer", "plan"}:
        return "customers"
    if "date" in cols and cols <= {"date", "name"}:
        return "holidays"
    return None


def _header(text: str) -> list[str] | None:
    for _, row in _rows(text):
        return [c.strip().lower() for c in row]
    return None


def _delimiter(text: str) -> str:
    first = next((ln for ln in text.lstrip("\ufeff").splitlines()
                  if ln.strip() and not ln.lstrip().startswith("#")), "")
    return ";" if first.count(";") > first.count(",") else ","


def _rows(text: str) -> Iterable[tuple[int, list[str]]]:
    """(line number, cells) of every row that is not blank or a ``#`` comment."""
    text = text.lstrip("\ufeff")  # spreadsheets save a BOM
    reader = csv.reader(text.splitlines(keepends=True), delimiter=_delimiter(text))
    start = 1
    for row in reader:
        line, start = start, reader.line_num + 1
        if not any(c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        yield line, row


def _records(text: str, source: str, columns: Mapping[str, str | None],
             issues: _Issues) -> list[tuple[int, dict[str, str]]]:
    """Rows as dicts keyed by column, defaults filled in; header problems are issues."""
    rows = iter(_rows(text))
    first = next(rows, None)
    if first is None:
        issues.add(source, 0, "", "empty file (a header line is required)")
        return []
    hline, header = first
    names = [c.strip().lower() for c in header]
    bad = False
    for i, n in enumerate(names):
        if n not in columns:
            issues.add(source, hline, n or f"column {i + 1}",
                       f"unknown column (known: {', '.join(columns)})")
            bad = True
        elif names.index(n) != i:
            issues.add(source, hline, n, "column appears twice")
            bad = True
    for n, default in columns.items():
        if default is None and n not in names:
            issues.add(source, hline, n, "required column missing from the header")
            bad = True
    if bad:
        return []
    out: list[tuple[int, dict[str, str]]] = []
    for line, cells in rows:
        if len(cells) > len(names):
            issues.add(source, line, f"column {len(names) + 1}",
                       f"{len(cells)} cells but the header has {len(names)} columns")
            continue
        rec = {n: (cells[i].strip() if i < len(cells) else "") for i, n in enumerate(names)}
        complete = True
        for n, default in columns.items():
            if not rec.get(n):
                if default is None:
                    issues.add(source, line, n, "required, but empty")
                    complete = False
                rec[n] = default or ""
        if complete:
            out.append((line, rec))
    return out


def _money(rec: Mapping[str, str], col: str, comma: bool) -> Decimal:
    text = rec[col].replace(",", ".") if comma else rec[col]
    try:
        d = Decimal(text)
    except InvalidOperation:
        hint = " (use a dot as the decimal separator)" if "," in text else ""
        raise _Bad(col, f"not a decimal number: {rec[col]!r}{hint}") from None
    if not d.is_finite() or d < 0:
        raise _Bad(col, f"must be a non-negative amount, got {rec[col]!r}")
    exp = d.as_tuple().exponent
    if isinstance(exp, int) and exp < -MAX_DECIMALS:
        raise _Bad(col, f"at most {MAX_DECIMALS} decimal places, got {rec[col]!r}")
    return d


def _int(rec: Mapping[str, str], col: str, lo: int, hi: int) -> int:
    try:
        v = int(rec[col])
    except ValueError:
        raise _Bad(col, f"not a whole number: {rec[col]!r}") from None
    if not lo <= v <= hi:
        raise _Bad(col, f"must be between {lo} and {hi}, got {v}")
    return v


def _increments(rec: Mapping[str, str], col: str) -> Increments:
    m = re.fullmatch(r"(\d+)\s*/\s*(\d+)", rec[col])
    if not m or int(m[1]) < 1 or int(m[2]) < 1 or int(m[1]) > 3600 or int(m[2]) > 3600:
        raise _Bad(col, f"must be first/next seconds, each 1..3600 (60/60, 30/6, 1/1), got {rec[col]!r}")
    return Increments(int(m[1]), int(m[2]))


def _days(text: str) -> frozenset[int] | None:
    t = text.strip().lower()
    if t in ("", "*"):
        return None
    out: set[int] = set()
    for part in t.split(","):
        part = part.strip()
        if part == "hol":
            out.add(HOLIDAY)
            continue
        a, sep, b = part.partition("-")
        if a not in DAY_NAMES or (sep and b not in DAY_NAMES):
            raise _Bad("days", f"unknown day {part!r}: use mon..sun, ranges (mon-fri), hol, or * for every day")
        i, j = DAY_NAMES.index(a), DAY_NAMES.index(b if sep else a)
        out.update(range(i, j + 1) if i <= j else [*range(i, 7), *range(j + 1)])
    return frozenset(out)


def _hours(text: str) -> tuple[int, int] | None:
    t = text.strip()
    if t in ("", "*"):
        return None
    m = re.fullmatch(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})", t)
    if not m:
        raise _Bad("hours", f"must be HH:MM-HH:MM (18:00-08:00 crosses midnight), got {text!r}")
    h1, m1, h2, m2 = (int(x) for x in m.groups())
    if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
        raise _Bad("hours", f"not a time of day: {text!r}")
    start, end = h1 * 3600 + m1 * 60, (h2 * 3600 + m2 * 60) % 86400
    if start == end:
        raise _Bad("hours", f"empty or whole-day range {text!r}: leave empty for all day")
    return start, end


def _when(rec: Mapping[str, str], col: str, zone: ZoneInfo) -> datetime | None:
    if not rec[col]:
        return None
    try:
        t = datetime.fromisoformat(rec[col])
    except ValueError:
        raise _Bad(col, f"not a date or time (YYYY-MM-DD or YYYY-MM-DDTHH:MM): {rec[col]!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=zone)


def _prefix(rec: Mapping[str, str]) -> str:
    prefix = rec["prefix"].removeprefix("+")
    if not prefix.isascii() or not prefix.isdigit() or len(prefix) > 15:
        raise _Bad("prefix", f"must be E.164 digits (country code first, e.g. 4860), got {rec['prefix']!r}")
    return prefix


def _choice(rec: Mapping[str, str], col: str, choices: Iterable[str]) -> str:
    value = rec[col].lower()
    if value not in choices:
        raise _Bad(col, f"must be one of {', '.join(choices)}, got {rec[col]!r}")
    return value


def _currency(rec: Mapping[str, str]) -> str:
    currency = rec["currency"].upper()
    if not re.fullmatch(r"[A-Z]{3}", currency):
        raise _Bad("currency", f"must be an ISO 4217 code (PLN, EUR), got {rec['currency']!r}")
    return currency


class _BadRow(Exception):
    def __init__(self, problems: list[_Bad]) -> None:
        super().__init__(problems)
        self.problems = problems


def _rate(rec: Mapping[str, str], source: str, line: int, zone: ZoneInfo, comma: bool) -> Rate:
    """One rates row; every bad cell of it is in the _BadRow raised."""
    problems: list[_Bad] = []
    fields: dict[str, Any] = {}
    cells: dict[str, Callable[[], Any]] = {
        "prefix": lambda: _prefix(rec),
        "category": lambda: _choice(rec, "category", CATEGORIES),
        "days": lambda: _days(rec["days"]),
        "hours": lambda: _hours(rec["hours"]),
        "valid_from": lambda: _when(rec, "valid_from", zone),
        "valid_to": lambda: _when(rec, "valid_to", zone),
        **{m: functools.partial(_money, rec, m, comma) for m in (
            "sell_per_min", "connection_fee", "min_charge", "short_call_fee", "buy_per_min",
            "buy_connection_fee")},
        "increments": lambda: _increments(rec, "increments"),
        "buy_increments": lambda: _increments(rec, "buy_increments"),
        "free_s": lambda: _int(rec, "free_s", 0, 3600),
        "rounding": lambda: _choice(rec, "rounding", ROUNDINGS),
        "decimals": lambda: _int(rec, "decimals", 0, MAX_DECIMALS),
        "currency": lambda: _currency(rec),
    }
    for name, parse in cells.items():
        try:
            fields[name] = parse()
        except _Bad as e:
            problems.append(e)
    if problems:
        raise _BadRow(problems)
    days, hours = fields["days"], fields["hours"]
    r = Rate(
        source=source, line=line, plan=rec["plan"], destination=rec["destination"],
        band=rec["band"] or ("all" if days is None and hours is None else "band"),
        days_text=rec["days"], hours_text=rec["hours"], **fields,
    )
    if r.valid_from and r.valid_to and r.valid_to <= r.valid_from:
        problems.append(_Bad("valid_to", f"must be after valid_from ({rec['valid_from']})"))
    if r.category == "emergency" and any(
        (r.sell_per_min, r.connection_fee, r.min_charge, r.short_call_fee, r.buy_per_min,
         r.buy_connection_fee)
    ):
        problems.append(_Bad("sell_per_min", "emergency destinations are free: every price must be 0"))
    first_charge = max(r.min_charge, r.connection_fee + r.sell_per_min * r.increments.first / _SIXTY)
    if r.short_call_fee > first_charge:
        # else a 0-second call would cost more than a billed one: cost must grow with duration
        problems.append(_Bad("short_call_fee", f"{r.short_call_fee} is more than the cheapest "
                                               f"billed call ({first_charge:.4f})"))
    if problems:
        raise _BadRow(problems)
    return r


def parse_tariff(rates: str, *, customers: str = "", holidays: str = "", zone: ZoneInfo,
                 sources: Sequence[str] = ("rates.csv", "customers.csv", "holidays.csv")) -> Tariff:
    """Validate and parse a price list; every problem found is in the TariffError raised."""
    issues = _Issues()
    src_rates, src_customers, src_holidays = sources
    comma = _delimiter(rates) == ";"
    parsed: list[Rate] = []
    for line, rec in _records(rates, src_rates, RATE_COLUMNS, issues):
        try:
            parsed.append(_rate(rec, src_rates, line, zone, comma))
        except _BadRow as e:
            for bad in e.problems:
                issues.add(src_rates, line, bad.column, bad.reason)
    _check_rates(parsed, issues)

    plans_known = {r.plan for r in parsed}
    plans: dict[str, str] = {}
    default_plan = DEFAULT_PLAN
    if customers.strip():
        for line, rec in _records(customers, src_customers, CUSTOMER_COLUMNS, issues):
            if parsed and rec["plan"] not in plans_known:
                issues.add(src_customers, line, "plan",
                           f"no such plan in {src_rates}: {rec['plan']!r} (plans: {', '.join(sorted(plans_known))})")
            if rec["customer"] in plans or (rec["customer"] == "*" and default_plan != DEFAULT_PLAN):
                issues.add(src_customers, line, "customer", f"{rec['customer']!r} listed twice")
            if rec["customer"] == "*":
                default_plan = rec["plan"]
            else:
                plans[rec["customer"]] = rec["plan"]
    if parsed and default_plan not in plans_known:
        issues.add(src_customers if customers.strip() else src_rates, 0, "",
                   f"no default plan: name a plan {DEFAULT_PLAN!r} or add a row '*,<plan>' to {src_customers}")

    days: set[date] = set()
    if holidays.strip():
        for line, rec in _records(holidays, src_holidays, HOLIDAY_COLUMNS, issues):
            try:
                days.add(date.fromisoformat(rec["date"]))
            except ValueError:
                issues.add(src_holidays, line, "date", f"not a date (YYYY-MM-DD): {rec['date']!r}")
    if not parsed and not issues.items:
        issues.add(src_rates, 0, "", "no rates")
    if issues.items:
        raise TariffError(issues.items)
    tariff = Tariff(tuple(parsed), plans, default_plan, frozenset(days), zone)
    return Tariff(tariff.rates, plans, default_plan, tariff.holidays, zone, version=tariff_version(tariff))


def _check_rates(rates: list[Rate], issues: _Issues) -> None:
    """Across rows: one currency per plan; no two rows for the same prefix, days and hours
    valid at the same time (the second could never apply)."""
    currency: dict[str, tuple[str, int]] = {}
    seen: dict[tuple[str, str, str, str], list[Rate]] = {}
    for r in rates:
        cur = currency.setdefault(r.plan, (r.currency, r.line))
        if cur[0] != r.currency:
            issues.add(r.source, r.line, "currency",
                       f"plan {r.plan!r} is in {cur[0]} (line {cur[1]}); one currency per plan")
        key = (r.plan, r.prefix, r.days_text.replace(" ", "").lower(), r.hours_text.replace(" ", ""))
        for other in seen.get(key, []):
            if _overlap(r, other):
                issues.add(r.source, r.line, "prefix",
                           f"same plan, prefix, days and hours as line {other.line} in overlapping dates")
        seen.setdefault(key, []).append(r)


def _overlap(a: Rate, b: Rate) -> bool:
    lo = [t for t in (a.valid_from, b.valid_from) if t is not None]
    hi = [t for t in (a.valid_to, b.valid_to) if t is not None]
    return not lo or not hi or max(lo) < min(hi)


def tariff_version(tariff: Tariff) -> str:
    """Content hash of what rates calls (not of comments or formatting): same prices, same version."""
    h = hashlib.blake2b(digest_size=6)
    for r in tariff.rates:
        h.update(repr((r.plan, r.prefix, r.destination, r.category, r.band,
                       sorted(r.days) if r.days is not None else None, r.hours,
                       r.valid_from.isoformat() if r.valid_from else None,
                       r.valid_to.isoformat() if r.valid_to else None,
                       *(str(d.normalize()) for d in (r.sell_per_min, r.connection_fee, r.min_charge,
                                                      r.short_call_fee, r.buy_per_min, r.buy_connection_fee)),
                       str(r.increments), r.free_s, str(r.buy_increments), r.rounding, r.decimals,
                       r.currency)).encode())
    h.update(repr((sorted(tariff.plans.items()), tariff.default_plan, sorted(tariff.holidays),
                   str(tariff.zone))).encode())
    return h.hexdigest()


# -- rating ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quote:
    """How a number would be rated at a time, and why."""

    e164: str | None
    plan: str
    local: datetime
    holiday: bool
    rate: Rate | None
    outcome: str  # rated | no_match | no_band | bad_number
    considered: tuple[Rate, ...] = ()  # the rows of the matched prefix valid then, in file order


class Rater:
    """Rates outbound calls of one PBX numbering plan with a price list."""

    def __init__(self, tariff: Tariff, profile: PbxProfile) -> None:
        self.tariff = tariff
        self.profile = profile
        self._index: dict[str, dict[str, list[Rate]]] = {}
        for r in tariff.rates:
            self._index.setdefault(r.plan, {}).setdefault(r.prefix, []).append(r)
        self._longest = max((len(r.prefix) for r in tariff.rates), default=0)

    def e164(self, number: str) -> str | None:
        p = self.profile
        return to_e164(number, country_code=p.country_code, national_prefix=p.national_prefix,
                       international_prefix=p.international_prefix)

    def prefixes(self, e164: str, plan: str) -> list[str]:
        """Every prefix of the plan that ``e164`` starts with, longest first (what \"show\" explains)."""
        index = self._index.get(plan, {})
        return [e164[:n] for n in range(min(len(e164), self._longest), 0, -1) if e164[:n] in index]

    def quote(self, number: str, at: float, customer: str) -> Quote:
        """The row that rates ``number`` dialled at epoch ``at`` by ``customer``, and why."""
        plan = self.tariff.plan_of(customer)
        t = datetime.fromtimestamp(at, self.tariff.zone)
        holiday = t.date() in self.tariff.holidays
        e164 = self.e164(number)
        if e164 is None:
            return Quote(None, plan, t, holiday, None, "bad_number")
        prefixes = self._index.get(plan, {})
        for n in range(min(len(e164), self._longest), 0, -1):
            rows = [r for r in prefixes.get(e164[:n], ()) if r.valid_at(t)]
            if not rows:
                continue  # no such destination then: a shorter prefix may still have one
            rate = next((r for r in rows if r.applies(t, holiday)), None)
            return Quote(e164, plan, t, holiday, rate, "rated" if rate else "no_band", tuple(rows))
        return Quote(e164, plan, t, holiday, None, "no_match")

    def rate(self, number: str, at: float, customer: str, *, answered: bool, talk_s: float) -> Rating:
        q = self.quote(number, at, customer)
        base: dict[str, Any] = {
            "called_e164": f"+{q.e164}" if q.e164 else "", "tariff_plan": q.plan,
            "tariff_version": self.tariff.version,
        }
        if q.considered:
            first = q.considered[0]
            base.update(tariff_prefix=first.prefix, destination=first.destination,
                        destination_category=first.category)
        r = q.rate
        if r is None:
            return Rating(rating=q.outcome, **base)
        base.update(currency=r.currency, tariff_band=r.band, rate=r.sell_per_min,
                    increments=str(r.increments))
        if not answered:
            return Rating(rating="unanswered", **base)
        seconds = billable_seconds(talk_s)
        sell, billed = r.sell(seconds)
        buy = r.buy(seconds)
        return Rating(rating="rated", cost=sell, cost_buy=buy, margin=sell - buy, billed_s=billed, **base)

    def rate_call(self, record: CallRecord) -> CallRecord:
        """The record with its cost fields set; calls that are not outbound are left as they are."""
        if record.direction != "outbound":
            return record
        rating = self.rate(record.called, record.start, record.pbx_id, answered=record.answered,
                           talk_s=record.talk_s)
        return msgspec.structs.replace(record, **msgspec.structs.asdict(rating))


def billable_seconds(talk_s: float) -> int:
    """Whole seconds of talk, floored like Asterisk's billsec (talk_s has millisecond precision)."""
    return int(Decimal(repr(talk_s)).to_integral_value(rounding=ROUND_DOWN)) if talk_s > 0 else 0


RateCall = Callable[[CallRecord], CallRecord]

