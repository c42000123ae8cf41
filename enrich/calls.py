"""The call-correlation core: typed AMI events in, one record per call (and per leg) out.

Pure: no I/O, no clock (receive times come with the events, ``advance(now)`` is told the time).
Channels are grouped by Linkedid. A call is finished when every channel it opened has hung
up; it is emitted ``grace_s`` later so late events (Asterisk sends most ``Cdr`` events around
the Hangup) are folded in. A call whose Hangup never comes is closed after ``timeout_s`` and
flagged incomplete. What each channel *is* (trunk, employee device, helper, not ours) comes
from the PBX profile, because Asterisk's events do not say it.

Rules, checked against a real Asterisk 22 (tests/fixtures/asterisk):

* the PBX leg (the call's *origin*) is its first trunk or device channel; the call is inbound
  when that is a trunk, outbound when an employee's call reaches a trunk or dials a number that
  is not an extension, internal otherwise;
* a *leg* is every ringing attempt of a device (or trunk): a DialBegin/DialEnd pair keyed by the
  dialled channel; app_queue's second DialEnd for a leg is ignored;
* a person answered when a leg's DialEnd says ANSWER — not when the PBX answered the trunk
  (``Answer()`` before a queue);
* start is the origin's Newchannel, end the last Hangup of a trunk/device channel;
  ``wait_s`` = first answer − start, ``talk_s`` = end − first answer.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from contracts.envelope import Envelope
from contracts.profile import PbxProfile, Role
from contracts.records import EXTERNAL, CallLeg, CallRecord, Quarantined, Status
from enrich.events import Event, MissingLinkedid, decode

Output = CallRecord | CallLeg | Quarantined

RECORDING_VARIABLE = "MIXMONITOR_FILENAME"
RECORDING_USERFIELD_PATTERNS = (r"^rec:(?P<file>\S+)$",)
"""CDR userfields that name a recording; the ``file`` group (else the whole match) is its name.
MixMonitorStart names no file (Asterisk 22), so the variable and the userfield are the sources."""

# Unanswered outbound/internal calls: the dialled leg's DialStatus, else the origin's cause.
_DIAL_STATUS: dict[str, Status] = {
    "BUSY": "busy",
    "CONGESTION": "congestion",
    "CHANUNAVAIL": "failed",
    "NOANSWER": "no_answer",
    "CANCEL": "no_answer",
}
_CAUSE_STATUS: dict[int, Status] = {
    17: "busy",
    34: "congestion",
    38: "congestion",
    42: "congestion",
    44: "congestion",
    1: "failed",
    3: "failed",
    20: "failed",
    27: "failed",
    28: "failed",
}


@dataclass(slots=True)
class _Channel:
    uniqueid: str
    name: str
    role: Role
    ext: str  # read from the name; "" when the profile reads it from the caller ID
    ext_from_callerid: bool
    created: float | None = None
    exten: str = ""  # Newchannel's Exten: the DID of a trunk call, the number an employee dialled
    callerid_num: str = ""
    callerid_name: str = ""
    hangup_asked: float | None = None  # first (Soft)HangupRequest or Hangup
    hungup: float | None = None
    cause: int = 0
    cause_txt: str = ""

    @property
    def human(self) -> bool:
        return self.role == "trunk" or self.role == "device"

    @property
    def extension(self) -> str:
        return self.callerid_num if self.ext_from_callerid else self.ext

    @property
    def party(self) -> str:
        return EXTERNAL if self.role == "trunk" else self.extension


@dataclass(slots=True)
class _Leg:
    channel: _Channel
    start: float
    answer: float | None = None
    ring_end: float | None = None
    outcome: str = ""


@dataclass(slots=True)
class _Call:
    linkedid: str
    first_recv: float
    first_time: float
    last_time: float = 0.0
    events: int = 0
    open_channels: int = 0
    closing_at: float | None = None
    channels: dict[str, _Channel] = field(default_factory=dict)
    legs: dict[str, _Leg] = field(default_factory=dict)
    answers: list[tuple[float, _Channel]] = field(default_factory=list)
    queue: str = ""
    transfer_event: bool = False
    forwarded: bool = False
    recordings: list[str] = field(default_factory=list)
    # party-A uniqueid -> the CDR row that ended last: (EndTime, arrival, disposition)
    dispositions: dict[str, tuple[str, int, str]] = field(default_factory=dict)


class CallBuilder:
    """Folds AMI envelopes of one PBX into call records and legs."""

    def __init__(
        self,
        profile: PbxProfile,
        *,
        pbx_id: str | None = None,
        grace_s: float = 2.0,
        timeout_s: float = 4 * 3600.0,
        tombstone_s: float = 300.0,
        recording_patterns: Sequence[str] = RECORDING_USERFIELD_PATTERNS,
        rate: Callable[[CallRecord], CallRecord] | None = None,
    ) -> None:
        self.profile = profile
        self.rate = rate  # tariffs: a pure rating function (enrich.tariffs.Rater.rate_call)
        self.pbx_id = pbx_id or profile.pbx_id
        self.grace_s = grace_s
        self.timeout_s = timeout_s
        self.tombstone_s = tombstone_s
        self._recording_patterns = tuple(re.compile(p) for p in recording_patterns)
        self._calls: dict[str, _Call] = {}
        self._closing: dict[str, float] = {}
        self._closed: OrderedDict[str, float] = OrderedDict()  # linkedid -> forget after
        self._by_uniqueid: dict[str, str] = {}  # for Cdr events, which name no Linkedid
        self._last_timeout_scan = 0.0
        self.rejected: dict[str, int] = {}  # reason -> count (late_event, no_pbx_leg…)
        self._handlers: dict[str, Callable[[_Call, Event], None]] = {
            "Newchannel": self._on_newchannel,
            "Newstate": self._on_callerid,
            "NewCallerid": self._on_callerid,
            "NewConnectedLine": self._on_callerid,
            "Hangup": self._on_hangup,
            "HangupRequest": self._on_hangup_request,
            "SoftHangupRequest": self._on_hangup_request,
            "DialBegin": self._on_dial_begin,
            "DialEnd": self._on_dial_end,
            "QueueCallerJoin": self._on_queue_join,
            "BlindTransfer": self._on_transfer,
            "AttendedTransfer": self._on_transfer,
            "VarSet": self._on_varset,
            "Cdr": self._on_cdr,
        }

    # -- input ---------------------------------------------------------------------------

    @property
    def open_calls(self) -> int:
        return len(self._calls)

    def is_open(self, linkedid: str) -> bool:
        """Whether the call is held (not emitted yet): its events must be replayed after a restart."""
        return linkedid in self._calls

    def feed(self, env: Envelope) -> list[Output]:
        """Fold one envelope in. Returns quarantined input only; records come from advance()."""
        try:
            ev = decode(env)
        except MissingLinkedid as e:
            self._reject("missing_linkedid")
            return [
                Quarantined(
                    pbx_id=self.pbx_id, received_at=env.recv_time, reason="missing_linkedid",
                    detail=f"{e.args[0]} event without a Linkedid",
                    raw="\r\n".join(f"{k}: {v}" for k, v in env.headers),
                )
            ]
        if ev is None:
            return []
        linkedid = ev.linkedid
        if ev.kind == "Cdr":
            linkedid = self._by_uniqueid.get(ev.uniqueid, linkedid)
            if not linkedid:
                self._reject("cdr_unrouted")
                return []
        call = self._calls.get(linkedid)
        if call is None:
            if linkedid in self._closed:
                self._reject("late_event")
                return []
            call = self._calls[linkedid] = _Call(linkedid, ev.recv, ev.time)
        call.events += 1
        if ev.time > call.last_time:
            call.last_time = ev.time
        if ev.time < call.first_time:
            call.first_time = ev.time
        handler = self._handlers.get(ev.kind)
        if handler is not None:
            handler(call, ev)
        return []

    def advance(self, now: float) -> list[Output]:
        """Emit the calls whose grace period ended by ``now``, and those past the timeout."""
        out: list[Output] = []
        if self._closing:
            for linkedid, at in list(self._closing.items()):
                if at <= now:
                    out.extend(self._close(linkedid, incomplete=False))
        if now - self._last_timeout_scan >= 1.0:
            self._last_timeout_scan = now
            for linkedid, call in list(self._calls.items()):
                if now - call.first_recv > self.timeout_s:
                    out.extend(self._close(linkedid, incomplete=True))
            while self._closed and next(iter(self._closed.values())) <= now:
                self._closed.popitem(last=False)
        return out

    def flush(self) -> list[Output]:
        """End of input: emit everything; calls with channels still up are incomplete."""
        out: list[Output] = []
        for linkedid, call in list(self._calls.items()):
            out.extend(self._close(linkedid, incomplete=call.open_channels > 0))
        return out

    # -- handlers ------------------------------------------------------------------------

    def _channel(self, call: _Call, uniqueid: str, name: str) -> _Channel:
        ch = call.channels.get(uniqueid)
        if ch is None:
            role, ext = self.profile.classify(name)
            from_callerid = role == "device" and not ext
            ch = call.channels[uniqueid] = _Channel(uniqueid, name, role, ext, from_callerid)
            call.open_channels += 1
            call.closing_at = None
            self._closing.pop(call.linkedid, None)
            self._by_uniqueid[uniqueid] = call.linkedid
        return ch

    def _on_newchannel(self, call: _Call, ev: Event) -> None:
        ch = self._channel(call, ev.uniqueid, ev.channel)
        ch.created = ev.time
        ch.exten = ev.exten
        self._on_callerid(call, ev)

    def _on_callerid(self, call: _Call, ev: Event) -> None:
        ch = self._channel(call, ev.uniqueid, ev.channel)
        if not ch.callerid_num and ev.callerid_num:
            ch.callerid_num = ev.callerid_num
        if not ch.callerid_name and ev.callerid_name:
            ch.callerid_name = ev.callerid_name

    def _on_hangup_request(self, call: _Call, ev: Event) -> None:
        ch = self._channel(call, ev.uniqueid, ev.channel)
        if ch.hangup_asked is None:
            ch.hangup_asked = ev.time

    def _on_hangup(self, call: _Call, ev: Event) -> None:
        ch = self._channel(call, ev.uniqueid, ev.channel)
        if ch.hungup is not None:
            return
        ch.hungup = ev.time
        if ch.hangup_asked is None:
            ch.hangup_asked = ev.time
        ch.cause, ch.cause_txt = ev.cause, ev.cause_txt
        call.open_channels -= 1
        if call.open_channels <= 0:
            call.closing_at = ev.recv + self.grace_s
            self._closing[call.linkedid] = call.closing_at

    def _on_dial_begin(self, call: _Call, ev: Event) -> None:
        dest = self._channel(call, ev.dest_uniqueid, ev.dest_channel)
        if not dest.human or dest.uniqueid in call.legs:
            return
        call.legs[dest.uniqueid] = _Leg(dest, ev.time)
        # The dialplan was handling extension X, yet another phone rings: a forward.
        if (
            ev.uniqueid
            and dest.role == "device"
            and self.profile.is_internal_number(ev.exten)
            and dest.extension
            and dest.extension != ev.exten
        ):
            call.forwarded = True

    def _on_dial_end(self, call: _Call, ev: Event) -> None:
        dest = self._channel(call, ev.dest_uniqueid, ev.dest_channel)
        if not dest.human:
            return
        leg = call.legs.get(dest.uniqueid)
        if leg is None:  # DialEnd without DialBegin (attended-transfer consultation)
            leg = call.legs[dest.uniqueid] = _Leg(dest, dest.created or ev.time)
        if leg.outcome:  # app_queue sends a second DialEnd for legs that did not connect
            return
        leg.outcome = ev.dial_status
        leg.ring_end = ev.time
        if ev.dial_status == "ANSWER":
            leg.answer = ev.time
            call.answers.append((ev.time, dest))

    def _on_queue_join(self, call: _Call, ev: Event) -> None:
        call.queue = call.queue or ev.queue

    def _on_transfer(self, call: _Call, ev: Event) -> None:
        if ev.result in ("", "Success"):
            call.transfer_event = True

    def _on_varset(self, call: _Call, ev: Event) -> None:
        if ev.variable == RECORDING_VARIABLE and ev.value:
            _add_recording(call, ev.value)

    def _on_cdr(self, call: _Call, ev: Event) -> None:
        if ev.userfield:
            for rx in self._recording_patterns:
                m = rx.search(ev.userfield)
                if m:
                    _add_recording(call, m.groupdict().get("file") or m.group(0))
                    break
        # One CDR row per (party A, party B) and per dial attempt; the call's outcome is the
        # row that ended last (a ring group's losing forks end before the winner's row).
        row = (ev.cdr_end, call.events, ev.disposition)
        if row > call.dispositions.get(ev.uniqueid, ("", 0, "")):
            call.dispositions[ev.uniqueid] = row

    # -- output --------------------------------------------------------------------------

    def _reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def _close(self, linkedid: str, *, incomplete: bool) -> list[Output]:
        call = self._calls.pop(linkedid)
        self._closing.pop(linkedid, None)
        for uid in call.channels:
            self._by_uniqueid.pop(uid, None)
        self._closed[linkedid] = (call.closing_at or call.first_recv) + self.tombstone_s
        origin = next((c for c in call.channels.values() if c.human), None)
        if origin is None:
            self._reject("no_pbx_leg")
            return []
        record = summarize(call, origin, self.profile, self.pbx_id, incomplete)
        if self.rate is not None:
            record = self.rate(record)
        legs = [
            _leg_record(leg, record)
            for uid, leg in call.legs.items()
            if uid != origin.uniqueid
        ]
        return [record, *legs]


def _add_recording(call: _Call, name: str) -> None:
    # the variable gives the PBX's full path, a userfield often just the file name: one file
    base = name.rsplit("/", 1)[-1]
    if all(r.rsplit("/", 1)[-1] != base for r in call.recordings):
        call.recordings.append(name)


def _r(x: float) -> float:
    return round(x, 3)


def summarize(
    call: _Call, origin: _Channel, profile: PbxProfile, pbx_id: str, incomplete: bool
) -> CallRecord:
    """One record for the whole call, from its folded state."""
    answers = [(t, ch) for t, ch in call.answers if ch is not origin]
    legs = [leg for uid, leg in call.legs.items() if uid != origin.uniqueid]
    humans = [c for c in call.channels.values() if c.human]

    if origin.role == "trunk":
        direction = "inbound"
    elif any(leg.channel.role == "trunk" for leg in legs):
        direction = "outbound"
    elif legs or profile.is_internal_number(origin.exten):
        direction = "internal"
    else:
        direction = "outbound"  # an employee dialled the PSTN; the route never reached a trunk

    start = origin.created if origin.created is not None else call.first_time
    ends = [c.hungup for c in humans if c.hungup is not None]
    end = max(ends) if ends else call.last_time
    answered = bool(answers)
    first_answer = answers[0][0] if answered else None

    status: Status
    if answered:
        status = "answered"
    elif direction == "inbound":
        status = "missed"
    else:
        ended = [leg for leg in legs if leg.outcome]
        if ended:
            status = _DIAL_STATUS.get(ended[-1].outcome, "failed")
        else:
            status = _CAUSE_STATUS.get(origin.cause, "no_answer")

    # who hung up: the first of the talking parties to ask for it
    parties = [origin, *(ch for _, ch in answers)] if answered else [origin, *(l.channel for l in legs)]
    asked = [(p.hangup_asked, i, p) for i, p in enumerate(parties) if p.hangup_asked is not None]
    hangup_by = ""
    if asked:
        hangup_by = "caller" if min(asked)[2] is origin else "callee"

    rang: list[str] = []
    for leg in legs:
        ext = leg.channel.extension
        if leg.channel.role == "device" and ext and ext not in rang:
            rang.append(ext)

    distinct_answerers = {ch.party for _, ch in answers}
    return CallRecord(
        call_id=f"{pbx_id}:{call.linkedid}",
        pbx_id=pbx_id,
        linkedid=call.linkedid,
        direction=direction,  # type: ignore[arg-type]
        caller=origin.callerid_num if origin.role == "trunk" else origin.extension,
        caller_name=origin.callerid_name,
        called=origin.exten,
        answered=answered,
        first_answered_by=answers[0][1].party if answered else None,
        last_answered_by=answers[-1][1].party if answered else None,
        status=status,
        start=_r(start),
        answer=_r(first_answer) if first_answer is not None else None,
        end=_r(end),
        duration_s=_r(max(end - start, 0.0)),
        wait_s=_r(first_answer - start) if first_answer is not None else None,
        talk_s=_r(max(end - first_answer, 0.0)) if first_answer is not None else 0.0,
        hangup_cause=origin.cause,
        hangup_cause_text=origin.cause_txt,
        hangup_by=hangup_by,  # type: ignore[arg-type]
        extensions_rang=tuple(rang),
        queue=call.queue,
        transferred=call.transfer_event or len(distinct_answerers) > 1,
        forwarded=call.forwarded,
        recordings=tuple(call.recordings),
        disposition=call.dispositions.get(origin.uniqueid, ("", 0, ""))[2],
        incomplete=incomplete,
        version=call.events,
    )


def _leg_record(leg: _Leg, record: CallRecord) -> CallLeg:
    ch = leg.channel
    end = ch.hungup if ch.hungup is not None else (leg.ring_end or record.end)
    rang_until = leg.answer if leg.answer is not None else (leg.ring_end or end)
    return CallLeg(
        leg_id=f"{record.pbx_id}:{ch.uniqueid}",
        call_id=record.call_id,
        pbx_id=record.pbx_id,
        linkedid=record.linkedid,
        kind="trunk" if ch.role == "trunk" else "device",
        extension=ch.party,
        channel=ch.name,
        start=_r(leg.start),
        answer=_r(leg.answer) if leg.answer is not None else None,
        end=_r(end),
        ring_s=_r(max(rang_until - leg.start, 0.0)),
        talk_s=_r(max(end - leg.answer, 0.0)) if leg.answer is not None else 0.0,
        outcome=leg.outcome or "UNKNOWN",
        answered=leg.answer is not None,
        version=record.version,
    )
