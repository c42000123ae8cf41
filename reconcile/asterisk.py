"""Asterisk's own view of its calls: CDR rows (and CEL events, when given) folded into one call
per Linkedid, by the definitions the call builder (``enrich/calls.py``) uses for AMI events.

Pure: rows and events in, calls out; no I/O, no clock. What each channel *is* comes from the
same PBX profile as the pipeline's.

Rules, checked against both real Asterisk 22 captures (tests/fixtures/asterisk,
tests/fixtures/asterisk-pjsip):

* a call is the rows of one Linkedid; its *PBX leg* is the party A of its first row (by start)
  whose channel the profile calls a trunk or a device — the caller's own channel; a call
  without one is not a call of the PBX (the builder emits nothing for it either);
* the call is inbound when the PBX leg is a trunk, outbound when a row of the call dialled a
  trunk or an employee dialled a number that is not an extension, internal otherwise;
* a person answered when a row dialled a trunk or device channel (not the PBX leg) and ended
  ANSWERED, or a device ran ``Pickup()`` and was answered; with CEL, a channel counts only if
  CEL saw it ANSWER (a picked-up phone's row says ANSWERED although it only rang) and its
  answer time is that CEL ANSWER — a row's answer time is party A's, which can be earlier
  (``Answer()`` before a queue), so without CEL it is only a lower bound;
* start is the first start of the PBX leg's rows, end their last end; the caller is the PBX
  leg's caller ID (a trunk's) or extension (a device's);
* the number dialled is the PBX leg's CEL ``CHAN_START`` exten: a row's ``dst`` is where the
  dialplan ended (``Goto`` rewrites it), so without CEL it is not known;
* an unanswered inbound call is missed; an unanswered outbound or internal call takes the
  disposition of the PBX leg's last row that dialled someone (else its last row).

Times a source writes to the second (``cdr_csv``, AMI ``Cdr``) are truncated by Asterisk: such
a time means somewhere in [t, t + 1) and is carried as a :class:`Span`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import msgspec

from contracts.profile import PbxProfile
from contracts.records import EXTERNAL, CallRecord, Direction, Status

Disposition = str
"""Asterisk's CDR disposition: ANSWERED, NO ANSWER, BUSY, FAILED, CONGESTION."""

_UNANSWERED: dict[str, Status] = {
    "NO ANSWER": "no_answer",
    "BUSY": "busy",
    "CONGESTION": "congestion",
    "FAILED": "failed",
    "ANSWERED": "no_answer",  # the PBX answered (voicemail, an announcement): no person did
}


class Span(msgspec.Struct, frozen=True, array_like=True):
    """A time as Asterisk wrote it: somewhere in [lo, hi] (epoch seconds, UTC)."""

    lo: float
    hi: float

    @classmethod
    def at(cls, t: float, resolution: float = 0.0) -> Span:
        return cls(t, t + resolution)


class CdrRow(msgspec.Struct, frozen=True, kw_only=True):
    """One CDR row as Asterisk wrote it: cdr_csv, cdr_custom, or an AMI ``Cdr`` event."""

    linkedid: str
    uniqueid: str  # party A's channel id
    channel: str  # party A
    dstchannel: str  # party B, "" when none
    src: str  # party A's caller ID number
    clid: str  # '"Name" <number>'
    dst: str  # where the dialplan was when the row ended (not the number dialled)
    lastapp: str
    lastdata: str
    start: float  # epoch seconds, UTC
    answer: float | None
    end: float
    resolution: float  # 1.0 when the source writes whole seconds (Asterisk truncates), else 0.0
    disposition: Disposition
    userfield: str = ""
    sequence: int = 0
    where: str = ""  # file:line or topic/partition/offset, for the report


class CelEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One CEL event: the kinds read are CHAN_START (exten), ANSWER and APP_START (appname)."""

    eventtype: str
    time: float
    resolution: float
    channel: str
    uniqueid: str
    linkedid: str
    exten: str = ""
    appname: str = ""


class AsteriskCall(msgspec.Struct, frozen=True, kw_only=True):
    """One call as Asterisk's records tell it, in CallRecord's terms."""

    linkedid: str
    pbx_leg: str  # the caller's own channel
    direction: Direction
    caller: str
    caller_name: str
    called: str | None  # None: not known (no CEL for the call)
    dst: str  # the PBX leg's first row's dst: the number dialled unless the dialplan moved on
    answered: bool
    first_answered_by: str | None
    last_answered_by: str | None
    status: Status
    disposition: Disposition  # of the PBX leg's last row
    start: Span
    answer: Span | None
    end: Span
    extensions_rang: tuple[str, ...]
    queue: str
    recordings: tuple[str, ...]
    rows: int
    with_cel: bool


class _Answer(msgspec.Struct, frozen=True, order=True):
    lo: float
    hi: float
    order: int
    party: str
    channel: str


def _id_order(uniqueid: str) -> tuple[int, ...]:
    """``<epoch>.<n>`` as numbers, so that .10 comes after .9; anything else sorts first."""
    try:
        return tuple(int(p) for p in uniqueid.split("."))
    except ValueError:
        return ()


def _caller_name(clid: str) -> str:
    m = re.match(r'^\s*"((?:[^"\\]|\\.)*)"', clid)
    return m.group(1) if m else ""


class _CallCel:
    """The CEL of one call, by channel name."""

    def __init__(self, events: Sequence[CelEvent]) -> None:
        self.answered: dict[str, Span] = {}
        self.exten: dict[str, str] = {}
        self.pickers: set[str] = set()
        for e in sorted(events, key=lambda e: e.time):
            if e.eventtype == "ANSWER":
                self.answered.setdefault(e.channel, Span.at(e.time, e.resolution))
            elif e.eventtype == "CHAN_START":
                self.exten.setdefault(e.channel, e.exten)
            elif e.eventtype == "APP_START" and e.appname.lower() == "pickup":
                self.pickers.add(e.channel)


def asterisk_calls(rows: Iterable[CdrRow], cel: Iterable[CelEvent], profile: PbxProfile,
                   recording_patterns: Sequence[str] = ()) -> tuple[list[AsteriskCall], list[str]]:
    """Asterisk's calls from its CDR rows (and CEL events), oldest first; and the Linkedids whose
    rows name no PBX leg (not calls of the PBX: no trunk or device channel is party A)."""
    by_call: dict[str, list[CdrRow]] = {}
    for r in rows:
        by_call.setdefault(r.linkedid, []).append(r)
    cel_by_call: dict[str, list[CelEvent]] = {}
    for e in cel:
        cel_by_call.setdefault(e.linkedid, []).append(e)
    patterns = [re.compile(p) for p in recording_patterns]
    calls, no_leg = [], []
    for linkedid, call_rows in by_call.items():
        events = cel_by_call.get(linkedid)
        call = fold_call(linkedid, call_rows, _CallCel(events) if events else None, profile,
                         patterns)
        if call is None:
            no_leg.append(linkedid)
        else:
            calls.append(call)
    calls.sort(key=lambda c: (c.start.lo, c.linkedid))
    return calls, sorted(no_leg)


def fold_call(linkedid: str, rows: Sequence[CdrRow], cel: _CallCel | None, profile: PbxProfile,
              patterns: Sequence[re.Pattern[str]] = ()) -> AsteriskCall | None:
    """One call from its rows (see the module's rules); None when no row has a PBX leg."""
    rows = sorted(rows, key=lambda r: (r.start, r.sequence))
    roles = {}
    for r in rows:
        for ch in (r.channel, r.dstchannel):
            if ch and ch not in roles:
                roles[ch] = profile.classify(ch, r.src if ch == r.channel else r.dst)
    candidates = [r for r in rows if roles[r.channel][0] in ("trunk", "device")]
    if not candidates:
        return None
    first = min(candidates, key=lambda r: (r.start, r.uniqueid != linkedid,
                                           _id_order(r.uniqueid)))
    leg = [r for r in rows if r.uniqueid == first.uniqueid and r.channel == first.channel]
    leg_role, leg_ext = roles[first.channel]

    # the people who answered, and every trunk or device that rang
    answers: dict[str, _Answer] = {}
    rang: list[str] = []
    dialled_trunk = False
    for r in rows:
        dst = r.dstchannel
        dst_role = roles[dst][0] if dst else "local"
        if dst and dst != first.channel and dst_role in ("trunk", "device"):
            dialled_trunk = dialled_trunk or dst_role == "trunk"
            party = EXTERNAL if dst_role == "trunk" else roles[dst][1]
            if dst_role == "device" and party and party not in rang:
                rang.append(party)
            if r.disposition == "ANSWERED" and r.answer is not None:
                _answered(answers, cel, dst, party, Span.at(r.answer, r.resolution), r.sequence)
        picker = r.channel
        if (r.lastapp.lower() == "pickup" or (cel is not None and picker in cel.pickers)) and \
                picker != first.channel and roles[picker][0] == "device" and \
                r.disposition == "ANSWERED" and r.answer is not None:
            _answered(answers, cel, picker, roles[picker][1], Span.at(r.answer, r.resolution),
                      r.sequence)
    if cel is not None:  # a row says ANSWERED for a phone that only rang (a pickup)
        answers = {ch: a for ch, a in answers.items() if ch in cel.answered}
    ordered = sorted(answers.values())

    start = min(r.start for r in leg)
    end_row = max(leg, key=lambda r: (r.end, r.sequence))
    called = cel.exten.get(first.channel) if cel is not None else None
    dialled = called if called is not None else first.dst
    direction: Direction
    if leg_role == "trunk":
        direction = "inbound"
    elif dialled_trunk:
        direction = "outbound"
    elif rang or profile.is_internal_number(dialled):
        direction = "internal"
    else:
        direction = "outbound"
    status: Status
    if ordered:
        status = "answered"
    elif direction == "inbound":
        status = "missed"
    else:
        tried = [r for r in leg if r.dstchannel] or leg
        last = max(tried, key=lambda r: (r.end, r.sequence))
        status = _UNANSWERED.get(last.disposition, "failed")
    recordings: list[str] = []
    for r in rows:
        for rx in patterns:
            m = rx.search(r.userfield) if r.userfield else None
            if m:
                name = m.groupdict().get("file") or m.group(0)
                if name not in recordings:
                    recordings.append(name)
                break
    queue = next((r.lastdata.split(",", 1)[0] for r in leg if r.lastapp == "Queue"), "")
    first_answer = ordered[0] if ordered else None
    end = Span.at(end_row.end, end_row.resolution)
    return AsteriskCall(
        linkedid=linkedid,
        pbx_leg=first.channel,
        direction=direction,
        caller=first.src if leg_role == "trunk" else leg_ext,
        caller_name=_caller_name(first.clid),
        called=called,
        dst=first.dst,
        answered=bool(ordered),
        first_answered_by=ordered[0].party if ordered else None,
        last_answered_by=ordered[-1].party if ordered else None,
        status=status,
        disposition=end_row.disposition,
        start=Span.at(start, first.resolution),
        answer=Span(first_answer.lo, min(first_answer.hi, end.hi)) if first_answer else None,
        end=end,
        extensions_rang=tuple(rang),
        queue=queue,
        recordings=tuple(recordings),
        rows=len(rows),
        with_cel=cel is not None,
    )


def _answered(answers: dict[str, _Answer], cel: _CallCel | None, channel: str, party: str,
              row_answer: Span, order: int) -> None:
    """A channel answered: at its CEL ANSWER when known, else no earlier than the row says (a
    row's answer is party A's, which may have come first); fold_call bounds that by the end."""
    exact = cel.answered.get(channel) if cel is not None else None
    span = exact if exact is not None else Span(row_answer.lo, float("inf"))
    seen = answers.get(channel)
    if seen is None or span.lo < seen.lo:
        answers[channel] = _Answer(span.lo, span.hi, order, party, channel)


def rebuilt_record(call: AsteriskCall, pbx_id: str) -> CallRecord:
    """A call record from Asterisk's records alone, for a call the pipeline lacks: flagged
    ``built_from="cdr"``, version 0 (any record built from the call's events wins over it). What
    CDR does not say is left empty: hangup cause, who hung up, forwards; the number dialled is
    the row's ``dst`` unless CEL told it."""
    start, end = call.start.lo, max(call.end.lo, call.start.lo)
    answer = None if call.answer is None else min(max(call.answer.lo, start), end)
    return CallRecord(
        call_id=f"{pbx_id}:{call.linkedid}", pbx_id=pbx_id, linkedid=call.linkedid,
        direction=call.direction, caller=call.caller, caller_name=call.caller_name,
        called=call.called if call.called is not None else call.dst,
        answered=call.answered, first_answered_by=call.first_answered_by,
        last_answered_by=call.last_answered_by, status=call.status,
        start=round(start, 3), answer=None if answer is None else round(answer, 3),
        end=round(end, 3), duration_s=round(end - start, 3),
        wait_s=None if answer is None else round(answer - start, 3),
        talk_s=0.0 if answer is None else round(end - answer, 3),
        hangup_cause=0, hangup_cause_text="", hangup_by="",
        extensions_rang=call.extensions_rang, queue=call.queue,
        transferred=call.first_answered_by != call.last_answered_by, forwarded=False,
        recordings=call.recordings, disposition=call.disposition, incomplete=False, version=0,
        built_from="cdr",
    )
