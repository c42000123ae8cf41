"""The boundary of enrich: AMI header tuples become typed events, once.

Past this module nobody indexes ``headers["CallerIDNum"]``. Only the event types the call
builder uses are decoded, and of each only the headers it reads; everything else maps to
``None`` (counted, not an error).
"""

from __future__ import annotations

import msgspec
import numpy as np

from contracts.envelope import LINKEDID_HEADERS, AmiFrames, Envelope
from ingest.framing import CRLF2, LineMemo, Unreadable

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


def _time(ts: str | bytes | None, recv: float) -> float:
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
    if shape == _VARSET and h.get("Variable") != RECORDING_VARIABLE:
        return None
    return _event(kind, shape, h, _time(h.get("Timestamp"), recv), recv)


def _event(kind: str, shape: int, h: dict[str, str], time: float, recv: float) -> Event:
    """The event of a decoded kind from its headers (the last of a repeated one)."""
    get = h.get
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


_READ_ONLY = -1
"""Not an event, or naming no kind: its lines are read (an unreadable one is quarantined), and
nothing is decoded."""
_KINDS: dict[bytes, tuple[str, int]] = {kind.encode(): (kind, shape) for kind, shape in _SHAPE.items()}
_NOT_DECODED = ("", _READ_ONLY)
_VARIABLE_LINE = b"\r\nVariable: "
_RECORDING_VALUE = f"{RECORDING_VARIABLE}\r\n".encode()


def _judge(frame: bytes) -> tuple[str, int] | None:
    """A raw frame's kind and shape told from its bytes, None when :func:`decode` would map it
    to None: an event of a kind not decoded, or a VarSet whose (last) variable is another."""
    if not frame.startswith(b"Event: "):
        return _NOT_DECODED
    end = frame.find(b"\r\n", 7)
    if end < 8:
        return _NOT_DECODED
    name = frame[7:end]
    kind = _KINDS.get(name)
    if kind is None:  # unless a bare LF ends the line early: then the parse decides
        return None if name.find(b"\n") < 0 else _NOT_DECODED
    if kind[1] != _VARSET:
        return kind
    at = frame.rfind(_VARIABLE_LINE)  # near the end: decode reads the last Variable
    return kind if at >= 0 and frame.startswith(_RECORDING_VALUE, at + len(_VARIABLE_LINE)) else None


def ignored_frame(frame: bytes) -> bool:
    """Whether :func:`decode` would map this raw frame (one frame's exact bytes, as on the raw
    topic) to None, told from its bytes without parsing it: an event of a kind not decoded, or
    a VarSet whose (last) variable is another. Anything not an event, or naming no kind, is
    not ignored, so whatever is unreadable is still parsed and quarantined. The reader passes
    over only raw frames that hold one CRLF frame (see ``ingest.framing.read_frames``): no
    other frame hides behind a blank line in them."""
    return _judge(frame) is None


VECTOR_BYTES = 4096
"""From this size a message's blank lines are counted with NumPy (three times faster than two
byte scans over the message); below it, NumPy's call overhead would cost more."""


def _frame_ends(raw: bytes) -> int:
    """How many blank lines ``raw`` holds (CRLF CRLF or LF CRLF), each a frame end where the
    general reading splits; -1 when one starts with a bare LF (LF LF) or, for a message counted
    with NumPy, when any LF is bare (that message goes the general way)."""
    if len(raw) < VECTOR_BYTES or not raw:
        return -1 if raw.find(b"\n\n") >= 0 else raw.count(b"\n\r\n")
    # stricter, and the same on what passes: any bare LF gives -1; with every LF after a CR,
    # a blank line is an LF two bytes after another (counted overlapping: CRLF CRLF CRLF is two)
    a = np.frombuffer(raw, np.uint8)
    lf = a == 10
    if lf[0] or np.count_nonzero(lf[1:] & (a[:-1] == 13)) != np.count_nonzero(lf):
        return -1
    return int(np.count_nonzero(lf[2:] & lf[:-2]))


_RAW_LINES: LineMemo[bytes] = LineMemo()
"""Header lines by their bytes: a raw-topic message is read without decoding it."""
_TIMESTAMP = b"Timestamp: "


def read_events(batch: AmiFrames, max_frame_bytes: int = 1 << 20) -> list[Event | Envelope] | None:
    """A raw-topic message as Asterisk writes them, read in one pass straight into events:
    :func:`decode` of each of its frames, the frames it maps to None left out, and as an
    envelope each frame it rejects (:class:`MissingLinkedid`), for the builder to quarantine.
    None for any other message, which ``ingest.framing.read_frames`` reads the general way.

    The usual message: every raw frame one CRLF frame of well-formed lines, within the size
    limit. Whatever is unusual (a bare LF, an extra blank line, sizes that do not line up, a
    line the memo of lines does not read, bytes that are not UTF-8) gives None. Frames of the
    kinds not decoded are passed over unparsed (see :func:`ignored_frame`).
    """
    raw, sizes, seqs = batch.raw, batch.sizes, batch.seqs
    if (not sizes or len(sizes) != len(seqs) or sum(sizes) != len(raw)
            or max(sizes) - 4 > max_frame_bytes):
        return None
    # No blank line but the frames' own: each raw frame, ending with one (checked below),
    # holds one CRLF frame. One look at the message, not one per frame.
    if _frame_ends(raw) != len(sizes):
        return None
    recv = batch.recv_time
    get = _RAW_LINES.__getitem__
    out: list[Event | Envelope] = []
    append = out.append
    pos = 0
    try:
        for seq, size in zip(seqs, sizes):
            frame = raw[pos : pos + size]
            pos += size
            if frame[-4:] != CRLF2:
                return None
            judged = _judge(frame)
            if judged is None:
                continue
            lines = frame.split(b"\r\n")
            del lines[-2:]  # the blank line: a blank line inside is a line the memo refuses
            # The Timestamp, third as Asterisk writes it, is read here: unique to its event,
            # it would only ever miss the memo.
            stamp = lines[2] if len(lines) > 2 else b""
            if stamp.startswith(_TIMESTAMP) and stamp.isascii() and stamp.find(b"\n") < 0:
                del lines[2]
                stamp = stamp[len(_TIMESTAMP):]
            else:
                stamp = b""
            h = dict(map(get, lines))
            kind, shape = judged
            if shape == _READ_ONLY:
                continue
            later = h.get("Timestamp")  # repeated: the last wins, as in decode
            time = _time(stamp if later is None else later, recv)
            try:
                append(_event(kind, shape, h, time, recv))
            except MissingLinkedid:
                append(Envelope(batch.pbx_id, batch.epoch, seq, recv,
                                tuple(map(get, frame.split(b"\r\n")[:-2]))))
    except (Unreadable, UnicodeDecodeError):
        return None
    return out
