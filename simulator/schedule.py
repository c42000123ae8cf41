"""The PBX's day: calls placed at a steady rate, their events merged into one timestamp-ordered stream.

Pure and lazy: the same inputs give the same stream, whether a server plays it against the clock
or ``render_capture`` writes it out at once. Times are virtual (epoch seconds of the simulated
day); the server maps them to real time with its ``speed`` factor.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass

from simulator.ami import Headers
from simulator.pbx import SimCall
from simulator.scenarios import CallGenerator


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


def play(
    generator: CallGenerator,
    *,
    start_time: float,
    interval: float,
    total: int,
    max_concurrency: int,
) -> Iterator[Emitted | Finished]:
    """Place a call every ``interval`` virtual seconds (later when ``max_concurrency`` calls are up),
    ``total`` calls (0: forever), and yield every event in timestamp order, interleaved."""
    heap: list[tuple[float, int, int]] = []  # (ts, call number, event index)
    active: dict[int, SimCall] = {}
    placed = 0
    next_place = start_time
    last_ts = start_time
    max_concurrency = max(1, max_concurrency)
    while True:
        may_place = total <= 0 or placed < total
        if may_place and len(active) < max_concurrency and (not heap or next_place <= heap[0][0]):
            at = max(next_place, last_ts)
            call = generator.next_call(at)
            active[placed] = call
            if call.events:
                heapq.heappush(heap, (call.start + call.events[0][0], placed, 0))
            placed += 1
            next_place = at + interval
            continue
        if not heap:
            if not may_place:
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
