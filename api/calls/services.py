"""What a call-history request means: the page of calls a principal sees, one call in full."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo

from api.calls.schemas import Call, CallDetail, CallPage, Leg, Recording
from api.params import CallFilters, encode_cursor
from api.runtime import Request
from contracts.errors import NotFound
from store import queries
from store.tenancy import ScopedReader, select

LIST_FIELDS = (
    "call_id", "start", "end", "answer", "direction", "caller", "caller_name", "called", "status",
    "answered", "first_answered_by", "last_answered_by", "duration_s", "wait_s", "talk_s",
    "extensions_rang", "queue", "transferred", "forwarded", "recordings", "hangup_cause",
    "hangup_cause_text", "hangup_by", "incomplete", "cost", "cost_buy", "margin", "currency",
    "billed_s", "destination", "destination_category",
)


def list_calls(reader: ScopedReader, req: Request, filters: CallFilters,
               after: tuple[int, str] | None, limit: int, tz: str) -> CallPage:
    """A page of the history, newest first; ``next_cursor`` when more calls follow."""
    q = queries.call_history_query(
        req.scope, since=filters.since, until=filters.until,
        call_type=filters.call_type,  # type: ignore[arg-type]
        extension=filters.extension, number=filters.number,
        status=filters.status,  # type: ignore[arg-type]
        recorded=filters.recorded, tz=tz, limit=limit + 1, after=after, columns=LIST_FIELDS,
    )
    rows = reader.query(q)
    zone = ZoneInfo(tz)
    calls = [to_call(queries.call_row(r, zone, LIST_FIELDS), req) for r in rows[:limit]]
    cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        cursor = encode_cursor(int(last["start_ms"]), last["call_id"], filters.fingerprint())
    return CallPage(items=calls, next_cursor=cursor)


def to_call(row: Mapping[str, Any], req: Request) -> Call:
    costs, buy = req.principal.may("costs"), req.principal.may("costs_buy")
    return Call(
        call_id=row["call_id"], start=row["start"], start_local=row["start_local"],
        end=row["end"], answer=row["answer"], direction=row["direction"], caller=row["caller"],
        caller_name=row["caller_name"], called=row["called"], status=row["status"],
        answered=row["answered"], first_answered_by=row["first_answered_by"],
        last_answered_by=row["last_answered_by"], duration_s=row["duration_s"],
        wait_s=row["wait_s"], talk_s=row["talk_s"], extensions_rang=list(row["extensions_rang"]),
        queue=row["queue"], transferred=row["transferred"], forwarded=row["forwarded"],
        recorded=bool(row["recordings"]), hangup_cause=row["hangup_cause"],
        hangup_cause_text=row["hangup_cause_text"], hangup_by=row["hangup_by"],
        incomplete=row["incomplete"], destination=row["destination"],
        destination_category=row["destination_category"],
        cost=row["cost"] if costs else None, currency=row["currency"] if costs else None,
        billed_s=row["billed_s"] if costs else None,
        cost_buy=row["cost_buy"] if buy else None, margin=row["margin"] if buy else None,
    )


def call_detail(reader: ScopedReader, req: Request, call_id: str, tz: str) -> CallDetail:
    """The call with its legs and recordings; NotFound when the principal does not see it."""
    row = _call(reader, req, call_id)
    zone = ZoneInfo(tz)
    call = to_call(queries.call_row(row, zone, LIST_FIELDS), req)
    legs = reader.query(select(
        req.scope, "call_legs",
        "kind, extension, toUnixTimestamp64Milli(start) AS start_ms,"
        " toUnixTimestamp64Milli(answer) AS answer_ms, toUnixTimestamp64Milli(`end`) AS end_ms,"
        " ring_s, talk_s, outcome, answered",
        call_ids=[call_id], order_by="start, leg_id"))
    recordings: list[Recording] = []
    if req.principal.may("play"):
        recordings = [
            Recording(n=n, duration_s=r["duration_s"], size_bytes=r["size_bytes"],
                      sha256=r["sha256"], content_type=r["content_type"],
                      url=f"/v1/calls/{call_id}/recordings/{n}")
            for n, r in enumerate(stored_recordings(reader, req, call_id, row["recordings"]), 1)
        ]
    return CallDetail(
        call=call,
        legs=[Leg(kind=leg["kind"], extension=leg["extension"], start=leg["start_ms"] / 1000,
                  answer=None if leg["answer_ms"] is None else leg["answer_ms"] / 1000,
                  end=leg["end_ms"] / 1000, ring_s=leg["ring_s"], talk_s=leg["talk_s"],
                  outcome=leg["outcome"], answered=leg["answered"]) for leg in legs],
        recordings=recordings,
    )


def _call(reader: ScopedReader, req: Request, call_id: str) -> dict[str, Any]:
    rows = reader.query(queries.call_query(req.scope, call_id, LIST_FIELDS))
    if not rows:
        raise NotFound(f"no call {call_id}")
    return rows[0]


def stored_recordings(reader: ScopedReader, req: Request, call_id: str,
                      named: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
    """The call's stored recordings, numbered in the order the call names them."""
    rows = reader.query(select(
        req.scope, "recordings", "source, key, size_bytes, duration_s, sha256, content_type",
        call_ids=[call_id], order_by="key"))
    order = {name: i for i, name in enumerate(named)}
    return sorted(rows, key=lambda r: (order.get(r["source"], len(order)), r["key"]))


def recording(reader: ScopedReader, req: Request, call_id: str, n: int) -> dict[str, Any]:
    """The n-th stored recording of a call the principal sees, else NotFound."""
    row = _call(reader, req, call_id)
    found = stored_recordings(reader, req, call_id, row["recordings"])
    if not 1 <= n <= len(found):
        raise NotFound(f"no recording {n} of call {call_id}")
    return {**found[n - 1], "call_id": call_id, "pbx_id": req.scope.tenant}
