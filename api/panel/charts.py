"""The panel's load charts: calls per hour of the day (summed over the weekdays) as stacked bars
(answered, missed, other), and calls per weekday and hour as a grid. Pure: the API's load cells
in, geometry and shades out; the templates draw them (SVG, an HTML table)."""

from __future__ import annotations

import msgspec

from api.panel.present import heat
from api.stats.schemas import Load

WIDTH, HEIGHT, BAR_GAP = 720, 160, 4
LEFT, BOTTOM = 32, 18  # room for the count axis and the hour labels
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class Bar(msgspec.Struct, frozen=True, kw_only=True):
    """One hour's bar: answered at the bottom, missed on it, other calls (outgoing or internal
    calls nobody answered) on top."""

    hour: int
    x: float
    width: float
    calls: int
    answered: int
    missed: int
    other: int
    answered_y: float
    answered_h: float
    missed_y: float
    missed_h: float
    other_y: float
    other_h: float


class HourChart(msgspec.Struct, frozen=True, kw_only=True):
    width: int  # the whole drawing
    height: int
    plot_height: int
    left: int
    top: int  # the count the plot's full height stands for
    bars: list[Bar]
    calls: int


class GridCell(msgspec.Struct, frozen=True, kw_only=True):
    hour: int
    calls: int
    answered: int
    missed: int
    level: int  # 0-4, see present.heat


class GridRow(msgspec.Struct, frozen=True, kw_only=True):
    weekday: str
    cells: list[GridCell]


def load_by_hour(load: Load) -> HourChart:
    hours = {h: [0, 0, 0] for h in range(24)}
    for c in load.cells:
        totals = hours[c.hour]
        totals[0] += c.calls
        totals[1] += c.answered
        totals[2] += c.missed
    top = max((t[0] for t in hours.values()), default=0) or 1
    slot = (WIDTH - LEFT) / 24
    bars = []
    for h, (calls, answered, missed) in hours.items():
        other = max(0, calls - answered - missed)
        answered_h, missed_h, other_h = (HEIGHT * n / top for n in (answered, missed, other))
        answered_y = HEIGHT - answered_h
        missed_y = answered_y - missed_h
        bars.append(Bar(hour=h, x=round(LEFT + h * slot + BAR_GAP / 2, 1),
                        width=round(slot - BAR_GAP, 1), calls=calls, answered=answered,
                        missed=missed, other=other,
                        answered_y=round(answered_y, 1), answered_h=round(answered_h, 1),
                        missed_y=round(missed_y, 1), missed_h=round(missed_h, 1),
                        other_y=round(missed_y - other_h, 1), other_h=round(other_h, 1)))
    return HourChart(width=WIDTH, height=HEIGHT + BOTTOM, plot_height=HEIGHT, left=LEFT, top=top,
                     bars=bars, calls=sum(b.calls for b in bars))


def weekday_grid(load: Load) -> list[GridRow]:
    """Seven rows (Monday first) of 24 hours, each cell shaded against the busiest one."""
    cells = {(c.weekday, c.hour): c for c in load.cells}
    top = max((c.calls for c in load.cells), default=0)
    rows = []
    for day, name in enumerate(WEEKDAYS, 1):
        row = []
        for h in range(24):
            c = cells.get((day, h))
            calls, answered, missed = (c.calls, c.answered, c.missed) if c else (0, 0, 0)
            row.append(GridCell(hour=h, calls=calls, answered=answered, missed=missed,
                                level=heat(calls, top)))
        rows.append(GridRow(weekday=name, cells=row))
    return rows
