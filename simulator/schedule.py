"""The PBX's day: when calls arrive (a load curve by local hour), and their events merged into one
timestamp-ordered stream.

Pure and lazy: the same inputs give the same stream, whether a server plays it against the clock
or ``render_capture`` writes it out at once. Times are virtual (epoch seconds of the simulated
day); the server maps them to real time with its ``speed`` factor.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from simulator.ami import Headers
from simulator.pbx import SimCall
from simulator.scenarios import CallGenerator

HOUR = 3600.0
DAY = 24 * HOUR

# Relative call intensity by local hour (00..23) of an office open 08:00-18:00: a morning peak at
# 10:00, a lunch dip, a smaller afternoon peak at 15:00, quiet edges and a trickle at night.
OFFICE_DAY: tuple[float, ...] = (
    0.03, 0.02, 0.02, 0.02, 0.02, 0.03, 0.05, 0.15,  # 00-07
    0.40, 0.75, 1.00, 0.75, 0.50, 0.42, 0.62, 0.68,  # 08-15
    0.48, 0.30, 0.12, 0.07, 0.05, 0.04, 0.04, 0.03,  # 16-23
)
CURVES: dict[str, tuple[float, ...]] = {"office": OFFICE_DAY, "flat": (1.0,) * 24}


def parse_curve(spec: str) -> tuple[float, ...]:
    """``office``, ``flat`` or 24 comma-separated weights (local hours 00..23) → 24 weights."""
    spec = spec.strip()
    if spec in CURVES:
        return CURVES[spec]
    try:
        weights = tuple(float(x) for x in spec.split(","))
    except ValueError:
        raise ValueError(f"bad load curve {spec!r}: use {'/'.join(CURVES)} or 24 weights a,b,…") from None
    if len(weights) != 24 or any(not math.isfinite(w) or w < 0 for w in weights) or not any(weights):
        raise ValueError(f"bad load curve {spec!r}: 24 weights >= 0, one at least > 0")
    return weights


@dataclass(frozen=True, slots=True)
class LoadCurve:
    """Call intensity as a step function of the local hour; ``utc_offset`` is the PBX's local time
    minus UTC in seconds (the caller resolves its time zone: this module reads no tz database)."""

    weights: tuple[float, ...] = OFFICE_DAY
    utc_offset: float = 0.0

    def weight(self, t: float) -> float:
        return self.weights[int((t + self.utc_offset) // HOUR) % 24]

    def mean(self) -> float:
        return sum(self.weights) / 24

    def mass(self, t0: float, t1: float) -> float:
        """∫ weight dt over [t0, t1] (weight-seconds)."""
        days = math.floor((t1 - t0) / DAY)
        total = days * DAY * self.mean()
        # in local seconds, where hour boundaries are exact multiples of 3600
        x, x1 = t0 + days * DAY + self.utc_offset, t1 + self.utc_offset
        while x < x1:
            hour = math.floor(x / HOUR)
            end = min((hour + 1) * HOUR, x1)
            total += self.weights[hour % 24] * (end - x)
            x = end
        return total

    def advance(self, t: float, mass: float) -> float:
        """The time ``t' >= t`` with ``mass(t, t') == mass``."""
        day_mass = DAY * self.mean()
        days = math.floor(mass / day_mass)
        x, mass = t + days * DAY + self.utc_offset, mass - days * day_mass
        while True:
            hour = math.floor(x / HOUR)
            w, end = self.weights[hour % 24], (hour + 1) * HOUR
            if w > 0 and w * (end - x) >= mass:
                return x + mass / w - self.utc_offset
            mass -= w * (end - x)
            x = end


def arrivals(curve: LoadCurve, *, start: float, rate: float, total: int, rng: random.Random) -> Iterator[float]:
    """When calls arrive from ``start``: at ``rate`` calls per virtual second on average, as busy
    at each moment as ``curve`` says.

    The curve's mass is cut into equal shares, one per call, and each call arrives at a random
    moment of its own share: each hour gets its share of the calls (±1), gaps still vary. With
    ``total`` > 0 the ``total`` calls fill ``[start, start + total / rate]`` exactly, the curve
    scaled over that span (so the average holds whatever the hour; a span short against an hour
    is a steady rate). With ``total`` 0 it goes on forever, the average taken over a whole day.
    """
    if total > 0:
        end = start + total / rate
        mass = curve.mass(start, end)
        if mass <= 0:  # a custom curve that is zero all along the span: a steady rate
            curve, mass = LoadCurve(CURVES["flat"]), end - start
        share = mass / total
    else:
        share = curve.mean() / rate
    t, at, k = start, 0.0, 0
    while total <= 0 or k < total:
        target = (k + rng.random()) * share
        t = curve.advance(t, target - at)
        at = target
        k += 1
        yield t


@dataclass(frozen=True, slots=True)
class Emitted:
    """One event of the merged stream, at virtual time ``ts``."""

    ts: float
    headers: Headers


@dataclass(frozen=True, slots=True)
class Finished:
    """A call whose last event has just been emitted."""

    ts: float
    call: SimCall


def play(generator: CallGenerator, times: Iterable[float], *, max_concurrency: int) -> Iterator[Emitted | Finished]:
    """Place a call at each of ``times`` (later when ``max_concurrency`` calls are up) and yield
    every event in timestamp order, interleaved; ends when ``times`` does and every call is over."""
    heap: list[tuple[float, int, int]] = []  # (ts, call number, event index)
    active: dict[int, SimCall] = {}
    placed = 0
    upcoming = iter(times)
    next_place = next(upcoming, None)
    last_ts = -math.inf
    max_concurrency = max(1, max_concurrency)
    while True:
        if (next_place is not None and len(active) < max_concurrency
                and (not heap or next_place <= heap[0][0])):
            at = max(next_place, last_ts)
            call = generator.next_call(at)
            active[placed] = call
            if call.events:
                heapq.heappush(heap, (call.start + call.events[0][0], placed, 0))
            placed += 1
            next_place = next(upcoming, None)
            continue
        if not heap:
            if next_place is None:
                return
            # every active call is empty (cannot happen with real kinds): move on
            active.clear()
            continue
        ts, n, i = heapq.heappop(heap)
        call = active[n]
        last_ts = ts
        yield Emitted(ts, call.events[i][1])
        if i + 1 < len(call.events):
            heapq.heappush(heap, (call.start + call.events[i + 1][0], n, i + 1))
        else:
            del active[n]
            yield Finished(ts, call)
