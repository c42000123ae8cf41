"""The simulated office's day: a book of customers who call again and again, missed calls called
back (or not), and calls arriving along a daily load curve in virtual local time."""

from __future__ import annotations

import collections
import random
import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from simulator import SimulatorConfig, render
from simulator import scenarios as S
from simulator.customers import FOREIGN, LANDLINE, MOBILE, CustomerBook
from simulator.schedule import OFFICE_DAY, LoadCurve, arrivals, parse_curve

WARSAW = ZoneInfo("Europe/Warsaw")
OPEN = datetime(2026, 3, 10, 8, 0, tzinfo=WARSAW).timestamp()  # a Tuesday, 08:00 local
HOUR = 3600.0


def office_day(seed: int = 7, calls: int = 300, **kw: Any) -> SimulatorConfig:
    """08:00-18:00 local with ``calls`` calls, as ``pbxpipe demo`` plays it."""
    return SimulatorConfig(**{"total_calls": calls, "calls_per_second": calls / 20, "speed": 1800, "seed": seed,
                              "start_time": OPEN, "max_concurrency": 200, **kw})


RENDERED = render(office_day())
CALLS = sorted(RENDERED.calls, key=lambda c: c["start"])
BOOK = S.CallGenerator(seed=7).book  # the book office_day() draws from


def last9(number: str) -> str:
    return number[-9:]


def local_hour(epoch: float) -> int:
    return datetime.fromtimestamp(epoch, WARSAW).hour


# ---------------------------------------------------------------------------- the customer book


def test_customer_numbers_dial_back_to_their_caller_id() -> None:
    """Each customer has an E.164 caller ID and the number as an employee dials it (0…, 0048…,
    00<country>…), routed as its line is; both end in the same 9 digits, all distinct."""
    book = CustomerBook.generate(200, seed=3)
    assert len(book) == 200 and len({last9(c.number) for c in book}) == 200
    dialled_as: dict[str, set[str]] = collections.defaultdict(set)
    for c in book:
        assert re.fullmatch(r"\+48(?:[5-8]\d|[1-4]2)\d{7}|\+44\d{10}|\+49\d{9}", c.number), c
        assert last9(c.dialled) == last9(c.number)
        dialled_as[c.line].add(S.calltype_of(c.dialled))
    assert dialled_as == {MOBILE: {"mobile"}, LANDLINE: {"national", "national-e164"},
                          FOREIGN: {"international", "international-uk"}}
    lines = collections.Counter(c.line for c in book)
    assert lines[MOBILE] > lines[LANDLINE] > lines[FOREIGN] > 0
    names = [c.name for c in book]
    assert sum(bool(re.search(r"[ĄĆĘŁŃÓŚŹŻąćęłńóśźż]", n)) for n in names) > len(names) / 2
    assert len(set(names)) > 180
    stranger = book.stranger(random.Random(1))
    assert last9(stranger.number) not in {last9(c.number) for c in book}


def test_the_book_is_seeded_and_popularity_skewed() -> None:
    """Same seed, same book; the first-ranked customers are drawn far more often than the last."""
    assert CustomerBook.generate(50, seed=4).customers == CustomerBook.generate(50, seed=4).customers
    assert CustomerBook.generate(50, seed=4).customers != CustomerBook.generate(50, seed=5).customers
    book = CustomerBook.generate(100, seed=4, skew=0.5)
    rng = random.Random(0)
    drawn = collections.Counter(book.pick(rng) for _ in range(20_000))
    top, bottom = book.customers[:5], book.customers[-5:]
    assert sum(drawn[c] for c in top) > 3 * sum(drawn[c] for c in bottom)
    flat = CustomerBook(book.customers, skew=0)
    drawn = collections.Counter(flat.pick(rng) for _ in range(20_000))
    assert max(drawn.values()) < 2 * min(drawn.values())
    mobiles = collections.Counter(book.pick(rng, MOBILE).line for _ in range(200))
    assert set(mobiles) == {MOBILE}


def test_customers_call_again_and_again() -> None:
    """Over a day, popular customers call several times, others once, a few numbers are one-off
    strangers; outbound calls also mostly go to customers, the most popular several times."""
    known = {last9(c.number) for c in BOOK}
    inbound = collections.Counter(c["caller"] for c in CALLS if c["direction"] == "inbound")
    assert max(inbound.values()) >= 5
    assert sum(1 for n in inbound.values() if n >= 2) >= 15
    assert sum(1 for n in inbound.values() if n == 1) >= 20
    strangers = sum(n for num, n in inbound.items() if last9(num) not in known)
    assert 0 < strangers < 0.2 * sum(inbound.values())
    outbound = collections.Counter(c["called"] for c in CALLS if c["direction"] == "outbound")
    assert max(outbound.values()) >= 4
    to_customers = sum(n for num, n in outbound.items() if last9(num) in known)
    assert to_customers > 0.6 * sum(outbound.values())
    # a customer is dialled the same way every time: one number per customer in the top list
    top = [num for num, _ in outbound.most_common(10)]
    assert len({last9(n) for n in top}) == len(top)


# ---------------------------------------------------------------------------- callbacks


def _contact_after(missed: dict[str, Any]) -> list[dict[str, Any]]:
    """Later calls that count as contact with the missed caller (as store.queries reads it): an
    outbound call to the number, or an answered inbound call from it."""
    key = last9(missed["caller"])
    return [c for c in CALLS if c["start"] > missed["start"]
            and ((c["direction"] == "outbound" and last9(c["called"]) == key)
                 or (c["direction"] == "inbound" and c["answered"] and last9(c["caller"]) == key))]


def test_missed_calls_are_called_back_or_not() -> None:
    """Some missed calls get a later call out to the same number (last 9 digits), some no later
    contact at all."""
    missed = [c for c in CALLS if c["direction"] == "inbound" and c["status"] == "missed"]
    assert len(missed) >= 20
    called_back = [m for m in missed if any(c["direction"] == "outbound" for c in _contact_after(m))]
    left = [m for m in missed if not _contact_after(m)]
    assert len(called_back) >= 8
    assert len(left) >= 3
    assert len(called_back) + len(left) <= len(missed)


def test_a_follow_up_comes_after_its_missed_call() -> None:
    """A callback is an outbound call by one of the extensions the missed DID rang, dialling the
    caller's number (same last 9 digits) after the missed call ended; a redial is the same caller
    calling again. Each names the missed call it follows; the others name none."""
    by_id = {c["linkedid"]: c for c in CALLS}
    kinds = collections.Counter(c["follow_up"] for c in CALLS)
    assert kinds["callback"] >= 10 and kinds["redial"] >= 1
    for c in CALLS:
        if c["follow_up"] is None:
            assert c["follow_up_of"] is None
            continue
        missed = by_id[c["follow_up_of"]]
        assert missed["direction"] == "inbound" and missed["status"] == "missed"
        assert c["start"] > missed["end"]
        if c["follow_up"] == "callback":
            assert c["direction"] == "outbound" and c["route"] == "trunk-out"
            assert last9(c["called"]) == last9(missed["caller"]) and c["called"].startswith("0")
            assert c["caller"] in S.answerers_of(missed["called"])
        else:
            assert c["direction"] == "inbound" and c["caller"] == missed["caller"]
            assert c["caller_name"] == missed["caller_name"]


def test_follow_ups_follow_their_probabilities() -> None:
    """callback_probability 1 calls every missed caller back (once due); 0 and 0 none."""
    always = render(office_day(seed=3, callback_probability=1.0, redial_probability=0.0,
                               callback_delay="fixed:60"))
    never = render(office_day(seed=3, callback_probability=0.0, redial_probability=0.0))
    assert not any(c["follow_up"] for c in never.calls)
    made = {c["follow_up_of"] for c in always.calls if c["follow_up"] == "callback"}
    missed = [c for c in always.calls if c["direction"] == "inbound" and c["status"] == "missed"]
    last_start = max(c["start"] for c in always.calls)
    # every missed call whose callback fell due before the last slot of the day was called back
    assert {m["linkedid"] for m in missed if m["end"] + 60 < last_start - 600} <= made


# ---------------------------------------------------------------------------- the load curve


def test_hourly_arrivals_follow_the_office_curve() -> None:
    """The day's calls peak at 10:00, dip at lunch, rise again in the afternoon and are quiet at
    the edges; every call starts within opening hours."""
    hours = collections.Counter(local_hour(c["start"]) for c in CALLS)
    assert set(hours) <= set(range(8, 18))
    assert hours.most_common(1)[0][0] == 10
    assert hours[10] >= 2 * hours[8] and hours[10] >= 2.5 * hours[17]
    assert hours[13] < hours[11] and hours[13] < hours[15]
    assert hours[15] > hours[16] > hours[17]


def test_arrivals_give_each_hour_its_share() -> None:
    """Each local hour gets its share of the calls (±1), in whatever zone the PBX is."""
    for offset in (3600.0, 7200.0, -5 * 3600.0):
        start = 1_767_571_200.0 + 8 * HOUR - offset  # 2026-01-05 08:00 local
        curve = LoadCurve(OFFICE_DAY, offset)
        n = 3000
        times = list(arrivals(curve, start=start, rate=n / (10 * HOUR), total=n, rng=random.Random(2)))
        assert len(times) == n and times == sorted(times)
        assert start <= times[0] and times[-1] <= start + 10 * HOUR
        counts = collections.Counter(int((t + offset) // HOUR) % 24 for t in times)
        day = sum(OFFICE_DAY[8:18])
        for hour in range(8, 18):
            assert counts[hour] == pytest.approx(n * OFFICE_DAY[hour] / day, abs=1.5), hour


def test_the_rate_is_an_average_and_speed_one_stays_steady() -> None:
    """A short real-time run is as steady as the hour it falls in, at the configured rate, at any
    hour; forever, a whole day averages the configured rate."""
    curve = LoadCurve(OFFICE_DAY, 3600.0)
    for hour in (3, 10, 12):
        start = 1_767_571_200.0 + hour * HOUR - 3600.0 + 60
        times = list(arrivals(curve, start=start, rate=2.0, total=100, rng=random.Random(5)))
        assert start <= times[0] and times[-1] <= start + 50
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert max(gaps) <= 1.0 + 1e-6 and sum(gaps) / len(gaps) == pytest.approx(0.5, rel=0.05)
    start = 1_767_571_200.0
    forever = arrivals(curve, start=start, rate=0.01, total=0, rng=random.Random(5))
    day = [t for t, _ in zip(forever, range(2000)) if t < start + 24 * HOUR]
    assert len(day) == pytest.approx(864, abs=1)
    assert parse_curve("flat") == (1.0,) * 24
    for bad in ("busy", "1,2,3", ",".join(["0"] * 24), ",".join(["-1"] * 24)):
        with pytest.raises(ValueError):
            parse_curve(bad)


def test_a_flat_curve_and_a_time_zone_are_configurable() -> None:
    """load_curve flat spreads the calls evenly; the curve follows the configured time zone."""
    flat = render(office_day(seed=2, calls=200, load_curve="flat"))
    hours = collections.Counter(local_hour(c["start"]) for c in flat.calls)
    assert max(hours.values()) - min(hours.values()) <= 3
    # the same UTC instants read in New York: the peak moves to 10:00 New York time
    ny = ZoneInfo("America/New_York")
    day = render(office_day(seed=2, calls=200, timezone="America/New_York",
                            start_time=datetime(2026, 3, 10, 8, 0, tzinfo=ny).timestamp()))
    peak = collections.Counter(datetime.fromtimestamp(c["start"], ny).hour for c in day.calls)
    assert peak.most_common(1)[0][0] == 10


# ---------------------------------------------------------------------------- determinism


def test_the_same_seed_plays_the_same_day() -> None:
    """Same config, same bytes and records (follow-ups included); another seed, another day."""
    again = render(office_day())
    assert again.capture == RENDERED.capture and again.calls == RENDERED.calls
    other = render(office_day(seed=8))
    assert other.capture != RENDERED.capture
    assert {c["caller"] for c in other.calls} != {c["caller"] for c in RENDERED.calls}


def test_bad_day_settings_are_config_errors() -> None:
    """Unknown zone, bad curve, probabilities out of range are refused up front."""
    from contracts.errors import ConfigError

    for bad in ({"timezone": "Mars/Olympus"}, {"load_curve": "weekend"}, {"callback_probability": 1.5},
                {"callback_probability": 0.7, "redial_probability": 0.5}, {"customers": -1},
                {"callback_delay": "soon"}):
        with pytest.raises(ConfigError):
            office_day(**bad).validate()
