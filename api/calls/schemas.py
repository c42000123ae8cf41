"""What the call endpoints answer: a call as the history shows it, its legs and recordings."""

from __future__ import annotations

import msgspec


class Call(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One call. Times are epoch seconds (UTC) and ``start_local`` the start in the asked time
    zone; money is text ("0.40"). The cost fields only for roles that see costs (admin, billing),
    ``cost_buy`` and ``margin`` only for those that see buy prices (admin)."""

    call_id: str
    start: float
    start_local: str
    end: float
    answer: float | None
    direction: str
    caller: str
    caller_name: str
    called: str
    status: str
    answered: bool
    first_answered_by: str | None
    last_answered_by: str | None
    duration_s: float
    wait_s: float | None
    talk_s: float
    extensions_rang: list[str]
    queue: str
    transferred: bool
    forwarded: bool
    recorded: bool
    hangup_cause: int
    hangup_cause_text: str
    hangup_by: str
    incomplete: bool
    destination: str
    destination_category: str
    cost: str | None = None
    currency: str | None = None
    billed_s: int | None = None
    cost_buy: str | None = None
    margin: str | None = None


class CallPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Call]
    next_cursor: str | None  # pass it back as ?cursor= for the next page; null on the last page


class Leg(msgspec.Struct, frozen=True, kw_only=True):
    """One ringing attempt: an extension (or the far end, "external")."""

    kind: str
    extension: str
    start: float
    answer: float | None
    end: float
    ring_s: float
    talk_s: float
    outcome: str
    answered: bool


class Recording(msgspec.Struct, frozen=True, kw_only=True):
    n: int  # its number within the call: /v1/calls/{call_id}/recordings/{n}
    duration_s: float | None
    size_bytes: int
    sha256: str
    content_type: str
    url: str


class CallDetail(msgspec.Struct, frozen=True, kw_only=True):
    call: Call
    legs: list[Leg]
    recordings: list[Recording]  # empty for roles that may not play recordings


CSV_COLUMNS = (
    "call_id", "start_local", "direction", "caller", "caller_name", "called", "status",
    "first_answered_by", "last_answered_by", "extensions_rang", "queue", "duration_s", "wait_s",
    "talk_s", "recorded", "transferred", "forwarded", "cost", "currency", "destination",
)
"""The columns of the history as CSV (``Accept: text/csv``)."""
