"""The load chart's geometry: calls per hour of the day (summed over the weekdays), answered and
missed stacked. Pure: numbers in, bar rectangles out; the template draws them as SVG."""

from __future__ import annotations

from typing import Any

import msgspec

from api.stats.schemas import Load

WIDTH, HEIGHT, BAR_GAP = 720, 180, 4


class Bar(msgspec.Struct, frozen=True, kw_only=True):
    hour: int
    x: float
    width: float
    calls: int
    answered: int
    missed: int
    answered_y: float
    answered_h: float
    missed_y: float
    missed_h: float


def load_by_hour(load: Load) -> dict[str, Any]:
    hours = {h: [0, 0, 0] for h in range(24)}
    for c in load.cells:
        totals = hours[c.hour]
        totals[0] += c.calls
        totals[1] += c.answered
        totals[2] += c.missed
    top = max((t[0] for t in hours.values()), default=0) or 1
    slot = WIDTH / 24
    bars = []
    for h, (calls, answered, missed) in hours.items():
        answered_h = HEIGHT * answered / top
        missed_h = HEIGHT * missed / top
        bars.append(Bar(hour=h, x=round(h * slot + BAR_GAP / 2, 1), width=round(slot - BAR_GAP, 1),
                        calls=calls, answered=answered, missed=missed,
                        answered_y=round(HEIGHT - answered_h, 1), answered_h=round(answered_h, 1),
                        missed_y=round(HEIGHT - answered_h - missed_h, 1),
                        missed_h=round(missed_h, 1)))
    return {"width": WIDTH, "height": HEIGHT, "bars": bars, "top": top}
