"""The boundary of enrich: AMI header tuples become typed events, once.

Past this module nobody indexes ``headers["CallerIDNum"]``. Only the event types the call
builder uses are decoded; everything else maps to ``None`` (counted, not an error).
"""

from __future__ import annotations

import msgspec

from contracts.envelope import LINKEDID_HEADERS, Envelope

UNKNOWN = "<unknown>"


class Event(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    time: float  # the PBX's Timestamp (UTC epoch); the receive time when it has none
    recv: float  # when we received it: the clock of grace periods and timeouts
    linkedid: str = ""
    uniqueid: str = ""
    channel: str = ""
    state: str = ""
    callerid_num: str = ""
    callerid_name: str = ""
    context: str = ""
    exten: str = ""
    dest_uniqueid: str = ""
    dest_channel: str = ""
    dial_status: str = ""
    cause: int = 0
    cause_txt: str = ""
    queue: str = ""
    variable: str = ""
    value: str = ""
    disposition: str = ""
    cdr_end: str = ""  # Cdr EndTime: local time "YYYY-MM-DD HH:MM:SS", sorts as text
    result: str = ""
    userfield: str = ""  # Cdr UserField: may name the call's recording (rec:<file>)


# event kind -> whether it must carry a Linkedid to be routed to a call
_ROUTED_BY_LINKEDID = frozenset(
    {
        "Newchannel", "Newstate", "NewCallerid", "NewConnectedLine", "Hangup", "HangupRequest",
        "SoftHangupRequest", "DialBegin", "DialState", "DialEnd", "BridgeEnter", "BridgeLeave",
        "QueueCallerJoin", "QueueCallerLeave", "QueueCallerAbandon", "AgentConnect",
        "BlindTransfer", "AttendedTransfer", "MixMonitorStart", "VarSet",
    }
)
DECODED_KINDS = _ROUTED_BY_LINKEDID | {"Cdr"}

_LINKEDID_FALLBACKS = LINKEDID_HEADERS[1:]


class MissingLinkedid(Exception):
    """A call event without any Linkedid header: it cannot be attributed to a call."""


def _clean(v: str | None) -> str:
    return "" if v is None or v == UNKNOWN else v


def decode(env: Envelope) -> Event | None:
    """Typed event for the kinds the call builder uses; None for the rest.

    Raises MissingLinkedid for a call event that names no call.
    """
    if not env.is_event:
        return None
    kind = env.headers[0][1]
    if kind not in DECODED_KINDS:
        return None
    h = dict(env.headers)  # repeated headers: the last wins, which is fine for these kinds
    ts = h.get("Timestamp")
    try:
        time = float(ts) if ts else env.recv_time
    except ValueError:
        time = env.recv_time
    linkedid = h.get("Linkedid") or ""
    if not linkedid:
        for key in _LINKEDID_FALLBACKS:
            if h.get(key):
                linkedid = h[key]
                break
    if kind == "Cdr":
        # cdr_manager names the party-A channel's id "UniqueID"; Linkedid only via [mappings]
        return Event(
            kind=kind, time=time, recv=env.recv_time, linkedid=h.get("LinkedID", ""),
            uniqueid=h.get("UniqueID", ""), channel=h.get("Channel", ""),
            disposition=h.get("Disposition", ""), cdr_end=h.get("EndTime", ""),
            userfield=h.get("UserField", ""),
        )
    if not linkedid:
        raise MissingLinkedid(kind)
    cause = h.get("Cause", "")
    return Event(
        kind=kind,
        time=time,
        recv=env.recv_time,
        linkedid=linkedid,
        uniqueid=h.get("Uniqueid", ""),
        channel=h.get("Channel", ""),
        state=h.get("ChannelStateDesc", ""),
        callerid_num=_clean(h.get("CallerIDNum")),
        callerid_name=_clean(h.get("CallerIDName")),
        context=h.get("Context", ""),
        exten=h.get("Exten", ""),
        dest_uniqueid=h.get("DestUniqueid", "") or h.get("TransfereeUniqueid", ""),
        dest_channel=h.get("DestChannel", ""),
        dial_status=h.get("DialStatus", ""),
        cause=int(cause) if cause.isdigit() else 0,
        cause_txt=h.get("Cause-txt", ""),
        queue=h.get("Queue", ""),
        variable=h.get("Variable", ""),
        value=h.get("Value", ""),
        result=h.get("Result", ""),
    )
