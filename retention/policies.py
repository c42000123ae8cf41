"""Retention policies: how long each customer's calls and recordings live. Pure.

A customer is a tenant: the ``pbx_id`` every call id starts with. The default (365 days for both)
covers customers without their own policy. A recording never outlives its call: its days are
clamped to the call's. Policies become a ClickHouse TTL expression and bucket lifecycle rules.
"""

from __future__ import annotations

import re
from calendar import monthrange
from datetime import UTC, date, datetime, timedelta

import msgspec

from contracts.errors import RetentionError
from retention.recordings import RECORDINGS_PREFIX, safe_segment
from store.objects import LifecycleRule

_CUSTOMER = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_DAYS = 36_500


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    customer: str  # "" is the default policy
    call_days: int
    recording_days: int


def check_customer(customer: str) -> str:
    """Customer ids travel into DDL (TTL expressions cannot take parameters): a strict charset."""
    if not _CUSTOMER.match(customer):
        raise RetentionError(f"customer id must match {_CUSTOMER.pattern}, got {customer!r}")
    return customer


def make_policy(customer: str, call_days: int, recording_days: int | None = None) -> Policy:
    """A valid policy: days within 1..36500, recording days clamped to the call days."""
    if customer:
        check_customer(customer)
    if not 1 <= call_days <= MAX_DAYS:
        raise RetentionError(f"call days must be 1..{MAX_DAYS}, got {call_days}")
    rec = call_days if recording_days is None else recording_days
    if not 1 <= rec <= MAX_DAYS:
        raise RetentionError(f"recording days must be 1..{MAX_DAYS}, got {rec}")
    return Policy(customer=customer, call_days=call_days, recording_days=min(rec, call_days))


def policy_for(customer: str, policies: dict[str, Policy], default: Policy) -> Policy:
    return policies.get(customer, default)


def recording_lock_until(start: float, customer: str, policies: dict[str, Policy],
                         default: Policy) -> float:
    """Until when a recording is locked (object lock, governance mode): its retention, counted
    from the call's start as expiry is; a lock never outlives the recording's policy."""
    return start + policy_for(customer, policies, default).recording_days * 86400.0


def ttl_days_expression(policies: dict[str, Policy], default: Policy, *, column: str = "pbx_id",
                        recordings: bool = False) -> str:
    """``multiIf(pbx_id = 'a', 730, …, 365)``, or the default alone: days rows of each customer live."""
    def days(p: Policy) -> int:
        return p.recording_days if recordings else p.call_days

    branches = [
        f"{column} = '{check_customer(c)}', {days(p)}"
        for c, p in sorted(policies.items()) if c and days(p) != days(default)
    ]
    if not branches:
        return str(days(default))
    return f"multiIf({', '.join(branches)}, {days(default)})"


def ttl_clause(time_column: str, days_expression: str) -> str:
    return f"toDateTime({time_column}) + toIntervalDay({days_expression})"


def lifecycle_rules(customers: set[str], policies: dict[str, Policy], default: Policy) -> list[LifecycleRule]:
    """One expiry rule per customer prefix (``rec/<customer>/``). No catch-all rule: S3 applies the
    shortest of overlapping rules, which would cut longer policies short; ``held/`` has none."""
    out = []
    for c in sorted(customers | {k for k in policies if k}):
        p = policy_for(c, policies, default)
        out.append(LifecycleRule(rule_id=f"pbxpipe-{safe_segment(c)}"[:255],
                                 prefix=f"{RECORDINGS_PREFIX}{safe_segment(c)}/",
                                 days=p.recording_days))
    return out


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """``YYYY-MM`` -> [first instant, first instant of the next month) in UTC."""
    y, m = int(month[:4]), int(month[5:7])
    start = datetime(y, m, 1, tzinfo=UTC)
    return start, start + timedelta(days=monthrange(y, m)[1])


def month_expiry(month: str, call_days: int) -> datetime:
    """When the last call of a month expires: its last instant + the retention."""
    return month_bounds(month)[1] + timedelta(days=call_days)


def month_starts_expiring(month: str, call_days: int) -> datetime:
    """When the first call of a month expires (the TTL is per row): export before this."""
    return month_bounds(month)[0] + timedelta(days=call_days)


def months_due_for_export(present: list[tuple[str, str]], exported: set[tuple[str, str]],
                          policies: dict[str, Policy], default: Policy, now: datetime,
                          within_days: int) -> list[tuple[str, str]]:
    """(customer, month) pairs whose first rows expire within ``within_days`` and that have not
    been exported yet, oldest first. ``present`` lists the (customer, YYYY-MM) holding calls."""
    horizon = now + timedelta(days=within_days)
    due = []
    for customer, month in sorted(present, key=lambda cm: (cm[1], cm[0])):
        if (customer, month) in exported:
            continue
        p = policy_for(customer, policies, default)
        if month_starts_expiring(month, p.call_days) <= horizon:
            due.append((customer, month))
    return due


DAY_MS = 86_400_000


def cutoffs(policies: dict[str, Policy], default: Policy, now_s: float) -> tuple[dict[str, int], int]:
    """Epoch ms before which each customer's calls have expired (customers with their own policy),
    and the cutoff of everyone else: what no read may return from the day the calls expire."""
    now_ms = round(now_s * 1000)
    own = {c: now_ms - p.call_days * DAY_MS for c, p in policies.items() if c}
    return own, now_ms - default.call_days * DAY_MS


def retention_window_start(now: datetime, days: int) -> date:
    """The oldest day whose calls a policy of ``days`` must still keep (for status output)."""
    return (now - timedelta(days=days)).date()
