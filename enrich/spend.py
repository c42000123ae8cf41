"""Unusual traffic: spend or calls per clock hour to watched destinations, above a limit. Pure.

Rated outbound calls go in (in any order); an alert comes out the first time an extension's (or
a customer's) calls to the watched categories — premium and international by default — started
in one clock hour exceed ``max_cost`` or ``max_calls``: once per key, hour and kind. Alert ids are
deterministic, so a replay raises the same alerts. Hours are bucketed on the calls' own start
times (no clock); state older than ``keep_hours`` before the newest call seen is forgotten.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from contracts.records import CallRecord
from contracts.tariffs import TariffAlert

Scope = Literal["extension", "customer"]


@dataclass(frozen=True)
class SpendRule:
    categories: frozenset[str] = frozenset({"premium", "international"})
    scope: Scope = "extension"
    max_cost: Decimal = Decimal(0)  # 0: no spend limit
    max_calls: int = 0  # 0: no call-count limit

    @property
    def enabled(self) -> bool:
        return bool(self.categories) and (self.max_cost > 0 or self.max_calls > 0)


@dataclass
class _Hour:
    calls: int = 0
    cost: Decimal = Decimal(0)
    currency: str = ""
    alerted: frozenset[str] = frozenset()


class SpendWatch:
    """Folds rated call records into per-hour totals and raises TariffAlerts."""

    def __init__(self, rule: SpendRule, *, keep_hours: int = 3) -> None:
        self.rule = rule
        self.keep_hours = keep_hours
        self._hours: dict[tuple[str, str, int], _Hour] = {}
        self._newest = 0

    def observe(self, record: CallRecord) -> list[TariffAlert]:
        rule = self.rule
        if (not rule.enabled or record.direction != "outbound"
                or record.destination_category not in rule.categories):
            return []
        return self.watched(record.pbx_id, record.caller, record.start, record.cost,
                            record.currency, record.call_id)

    def watched(self, pbx_id: str, caller: str, start: float, cost: Decimal, currency: str,
                call_id: str) -> list[TariffAlert]:
        """:meth:`observe` of an outbound call to a watched category, by the fields it reads."""
        rule = self.rule
        hour = int(start // 3600)
        if hour < self._newest - self.keep_hours:
            return []  # too late to judge that hour
        if hour > self._newest:
            self._newest = hour
            for k in [k for k in self._hours if k[2] < hour - self.keep_hours]:
                del self._hours[k]
        key = pbx_id if rule.scope == "customer" else f"{pbx_id}/{caller}"
        h = self._hours.setdefault((pbx_id, key, hour), _Hour())
        h.calls += 1
        h.cost += cost
        h.currency = h.currency or currency
        out: list[TariffAlert] = []
        for kind, over, threshold in (
            ("spend", rule.max_cost > 0 and h.cost > rule.max_cost, rule.max_cost),
            ("calls", rule.max_calls > 0 and h.calls > rule.max_calls, Decimal(rule.max_calls)),
        ):
            if over and kind not in h.alerted:
                h.alerted = h.alerted | {kind}
                out.append(self._alert(pbx_id, call_id, start, key, hour, kind, threshold, h))
        return out

    def _alert(self, pbx_id: str, call_id: str, start: float, key: str, hour: int, kind: str,
               threshold: Decimal, h: _Hour) -> TariffAlert:
        ident = f"{self.rule.scope}\x00{key}\x00{hour}\x00{kind}"
        return TariffAlert(
            alert_id=hashlib.blake2b(ident.encode(), digest_size=12).hexdigest(),
            pbx_id=pbx_id, scope=self.rule.scope, key=key, hour=float(hour * 3600),
            kind=kind, threshold=threshold, calls=h.calls, cost=h.cost, currency=h.currency,
            categories=",".join(sorted(self.rule.categories)), call_id=call_id,
            at=start,
        )
