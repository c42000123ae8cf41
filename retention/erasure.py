"""Which calls involve a number, and which of them a legal hold protects. Pure (SQL text and
decisions; ``retention.jobs`` runs them).

Numbers are compared by digits: on their last 9 when both sides have at least 9 (so
``+48601234567``, ``0048601234567`` and ``0601234567`` are one number), exactly otherwise (an
extension such as ``101``). An extension that rang or answered matches too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from contracts.errors import RetentionError
from store.queries import normalize_number

MIN_DIGITS = 3
_DIGITS = "replaceRegexpAll({col}, '[^0-9]', '')"
_KEY = "if(length({d}) >= 9, right({d}, 9), {d})"


class Hold(msgspec.Struct, frozen=True, kw_only=True):
    hold_id: str
    kind: str  # call | number | customer
    value: str
    reason: str = ""
    created_by: str = ""
    created_at: float = 0.0


def number_key(number: str) -> str:
    """The comparable form of a number: its digits, the last 9 of them when there are 9 or more."""
    digits = normalize_number(number)
    return digits[-9:] if len(digits) >= 9 else digits


def check_number(number: str) -> str:
    key = number_key(number)
    if len(key) < MIN_DIGITS:
        raise RetentionError(f"a number needs at least {MIN_DIGITS} digits, got {number!r}")
    return key


def number_condition(number: str, prefix: str = "n") -> tuple[str, dict[str, Any]]:
    """A WHERE condition on ``calls`` matching every call that involves ``number``."""
    key = check_number(number)
    parts = []
    for col in ("caller", "called"):
        d = _DIGITS.format(col=col)
        parts.append(_KEY.format(d=d) + f" = {{{prefix}_key:String}}")
    parts.append(f"has(parties, {{{prefix}_raw:String}})")
    return "(" + " OR ".join(parts) + ")", {f"{prefix}_key": key, f"{prefix}_raw": number.strip()}


def matches_number(row: Mapping[str, Any], number: str) -> bool:
    """The same test in Python, for rows already read (holds by number)."""
    key = number_key(number)
    if any(number_key(str(row.get(c) or "")) == key for c in ("caller", "called")):
        return True
    return number.strip() in (row.get("parties") or ())


def hold_condition(hold: Hold, prefix: str = "h") -> tuple[str, dict[str, Any]]:
    """A WHERE condition on ``calls`` selecting what a hold protects."""
    if hold.kind == "call":
        return f"call_id = {{{prefix}_v:String}}", {f"{prefix}_v": hold.value}
    if hold.kind == "customer":
        return f"pbx_id = {{{prefix}_v:String}}", {f"{prefix}_v": hold.value}
    if hold.kind == "number":
        return number_condition(hold.value, prefix)
    raise RetentionError(f"hold kind must be call, number or customer, got {hold.kind!r}")


def held_by(row: Mapping[str, Any], holds: Iterable[Hold]) -> list[str]:
    """The ids of the active holds that protect a call row (call_id, pbx_id, caller, called, parties)."""
    out = []
    for h in holds:
        if ((h.kind == "call" and row.get("call_id") == h.value)
                or (h.kind == "customer" and row.get("pbx_id") == h.value)
                or (h.kind == "number" and matches_number(row, h.value))):
            out.append(h.hold_id)
    return out


def split_held(rows: Iterable[Mapping[str, Any]], holds: list[Hold]) -> tuple[list[str], dict[str, list[str]]]:
    """Call ids to erase, and the held ones with the holds that keep them. Holds win."""
    erase: list[str] = []
    held: dict[str, list[str]] = {}
    for row in rows:
        ids = held_by(row, holds)
        if ids:
            held[str(row["call_id"])] = ids
        else:
            erase.append(str(row["call_id"]))
    return erase, held


def number_fingerprint(number: str) -> str:
    """What the audit log keeps instead of the erased number: a SHA-256 of its key."""
    return hashlib.sha256(number_key(number).encode()).hexdigest()
