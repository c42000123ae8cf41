"""Tariffs, pure: numbers read as E.164, longest prefix, increments and rounding, dates, time bands
(across midnight, holidays, daylight-saving changes), CSV validation, spend alerts, the capture rated."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from importlib import resources
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from contracts.errors import TariffError
from contracts.profile import DEFAULT_PROFILE
from contracts.records import CallRecord
from contracts.tariffs import Rating
from enrich.calls import CallBuilder
from enrich.spend import SpendRule, SpendWatch
from enrich.tariffs import (
    Increments,
    Rater,
    billable_seconds,
    parse_tariff,
    to_e164,
)
from store.tariffs import RATING_REVISION_SHIFT, rerated_version

WARSAW = ZoneInfo("Europe/Warsaw")
HEADER = ("plan,prefix,destination,category,band,days,hours,valid_from,valid_to,sell_per_min,"
          "connection_fee,min_charge,short_call_fee,increments,free_s,buy_per_min,buy_increments,"
          "rounding,decimals,currency")
COLS = HEADER.split(",")
DEFAULTS = {"plan": "default", "destination": "x", "category": "national", "sell_per_min": "0.10",
            "increments": "1/1", "buy_increments": "1/1", "rounding": "half_up", "decimals": "2",
            "currency": "PLN"}


def rates_csv(*rows: dict[str, str]) -> str:
    lines = [HEADER]
    for r in rows:
        row = {**DEFAULTS, **r}
        lines.append(",".join(row.get(c, "") for c in COLS))
    return "\n".join(lines) + "\n"


def rater(*rows: dict[str, str], customers: str = "", holidays: str = "") -> Rater:
    tariff = parse_tariff(rates_csv(*rows), customers=customers, holidays=holidays, zone=WARSAW)
    return Rater(tariff, DEFAULT_PROFILE)


def at(text: str, zone: ZoneInfo = WARSAW) -> float:
    t = datetime.fromisoformat(text)
    return (t if t.tzinfo else t.replace(tzinfo=zone)).timestamp()


def cost(r: Rater, number: str, when: str, talk_s: float, customer: str = "pbx1") -> Rating:
    return r.rate(number, at(when), customer, answered=True, talk_s=talk_s)


TUESDAY = "2026-11-24T10:00"


# -- numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("dialled", "e164"), [
    ("0048221112233", "48221112233"),  # capture s12: international prefix, own country
    ("0012125551234", "12125551234"),  # s14
    ("0700123456", "48700123456"),  # s15: national prefix
    ("0601234567", "48601234567"),  # s16
    ("112", "48112"),  # s18: dialled bare
    ("00441312345678", "441312345678"),  # s31
    ("+48 601-234-567", "48601234567"),
    ("601234567", "48601234567"),
    ("abc", None),
    ("", None),
])
def test_dialled_numbers_read_as_e164_with_the_profile_prefixes(dialled: str, e164: str | None) -> None:
    """00 is international, 0 national (country code added), + always international."""
    assert to_e164(dialled, country_code="48", national_prefix="0", international_prefix="00") == e164


def test_a_pbx_dialled_without_national_prefix() -> None:
    """With national_prefix "" every number without 00 or + is national."""
    assert to_e164("601234567", country_code="48", national_prefix="", international_prefix="00") == "48601234567"
    assert to_e164("0044123", country_code="48", national_prefix="", international_prefix="00") == "44123"


# -- matching --------------------------------------------------------------------------------


def test_longest_prefix_wins() -> None:
    """The most specific destination applies, whatever the row order."""
    r = rater({"prefix": "48601", "destination": "special", "sell_per_min": "0.50"},
              {"prefix": "48", "destination": "Poland", "sell_per_min": "0.10"},
              {"prefix": "4860", "destination": "mobile", "sell_per_min": "0.20", "category": "mobile"})
    assert cost(r, "0601234567", TUESDAY, 60).destination == "special"
    assert cost(r, "0602234567", TUESDAY, 60).tariff_prefix == "4860"
    assert cost(r, "0221234567", TUESDAY, 60).tariff_prefix == "48"
    got = cost(r, "0044123456", TUESDAY, 60)
    assert (got.rating, got.cost, got.called_e164) == ("no_match", 0, "+44123456")


def test_plans_per_customer_and_the_default_plan() -> None:
    """A listed customer is rated on its plan, everyone else on the default ("*") plan."""
    r = rater({"plan": "standard", "prefix": "48", "sell_per_min": "0.60"},
              {"plan": "business", "prefix": "48", "sell_per_min": "0.30"},
              customers="customer,plan\n*,standard\nacme,business\n")
    assert cost(r, "0221234567", TUESDAY, 60, "acme").cost == Decimal("0.30")
    assert cost(r, "0221234567", TUESDAY, 60, "other").cost == Decimal("0.60")
    assert cost(r, "0221234567", TUESDAY, 60, "other").tariff_plan == "standard"


# -- increments, rounding, fees ---------------------------------------------------------------


@pytest.mark.parametrize(("increments", "seconds", "billed"), [
    ((60, 60), 0, 0), ((60, 60), 1, 60), ((60, 60), 59, 60), ((60, 60), 60, 60),
    ((60, 60), 61, 120), ((60, 60), 119, 120), ((60, 60), 120, 120), ((60, 60), 121, 180),
    ((30, 6), 1, 30), ((30, 6), 29, 30), ((30, 6), 30, 30), ((30, 6), 31, 36), ((30, 6), 36, 36),
    ((30, 6), 37, 42), ((60, 1), 59, 60), ((60, 1), 61, 61),
    ((1, 1), 1, 1), ((1, 1), 59, 59), ((1, 1), 60, 60), ((1, 1), 61, 61),
])
def test_increments_round_up_at_every_boundary(increments: tuple[int, int], seconds: int, billed: int) -> None:
    """The first increment is charged whole, then whole next increments."""
    assert Increments(*increments).billed(seconds) == billed


@pytest.mark.parametrize(("talk_s", "seconds"), [(0.0, 0), (0.025, 0), (59.999, 59), (60.0, 60), (60.001, 60), (20.023, 20)])
def test_talk_time_is_floored_to_whole_seconds_like_billsec(talk_s: float, seconds: int) -> None:
    assert billable_seconds(talk_s) == seconds


@pytest.mark.parametrize(("talk_s", "expected"), [(59, "1.20"), (60, "1.20"), (61, "2.40"), (120, "2.40"), (121, "3.60")])
def test_cost_at_minute_boundaries(talk_s: float, expected: str) -> None:
    """60/60 at 1.20/min: 59, 60 s cost one minute; 61 s two."""
    r = rater({"prefix": "48", "sell_per_min": "1.20", "increments": "60/60"})
    assert cost(r, "0221234567", TUESDAY, talk_s).cost == Decimal(expected)


@pytest.mark.parametrize(("rounding", "per_min", "talk_s", "expected"), [
    ("half_up", "0.09", 30, "0.05"),  # 0.045
    ("half_even", "0.09", 30, "0.04"),
    ("up", "0.10", 61, "0.11"),  # 0.10166…
    ("down", "0.10", 61, "0.10"),
    ("half_up", "0.10", 61, "0.10"),
])
def test_rounding_modes(rounding: str, per_min: str, talk_s: float, expected: str) -> None:
    r = rater({"prefix": "48", "sell_per_min": per_min, "rounding": rounding})
    assert cost(r, "0221234567", TUESDAY, talk_s).cost == Decimal(expected)


def test_four_decimals_when_the_price_list_says_so() -> None:
    r = rater({"prefix": "48", "sell_per_min": "0.10", "decimals": "4"})
    assert cost(r, "0221234567", TUESDAY, 61).cost == Decimal("0.1017")


def test_fees_minimum_free_seconds_and_short_calls() -> None:
    """Connection fee on every billed call; at least min_charge; calls within free seconds (and
    answered zero-second calls) cost the short-call fee; the buy side has its own increments."""
    r = rater({"prefix": "48700", "category": "premium", "sell_per_min": "3.69",
               "connection_fee": "0.50", "min_charge": "1.00", "short_call_fee": "0.20",
               "free_s": "3", "increments": "60/60", "buy_per_min": "3.00", "buy_increments": "1/1"})
    assert cost(r, "0700123456", TUESDAY, 0.025).cost == Decimal("0.20")  # capture s15: 0 s
    assert cost(r, "0700123456", TUESDAY, 3).cost == Decimal("0.20")
    four = cost(r, "0700123456", TUESDAY, 4)
    assert (four.cost, four.billed_s, four.cost_buy, four.margin) == (
        Decimal("4.19"), 60, Decimal("0.20"), Decimal("3.99"))
    cheap = rater({"prefix": "48", "sell_per_min": "0.01", "min_charge": "0.05"})
    assert cost(cheap, "0221234567", TUESDAY, 10).cost == Decimal("0.05")


def test_emergency_is_free_and_unanswered_calls_cost_nothing() -> None:
    r = rater({"prefix": "48112", "category": "emergency", "sell_per_min": "0"},
              {"prefix": "48", "sell_per_min": "1.00", "connection_fee": "0.30"})
    sos = cost(r, "112", TUESDAY, 300)
    assert (sos.cost, sos.destination_category, sos.rating) == (0, "emergency", "rated")
    missed = r.rate("0221234567", at(TUESDAY), "pbx1", answered=False, talk_s=0)
    assert (missed.rating, missed.cost, missed.tariff_prefix) == ("unanswered", 0, "48")


money = st.decimals(min_value=0, max_value=10, places=2)
inc = st.tuples(st.integers(1, 120), st.integers(1, 60)).map(lambda t: f"{t[0]}/{t[1]}")


@settings(max_examples=150, deadline=None)
@given(sell=money, conn=money, minc=money, short=money, increments=inc, buy_increments=inc,
       free_s=st.integers(0, 10), rounding=st.sampled_from(["half_up", "up", "down", "half_even"]),
       decimals=st.integers(0, 4), durations=st.lists(st.floats(0, 7200), min_size=2, max_size=20))
def test_cost_never_decreases_with_duration(sell, conn, minc, short, increments, buy_increments,
                                            free_s, rounding, decimals, durations) -> None:
    """Whatever a (valid) row says, a longer call never costs less, sell or buy."""
    row = {"prefix": "48", "sell_per_min": str(sell), "connection_fee": str(conn),
           "min_charge": str(minc), "short_call_fee": str(short), "increments": increments,
           "buy_increments": buy_increments, "buy_per_min": str(sell / 2), "free_s": str(free_s),
           "rounding": rounding, "decimals": str(decimals)}
    try:
        r = rater(row)
    except TariffError:
        assume(False)  # the validation refuses a short-call fee above the cheapest billed call
        raise
    rated = [cost(r, "0221234567", TUESDAY, d) for d in sorted(durations)]
    for a, b in zip(rated, rated[1:]):
        assert a.cost <= b.cost and a.cost_buy <= b.cost_buy and a.billed_s <= b.billed_s


# -- dates and time bands -----------------------------------------------------------------------


def test_the_tariff_valid_when_the_call_started_applies() -> None:
    """valid_from inclusive, valid_to exclusive, in local time; a prefix with no row valid then
    falls back to a shorter one."""
    r = rater({"prefix": "48", "sell_per_min": "0.60", "valid_to": "2027-01-01"},
              {"prefix": "48", "sell_per_min": "1.20", "valid_from": "2027-01-01"},
              {"prefix": "4822", "sell_per_min": "0.06", "valid_from": "2027-02-01", "destination": "Warsaw"})
    assert cost(r, "0221234567", "2026-12-31T23:59:59", 60).cost == Decimal("0.60")
    assert cost(r, "0221234567", "2027-01-01T00:00:00", 60).cost == Decimal("1.20")
    assert cost(r, "0221234567", "2026-12-31T23:30:00+00:00", 60).cost == Decimal("1.20")  # 00:30 local
    assert cost(r, "0221234567", "2027-01-31T12:00", 60).tariff_prefix == "48"
    assert cost(r, "0221234567", "2027-02-01T12:00", 60).tariff_prefix == "4822"


BANDS = (
    {"prefix": "48", "band": "peak", "days": "mon-fri", "hours": "08:00-18:00", "sell_per_min": "0.60"},
    {"prefix": "48", "band": "night", "hours": "22:00-06:00", "sell_per_min": "0.06"},
    {"prefix": "48", "band": "offpeak", "sell_per_min": "0.30"},
)


@pytest.mark.parametrize(("when", "band"), [
    ("2026-11-24T07:59:59", "offpeak"), ("2026-11-24T08:00", "peak"), ("2026-11-24T17:59:59", "peak"),
    ("2026-11-24T18:00", "offpeak"), ("2026-11-24T21:59:59", "offpeak"),
    ("2026-11-24T22:00", "night"), ("2026-11-24T23:59:59", "night"),  # across midnight
    ("2026-11-25T00:00", "night"), ("2026-11-25T05:59:59", "night"), ("2026-11-25T06:00", "offpeak"),
    ("2026-11-28T10:00", "offpeak"),  # Saturday
    ("2026-11-11T10:00", "offpeak"),  # a Wednesday, but a holiday
])
def test_time_bands_by_local_time_weekday_and_holiday(when: str, band: str) -> None:
    """The first row (file order) whose days and hours contain the local start applies; on a
    holiday weekday rows do not."""
    r = rater(*BANDS, holidays="date,name\n2026-11-11,Independence Day\n")
    assert cost(r, "0221234567", when, 60).tariff_band == band


@pytest.mark.parametrize(("utc", "band"), [
    ("2026-03-27T06:30:00+00:00", "offpeak"),  # Fri, CET: 07:30
    ("2026-03-30T06:30:00+00:00", "peak"),  # Mon, CEST: 08:30 (clocks went forward on the 29th)
    ("2026-03-29T00:59:59+00:00", "night"),  # 01:59:59 CET
    ("2026-03-29T01:00:00+00:00", "night"),  # 03:00 CEST: 02:xx never happened
    ("2026-03-29T03:59:59+00:00", "night"),  # 05:59:59 CEST
    ("2026-03-29T04:00:00+00:00", "offpeak"),  # 06:00 CEST
    ("2026-10-23T06:30:00+00:00", "peak"),  # Fri, CEST: 08:30
    ("2026-10-26T06:30:00+00:00", "offpeak"),  # Mon, CET: 07:30 (clocks went back on the 25th)
    ("2026-10-25T00:30:00+00:00", "night"),  # 02:30 CEST, first time
    ("2026-10-25T01:30:00+00:00", "night"),  # 02:30 CET, second time
    ("2026-10-25T04:59:59+00:00", "night"),  # 05:59:59 CET
    ("2026-10-25T05:00:00+00:00", "offpeak"),  # 06:00 CET
])
def test_time_bands_across_daylight_saving_changes(utc: str, band: str) -> None:
    """Bands are local wall-clock times in Europe/Warsaw, whatever the UTC offset that day."""
    assert cost(rater(*BANDS), "0221234567", utc, 60).tariff_band == band


def test_no_band_covering_the_time_is_reported_not_guessed() -> None:
    r = rater({"prefix": "48", "band": "peak", "days": "mon-fri", "hours": "08:00-18:00"})
    got = cost(r, "0221234567", "2026-11-28T10:00", 60)
    assert (got.rating, got.cost, got.tariff_prefix) == ("no_band", 0, "48")


# -- validation -------------------------------------------------------------------------------


def issues(rates: str, **kw: str) -> list[str]:
    with pytest.raises(TariffError) as e:
        parse_tariff(rates, zone=WARSAW, **kw)
    return e.value.issues


def test_validation_names_line_column_and_reason() -> None:
    """Every bad cell is reported (not just the first), as file:line: column: reason."""
    text = (f"# a comment line\n{HEADER}\n"
            "default,48,Poland,national,,,,,,0.10,,,,60/60,,,1/1,half_up,2,PLN\n"
            "default,48x,Bad,national,,,,,,0.10,,,,60/60,,,1/1,half_up,2,PLN\n"
            "default,49,Germany,international,,,,,,0,12,,,,60/60,,,1/1,half_up,2,PLN\n"
            "default,44,UK,intl,,,,,,0.10,,,,60/60,,,1/1,half_up,2,PLN\n"
            "default,33,France,international,,,,,,0.10,,,,60-60,,,1/1,half_up,2,PLN\n"
            "default,34,Spain,international,,mon-fry,25:00-08:00,,,0.10,,,,60/60,,,1/1,half_up,2,PLN\n"
            "default,112,SOS,emergency,,,,,,0.10,,,,1/1,,,1/1,half_up,2,PLN\n"
            "default,48,Poland again,national,,,,,,0.20,,,,60/60,,,1/1,half_up,2,PLN\n"
            "default,41,Swiss,international,,,,,,0.123456,,,,60/60,,,1/1,half_up,2,EUR\n"
            "default,,NoPrefix,international,,,,,,0.10,,,,60/60,,,1/1,half_up,2,PLN\n")
    got = issues(text)
    assert "rates.csv:4: prefix: must be E.164 digits (country code first, e.g. 4860), got '48x'" in got
    assert "rates.csv:5: column 21: 21 cells but the header has 20 columns" in got  # "0,12"
    assert any(i.startswith("rates.csv:6: category: must be one of national") for i in got)
    assert any(i.startswith("rates.csv:7: increments: must be first/next seconds") for i in got)
    assert any(i.startswith("rates.csv:8: days: unknown day 'mon-fry'") for i in got)
    assert "rates.csv:9: sell_per_min: emergency destinations are free: every price must be 0" in got
    assert "rates.csv:10: prefix: same plan, prefix, days and hours as line 3 in overlapping dates" in got
    assert "rates.csv:11: sell_per_min: at most 4 decimal places, got '0.123456'" in got
    assert "rates.csv:12: prefix: required, but empty" in got


def test_validation_of_the_header_and_of_the_other_files() -> None:
    unknown, missing = issues("plan,prefix,destination,category,sell_per_min,curency\n")
    assert unknown.startswith("rates.csv:1: curency: unknown column (known: plan, prefix, ")
    assert missing == "rates.csv:1: currency: required column missing from the header"
    got = issues(rates_csv({"prefix": "48"}), customers="customer,plan\nacme,gold\n",
                 holidays="date,name\n2026-13-01,bad\n")
    assert "customers.csv:2: plan: no such plan in rates.csv: 'gold' (plans: default)" in got
    assert "holidays.csv:2: date: not a date (YYYY-MM-DD): '2026-13-01'" in got
    assert issues(rates_csv({"plan": "gold", "prefix": "48"})) == [
        "rates.csv: no default plan: name a plan 'default' or add a row '*,<plan>' to customers.csv"]


def test_decimal_comma_hint_and_semicolon_spreadsheets() -> None:
    """A comma decimal in a comma CSV is refused with a hint; a semicolon CSV (Polish Excel)
    may use decimal commas."""
    got = issues(f"{HEADER}\ndefault,48,PL,national,,,,,,\"0,10\",,,,1/1,,,1/1,half_up,2,PLN\n")
    assert got == ["rates.csv:2: sell_per_min: not a decimal number: '0,10' (use a dot as the decimal separator)"]
    t = parse_tariff("plan;prefix;destination;category;sell_per_min;currency\ndefault;48;PL;national;0,10;PLN\n",
                     zone=WARSAW)
    assert t.rates[0].sell_per_min == Decimal("0.10")


def test_version_follows_prices_not_formatting() -> None:
    a = parse_tariff(rates_csv({"prefix": "48"}), zone=WARSAW)
    b = parse_tariff("# comment\n\n" + rates_csv({"prefix": "48", "sell_per_min": "0.1"}), zone=WARSAW)
    c = parse_tariff(rates_csv({"prefix": "48", "sell_per_min": "0.11"}), zone=WARSAW)
    assert a.version == b.version != c.version


def test_the_sample_price_list_validates() -> None:
    base = resources.files("enrich").joinpath("data", "tariffs_pl")
    t = parse_tariff(base.joinpath("rates.csv").read_text(), zone=WARSAW,
                     customers=base.joinpath("customers.csv").read_text(),
                     holidays=base.joinpath("holidays.csv").read_text())
    assert {r.currency for r in t.rates} == {"PLN"}
    assert {r.category for r in t.rates} == {"national", "mobile", "international", "premium", "emergency"}
    assert t.default_plan == "standard" and t.plan_of("acme") == "business"


# -- records ------------------------------------------------------------------------------------


def test_call_record_ends_with_the_rating_fields() -> None:
    """One source of truth: CallRecord's last fields are Rating's, same names, order, defaults."""
    n = len(Rating.__struct_fields__)
    assert CallRecord.__struct_fields__[-n:] == Rating.__struct_fields__
    assert CallRecord.__struct_defaults__[-n:] == Rating.__struct_defaults__


def test_records_encoded_before_tariffs_still_decode() -> None:
    """A msgpack CallRecord without the cost fields (an older producer) decodes as not rated."""
    rec = _record()
    old = {k: v for k, v in msgspec.to_builtins(rec).items() if k not in Rating.__struct_fields__}
    back = msgspec.msgpack.decode(msgspec.msgpack.encode(old), type=CallRecord)
    assert back.cost == Decimal(0) and back.rating == "" and back.version == rec.version
    rated = msgspec.structs.replace(rec, cost=Decimal("1.2345"))
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(rated), type=CallRecord).cost == Decimal("1.2345")


@given(st.integers(0, 2**32 - 1), st.integers(0, 1000))
def test_a_rerated_version_beats_every_version_before_it(events: int, revisions: int) -> None:
    """Each re-rating raises the version above anything the pipeline or earlier re-ratings wrote;
    the events count stays readable in the low bits."""
    v = events
    for _ in range(revisions):
        v = rerated_version(v)
    nxt = rerated_version(v)
    assert nxt > v and nxt > 2**32 - 1 and nxt & (2**RATING_REVISION_SHIFT - 1) == events


def _record(**kw: object) -> CallRecord:
    base: dict[str, object] = dict(
        call_id="pbx1:1", pbx_id="pbx1", linkedid="1", direction="outbound", caller="101",
        caller_name="", called="0700123456", answered=True, first_answered_by="external",
        last_answered_by="external", status="answered", start=at(TUESDAY), answer=None,
        end=at(TUESDAY) + 60, duration_s=60.0, wait_s=0.0, talk_s=60.0, hangup_cause=16,
        hangup_cause_text="", hangup_by="caller", extensions_rang=(), queue="", transferred=False,
        forwarded=False, recordings=(), disposition="ANSWERED", incomplete=False, version=5)
    base.update(kw)
    return msgspec.convert(base, CallRecord)


# -- unusual traffic ---------------------------------------------------------------------------


def test_spend_alert_once_per_extension_and_hour() -> None:
    """Spend to watched categories above the limit within a clock hour alerts once; other
    categories, other hours and other extensions count separately; ids are deterministic."""
    r = rater({"prefix": "48700", "category": "premium", "sell_per_min": "3.00", "increments": "60/60"},
              {"prefix": "48", "sell_per_min": "3.00"})
    watch = SpendWatch(SpendRule(max_cost=Decimal("5")))
    t0 = at("2026-11-24T10:00")

    def call(i: int, called: str = "0700123456", caller: str = "101", minute: int = 0) -> CallRecord:
        return r.rate_call(_record(call_id=f"pbx1:{i}", called=called, caller=caller, start=t0 + minute * 60))

    assert watch.observe(call(1)) == []
    assert watch.observe(call(2, called="0221234567")) == []  # national: not watched
    assert watch.observe(call(3, caller="102")) == []
    [alert] = watch.observe(call(4, minute=10))  # 101: 6.00 > 5
    assert (alert.kind, alert.key, alert.calls, alert.cost, alert.call_id) == (
        "spend", "pbx1/101", 2, Decimal("6.00"), "pbx1:4")
    assert watch.observe(call(5, minute=20)) == []  # once per hour
    assert watch.observe(call(6, minute=70)) == []  # the next hour starts from zero
    again = SpendWatch(SpendRule(max_cost=Decimal("5")))
    alerts = [a for i in (1, 2, 3, 4) for a in again.observe(call(i, minute=10 if i == 4 else 0))]
    assert [a.alert_id for a in alerts] == [alert.alert_id]


def test_call_count_alert_per_customer() -> None:
    r = rater({"prefix": "44", "category": "international", "sell_per_min": "0.10"},
              {"prefix": "48", "sell_per_min": "0.10"})
    watch = SpendWatch(SpendRule(scope="customer", max_calls=2))
    calls = [r.rate_call(_record(call_id=f"pbx1:{i}", caller=str(100 + i), called="0044123456",
                                 answered=False, talk_s=0.0)) for i in range(4)]
    out = [a for c in calls for a in watch.observe(c)]
    assert [(a.kind, a.key, a.calls) for a in out] == [("calls", "pbx1", 3)]
    assert SpendWatch(SpendRule()).observe(calls[0]) == []  # no limits: off


# -- the real capture ---------------------------------------------------------------------------

CAPTURE_COSTS = {  # sample price list, plan "business" (customer acme), 17:5x on a Tuesday
    "s12_out_national_0048_remote_hangs": ("rated", "48", "0.02", 20),
    "s14_out_intl_us_001": ("rated", "1", "0.01", 8),
    "s15_out_premium_0700_zero_talk": ("rated", "48700", "0.00", 0),
    "s16_out_mobile_0601_recorded": ("rated", "4860", "0.05", 40),
    "s18_out_emergency_112": ("rated", "48112", "0.00", 0),
    "s19_out_remote_congestion": ("unanswered", "44", "0.00", 0),
    "s20_out_blocked_route_congestion": ("no_match", "", "0.00", 0),
    "s21_out_busy": ("unanswered", "48", "0.00", 0),
    "s22_out_noanswer_caller_gives_up": ("unanswered", "48", "0.00", 0),
    "s31_burst_out_uk": ("rated", "44", "0.03", 15),
}


def test_the_capture_outbound_calls_rated_with_the_sample_price_list(
        capture_envelopes, capture_profile, expected_calls) -> None:
    """CallBuilder with the sample list's Rater: every outbound call of the real capture gets its
    cost; inbound and internal calls stay unrated."""
    base = resources.files("enrich").joinpath("data", "tariffs_pl")
    tariff = parse_tariff(base.joinpath("rates.csv").read_text(), zone=WARSAW,
                          customers=base.joinpath("customers.csv").read_text(),
                          holidays=base.joinpath("holidays.csv").read_text())
    builder = CallBuilder(capture_profile, rate=Rater(tariff, capture_profile).rate_call)
    out = []
    for env in capture_envelopes:
        out += builder.feed(env)
        out += builder.advance(env.recv_time)
    records = {r.linkedid: r for r in out + builder.flush() if isinstance(r, CallRecord)}
    for name, want in expected_calls.items():
        rec = records[want["linkedid"]]
        if want["direction"] != "outbound":
            assert (rec.rating, rec.cost) == ("", 0), name
            continue
        rating, prefix, amount, billed = CAPTURE_COSTS[name]
        assert (rec.rating, rec.tariff_prefix, rec.cost, rec.billed_s) == (
            rating, prefix, Decimal(amount), billed), name
        assert rec.tariff_plan == "business" and rec.tariff_version == tariff.version, name
        assert rec.currency == ("" if rating == "no_match" else "PLN"), name
        assert rec.margin == rec.cost - rec.cost_buy, name
