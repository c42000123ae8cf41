"""The boundary of enrich: AMI header tuples become typed events, once.

Past this module nobody indexes ``headers["CallerIDNum"]``. Only the event types the call
builder uses are decoded, and of each only the headers it reads; everything else maps to
``None`` (counted, not an error).
"""

from __future__ import annotations

import msgspec

from contracts.envelope import LINKEDID_HEADERS, Envelope

UNKNOWN = "<unknown>"

RECORDING_VARIABLE = "MIXMONITOR_FILENAME"
"""The one variable read of ``VarSet`` (the recording's file name); other VarSets are ignored,
as the listener's AMI filters drop them at a live PBX, so a call counts the same events (its
record's version) whether its PBX filtered or not."""


class Event(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    time: float  # the PBX's Timestamp (UTC epoch); the receive time when it has none
    recv: float  # when we received it: the clock of grace periods and timeouts
    linkedid: str = ""
    uniqueid: str = ""
    channel: str = ""
    callerid_num: str = ""
    callerid_name: str = ""
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


# What the builder reads of each kind. Every kind but Cdr must name its call (a Linkedid);
# the kinds only counted still belong to a call and bump its version.
_COUNTED, _CHANNEL, _CALLERID, _HANGUP, _HANGUP_REQUEST, _DIAL, _QUEUE, _TRANSFER, _VARSET, _CDR = (
    range(10)
)
_SHAPE: dict[str, int] = {
    "Newchannel": _CHANNEL,
    "Newstate": _CALLERID, "NewCallerid": _CALLERID, "NewConnectedLine": _CALLERID,
    "Hangup": _HANGUP,
    "HangupRequest": _HANGUP_REQUEST, "SoftHangupRequest": _HANGUP_REQUEST,
    "DialBegin": _DIAL, "DialEnd": _DIAL,
    "QueueCallerJoin": _QUEUE,
    "BlindTransfer": _TRANSFER, "AttendedTransfer": _TRANSFER,
    "VarSet": _VARSET,
    "Cdr": _CDR,
    **dict.fromkeys(
        ("DialState", "BridgeEnter", "BridgeLeave", "QueueCallerLeave", "QueueCallerAbandon",
         "AgentConnect", "MixMonitorStart"),
        _COUNTED,
    ),
}
DECODED_KINDS = frozenset(_SHAPE)

_LINKEDID_FALLBACKS = LINKEDID_HEADERS[1:]


class MissingLinkedid(Exception):
    """A call event without any Linkedid header: it cannot be attributed to a call."""


def _clean(v: str | None) -> str:
    return "" if v is None or v == UNKNOWN else v


def _time(ts: str | None, recv: float) -> float:
    try:
        return float(ts) if ts else recv
    except ValueError:
        return recv


def decode(env: Envelope) -> Event | None:
    """Typed event for the kinds the call builder uses; None for the rest.

    Raises MissingLinkedid for a call event that names no call.
    """
    headers = env.headers
    if not headers or headers[0][0] != "Event":
        return None
    kind = headers[0][1]
    shape = _SHAPE.get(kind)
    if shape is None:
        return None
    recv = env.recv_time
    if (
        shape == _VARSET
        and len(headers) > 5
        and headers[2][0] == "Timestamp"
        and headers[-3][0] == "Linkedid"
        and headers[-2][0] == "Variable"
        and headers[-1][0] == "Value"
        and headers[-3][1]
    ):
        # A VarSet per dialplan Set(): most of a call's events. Its usual layout (Timestamp
        # third; Linkedid, Variable, Value last) is read where it stands, without a dict.
        if headers[-2][1] != RECORDING_VARIABLE:
            return None
        return Event(kind=kind, time=_time(headers[2][1], recv), recv=recv,
                     linkedid=headers[-3][1], variable=headers[-2][1], value=headers[-1][1])
    h = dict(headers)  # repeated headers: the last wins, which is fine for these kinds
    get = h.get
    if shape == _VARSET and get("Variable") != RECORDING_VARIABLE:
        return None
    time = _time(get("Timestamp"), recv)
    if shape == _CDR:
        # cdr_manager names the party-A channel's id "UniqueID"; Linkedid only via [mappings]
        return Event(
            kind=kind, time=time, recv=recv, linkedid=get("LinkedID", ""),
            uniqueid=get("UniqueID", ""), channel=get("Channel", ""),
            disposition=get("Disposition", ""), cdr_end=get("EndTime", ""),
            userfield=get("UserField", ""),
        )
    linkedid = get("Linkedid") or ""
    if not linkedid:
        for key in _LINKEDID_FALLBACKS:
            linkedid = get(key) or ""
            if linkedid:
                break
        else:
            raise MissingLinkedid(kind)
    if shape == _COUNTED:
        return Event(kind=kind, time=time, recv=recv, linkedid=linkedid)
    if shape == _VARSET:
        return Event(kind=kind, time=time, recv=recv, linkedid=linkedid,
                     variable=get("Variable", ""), value=get("Value", ""))
    if shape == _CHANNEL or shape == _CALLERID:
        return Event(
            kind=kind, time=time, recv=recv, linkedid=linkedid, uniqueid=get("Uniqueid", ""),
            channel=get("Channel", ""), callerid_num=_clean(get("CallerIDNum")),
            callerid_name=_clean(get("CallerIDName")),
            exten=get("Exten", "") if shape == _CHANNEL else "",
        )
    if shape == _HANGUP:
        cause = get("Cause", "")
        return Event(
            kind=kind, time=time, recv=recv, linkedid=linkedid, uniqueid=get("Uniqueid", ""),
            channel=get("Channel", ""), cause=int(cause) if cause.isdigit() else 0,
            cause_txt=get("Cause-txt", ""),
        )
    if shape == _HANGUP_REQUEST:
        return Event(kind=kind, time=time, recv=recv, linkedid=linkedid,
                     uniqueid=get("Uniqueid", ""), channel=get("Channel", ""))
    if shape == _DIAL:
        return Event(
            kind=kind, time=time, recv=recv, linkedid=linkedid, uniqueid=get("Uniqueid", ""),
            exten=get("Exten", ""),
            dest_uniqueid=get("DestUniqueid", "") or get("TransfereeUniqueid", ""),
            dest_channel=get("DestChannel", ""), dial_status=get("DialStatus", ""),
        )
    if shape == _QUEUE:
        return Event(kind=kind, time=time, recv=recv, linkedid=linkedid, queue=get("Queue", ""))
    return Event(kind=kind, time=time, recv=recv, linkedid=linkedid, result=get("Result", ""))  # _TRANSFER


_DECODED_NAMES = frozenset(kind.encode() for kind in _SHAPE)
_VARIABLE_LINE = b"\r\nVariable: "
_RECORDING_VALUE = f"{RECORDING_VARIABLE}\r\n".encode()


def ignored_frame(frame: bytes) -> bool:
    """Whether :func:`decode` would map this raw frame (one frame's exact bytes, as on the raw
    topic) to None, told from its bytes without parsing it: an event of a kind not decoded, or
    a VarSet whose (last) variable is another. Anything not an event, or naming no kind, is
    not ignored, so whatever is unreadable is still parsed and quarantined. The reader passes
    over only raw frames that hold one CRLF frame (see ``ingest.framing.read_frames``): no
    other frame hides behind a blank line in them."""
    if not frame.startswith(b"Event: "):
        return False
    end = frame.find(b"\r\n", 7)
    if end < 8:
        return False
    name = frame[7:end]
    if name != b"VarSet":
        return name not in _DECODED_NAMES
    at = frame.rfind(_VARIABLE_LINE)  # near the end: decode reads the last Variable
    return at < 0 or not frame.startswith(_RECORDING_VALUE, at + len(_VARIABLE_LINE))
