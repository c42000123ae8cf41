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
import sys
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from typing import ClassVar

import msgspec

from contracts.envelope import Envelope
from contracts.profile import PbxProfile, Role
from contracts.records import EXTERNAL, CallLeg, CallRecord, Output, Quarantined, Status
from enrich.events import Event, MissingLinkedid, decode

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

_SCAN_CHANNELS = 8
"""A call finds its channels by a scan of a chain (no container at all) up to this many."""

# A call's state is small structs without GC headers (no cycles: a channel points only to the
# one that came before it), repeated strings interned, what few calls have in one optional
# struct, each field where it is needed only: thousands of calls are held open at once
# (bench: ``enrich memory``). Nothing depends on the order of a call's channels.


class _Channel(msgspec.Struct, gc=False):
    """A channel nobody talks on (Local, ignored): the call only waits for its Hangup."""

    uniqueid: str
    hungup: float | None = None
    # the call's channel before it, while they chain (at most _SCAN_CHANNELS: a short chain,
    # as freeing a long one recurses)
    before: _Channel | None = None


class _Party(_Channel, gc=False):
    """A device channel (a trunk's is its _Trunk… subclass): a party of the call."""

    role: ClassVar[Role] = "device"  # of the class: one field fewer per party
    ext: str | None = ""  # read from the name; None: the caller ID says it, not seen yet
    hangup_asked: float | None = None  # first (Soft)HangupRequest or Hangup

    @property
    def extension(self) -> str:
        return self.ext or ""


class _Leg(_Party, gc=False):
    """A party but the origin: a leg once it rings."""

    name: str = ""  # the channel, for the leg record
    # order among the call's legs: the call's event count at its first DialBegin/DialEnd;
    # 0: never rang
    leg: int = 0
    # when it rang; until then its Newchannel's time, where a DialEnd without DialBegin starts it
    leg_start: float = 0.0
    ring_end: float | None = None  # DialEnd: the answer when outcome is ANSWER
    outcome: str = ""  # DialEnd's DialStatus
    answered: int = 0  # order among the call's answers (event count at it); 0: not answered

    @property
    def party(self) -> str:
        return EXTERNAL if self.role == "trunk" else self.ext or ""

    @property
    def answer(self) -> float | None:
        return self.ring_end if self.answered else None


class _TrunkLeg(_Leg, gc=False):
    role: ClassVar[Role] = "trunk"


class _Origin(_Party, gc=False):
    """The call's first trunk or device channel, with what the record takes from it alone.
    Never a leg: a Dial that rings it is not one of the call's ringing attempts."""

    created: float | None = None  # the call's start
    callerid_num: str = ""  # a trunk's: the caller (a device's is its extension)
    callerid_name: str = ""
    exten: str = ""  # Newchannel's Exten: the DID of a trunk call, the number an employee dialled
    cause: int = 0
    cause_txt: str = ""
    cdr_end: str | None = None  # its CDR row that ended last: EndTime, disposition
    disposition: str = ""


class _TrunkOrigin(_Origin, gc=False):
    role: ClassVar[Role] = "trunk"


class _Rare(msgspec.Struct, gc=False):
    """What few calls have: held apart so that the others do not pay for its fields."""

    # uniqueid -> channel: all the channels, once a scan would be slow
    index: dict[str, _Channel] | None = None
    transferred: bool = False  # a (successful) transfer event
    forwarded: bool = False
    recordings: list[str] | None = None
    # CDR rows of channels not seen yet: uniqueid -> (EndTime, disposition)
    early_cdrs: dict[str, tuple[str, str]] | None = None


class _Call(msgspec.Struct, gc=False):
    linkedid: str
    first_recv: float  # when its first event came, to the second above (see CallBuilder.feed)
    first_time: float
    last_time: float = 0.0
    events: int = 0
    # the newest of the chained channels (then rare.index holds them all): see _channels()
    last: _Channel | None = None
    origin: _Origin | None = None
    queue: str = ""
    rare: _Rare | None = None

    def more(self) -> _Rare:
        """The call's rare fields, made on first use."""
        if self.rare is None:
            self.rare = _Rare()
        return self.rare


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
        # uniqueid -> linkedid of the open calls' channels, for Cdr events, which name no
        # Linkedid: built at the first Cdr fed without its message key, then kept up to date
        self._by_uniqueid: dict[str, str] | None = None
        self._last_timeout_scan = 0.0
        self._opened_second = float("-inf")  # the first_recv of the calls opened last
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

    def feed(self, env: Envelope, key: str = "") -> list[Output]:
        """Fold one envelope in. Returns quarantined input only; records come from advance().

        ``key``: the Linkedid of the raw topic's message key, "" when there is none. Ingest
        routes a call's Cdr events to the call's key, so with it the builder needs no index of
        channels for them (the index costs memory per open call).
        """
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
        return self.fold(ev, key)

    def fold(self, ev: Event, key: str = "") -> list[Output]:
        """Fold one decoded event in (see :meth:`feed`)."""
        linkedid = ev.linkedid
        if ev.kind == "Cdr":
            if not key:
                linkedid = self._cdr_call(ev.uniqueid, linkedid)
            elif not linkedid:
                linkedid = key if key in self._calls else ""  # as the index: open calls only
            if not linkedid:
                self._reject("cdr_unrouted")
                return []
        call = self._calls.get(linkedid)
        if call is None:
            if linkedid in self._closed:
                self._reject("late_event")
                return []
            if linkedid == key:
                linkedid = key  # the partition holds the key's string: one copy
            opened = self._opened_second
            if not opened - 1.0 < ev.recv <= opened:
                # Timeouts are looked for once a second: the calls opened within a second share
                # one time, the second's end (so none closes before its timeout). -(-x // 1):
                # the ceiling, which unlike math.ceil takes a nan or an infinity.
                opened = self._opened_second = -(-ev.recv // 1.0)
            call = self._calls[linkedid] = _Call(linkedid, opened, ev.time)
        call.events += 1
        # hot path: a comparison costs less than a call to max() / min()
        if ev.time > call.last_time:  # noqa: PLR1730
            call.last_time = ev.time
        if ev.time < call.first_time:  # noqa: PLR1730
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
            out.extend(self._close(linkedid, incomplete=_up(call)))
        return out

    def _cdr_call(self, uniqueid: str, linkedid: str) -> str:
        """The open call that has the channel ``uniqueid``, else ``linkedid``."""
        index = self._by_uniqueid
        if index is None:
            index = self._by_uniqueid = {
                ch.uniqueid: call.linkedid for call in self._calls.values() for ch in _channels(call)
            }
        return index.get(uniqueid, linkedid)

    # -- handlers ------------------------------------------------------------------------

    def _channel(self, call: _Call, uniqueid: str, name: str) -> _Channel:
        found = _find(call, uniqueid)
        if found is not None:
            return found
        if uniqueid == call.linkedid:
            uniqueid = call.linkedid  # the origin's id is usually the Linkedid: keep one string
        role, ext = self.profile.classify(name)
        ch: _Channel
        if role == "trunk" or role == "device":
            # a device named without its extension is read from the caller ID (profile)
            extension = None if role == "device" and not ext else sys.intern(ext)
            if call.origin is None:
                origin_type = _TrunkOrigin if role == "trunk" else _Origin
                ch = call.origin = origin_type(uniqueid, ext=extension)
                early = call.rare.early_cdrs if call.rare is not None else None
                if early and uniqueid in early:
                    ch.cdr_end, ch.disposition = early.pop(uniqueid)
            else:
                ch = (_TrunkLeg if role == "trunk" else _Leg)(uniqueid, ext=extension, name=name)
        else:
            ch = _Channel(uniqueid)
        rare = call.rare
        if rare is not None and rare.index is not None:
            rare.index[uniqueid] = ch
        elif _chained(call) < _SCAN_CHANNELS:
            ch.before, call.last = call.last, ch
        else:  # from here on a dict finds them faster than a scan
            call.more().index = {c.uniqueid: c for c in (*_chain(call), ch)}
        self._closing.pop(call.linkedid, None)
        if self._by_uniqueid is not None:
            self._by_uniqueid[uniqueid] = call.linkedid
        return ch

    def _on_newchannel(self, call: _Call, ev: Event) -> None:
        ch = self._channel(call, ev.uniqueid, ev.channel)
        if isinstance(ch, _Origin):
            ch.created = ev.time
            ch.exten = sys.intern(ev.exten)
        elif isinstance(ch, _Leg) and not ch.leg:
            ch.leg_start = ev.time
        if isinstance(ch, _Party):
            self._caller_id(ch, ev)

    def _on_callerid(self, call: _Call, ev: Event) -> None:
        ch = self._channel(call, ev.uniqueid, ev.channel)
        if isinstance(ch, _Party):
            self._caller_id(ch, ev)

    @staticmethod
    def _caller_id(ch: _Party, ev: Event) -> None:
        # the first number and name given count
        if ch.ext is None and ev.callerid_num:
            ch.ext = sys.intern(ev.callerid_num)
        if isinstance(ch, _Origin):
            if not ch.callerid_num and ev.callerid_num and ch.role == "trunk":
                ch.callerid_num = ev.callerid_num
            if not ch.callerid_name and ev.callerid_name:
                ch.callerid_name = sys.intern(ev.callerid_name)

    def _on_hangup_request(self, call: _Call, ev: Event) -> None:
        ch = self._channel(call, ev.uniqueid, ev.channel)
        if isinstance(ch, _Party) and ch.hangup_asked is None:
            ch.hangup_asked = ev.time

    def _on_hangup(self, call: _Call, ev: Event) -> None:
        ch = self._channel(call, ev.uniqueid, ev.channel)
        if ch.hungup is not None:
            return
        ch.hungup = ev.time
        if isinstance(ch, _Party):
            if ch.hangup_asked is None:
                ch.hangup_asked = ev.time
            if isinstance(ch, _Origin):
                ch.cause, ch.cause_txt = ev.cause, sys.intern(ev.cause_txt)
        if not _up(call):
            self._closing[call.linkedid] = ev.recv + self.grace_s

    def _on_dial_begin(self, call: _Call, ev: Event) -> None:
        dest = self._channel(call, ev.dest_uniqueid, ev.dest_channel)
        if not isinstance(dest, _Leg) or dest.leg:
            return
        dest.leg, dest.leg_start = call.events, ev.time
        # The dialplan was handling extension X, yet another phone rings: a forward.
        if (
            ev.uniqueid
            and dest.role == "device"
            and self.profile.is_internal_number(ev.exten)
            and dest.ext
            and dest.ext != ev.exten
        ):
            call.more().forwarded = True

    def _on_dial_end(self, call: _Call, ev: Event) -> None:
        dest = self._channel(call, ev.dest_uniqueid, ev.dest_channel)
        if not isinstance(dest, _Leg):
            return
        if not dest.leg:  # DialEnd without DialBegin (attended-transfer consultation)
            dest.leg, dest.leg_start = call.events, dest.leg_start or ev.time
        if dest.outcome:  # app_queue sends a second DialEnd for legs that did not connect
            return
        dest.outcome = sys.intern(ev.dial_status)
        dest.ring_end = ev.time
        if ev.dial_status == "ANSWER":
            dest.answered = call.events

    def _on_queue_join(self, call: _Call, ev: Event) -> None:
        call.queue = call.queue or sys.intern(ev.queue)

    def _on_transfer(self, call: _Call, ev: Event) -> None:
        if ev.result in ("", "Success"):
            call.more().transferred = True

    def _on_varset(self, call: _Call, ev: Event) -> None:
        if ev.value:  # decode keeps the recording's variable only
            _add_recording(call, ev.value)

    def _on_cdr(self, call: _Call, ev: Event) -> None:
        if ev.userfield:
            for rx in self._recording_patterns:
                m = rx.search(ev.userfield)
                if m:
                    _add_recording(call, m.groupdict().get("file") or m.group(0))
                    break
        # One CDR row per (party A, party B) and per dial attempt; the call's outcome is the
        # origin's row that ended last (a ring group's losing forks end before the winner's),
        # the later of two that ended at the same second.
        origin = call.origin
        if origin is not None and origin.uniqueid == ev.uniqueid:
            if origin.cdr_end is None or ev.cdr_end >= origin.cdr_end:
                # interned: the calls ending in the same second share it
                origin.cdr_end = sys.intern(ev.cdr_end)
                origin.disposition = sys.intern(ev.disposition)
        elif _find(call, ev.uniqueid) is None:
            rare = call.more()
            early = rare.early_cdrs
            if early is None:
                early = rare.early_cdrs = {}
            row = early.get(ev.uniqueid)
            if row is None or ev.cdr_end >= row[0]:
                early[ev.uniqueid] = (ev.cdr_end, ev.disposition)

    # -- output --------------------------------------------------------------------------

    def _reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def _close(self, linkedid: str, *, incomplete: bool) -> list[Output]:
        call = self._calls.pop(linkedid)
        closing_at = self._closing.pop(linkedid, None)
        if self._by_uniqueid is not None:
            for ch in _channels(call):
                self._by_uniqueid.pop(ch.uniqueid, None)
        self._closed[linkedid] = (closing_at or call.first_recv) + self.tombstone_s
        origin = call.origin
        if origin is None:
            self._reject("no_pbx_leg")
            return []
        legs = _legs(call)
        record = summarize(call, origin, legs, self.profile, self.pbx_id, incomplete)
        if self.rate is not None:
            record = self.rate(record)
        return [record, *(_leg_record(leg, record) for leg in legs)]


_NONE_RARE = _Rare()  # read-only: what a call without rare fields has


def _chain(call: _Call) -> list[_Channel]:
    """The chained channels, newest first."""
    out = []
    ch = call.last
    while ch is not None:
        out.append(ch)
        ch = ch.before
    return out


def _chained(call: _Call) -> int:
    n = 0
    ch = call.last
    while ch is not None:
        n += 1
        ch = ch.before
    return n


def _channels(call: _Call) -> Collection[_Channel]:
    """The call's channels."""
    rare = call.rare
    return rare.index.values() if rare is not None and rare.index is not None else _chain(call)


def _up(call: _Call) -> bool:
    """Whether a channel of the call has not hung up."""
    if call.rare is not None and call.rare.index is not None:
        return any(c.hungup is None for c in call.rare.index.values())
    ch = call.last
    while ch is not None:
        if ch.hungup is None:
            return True
        ch = ch.before
    return False


def _find(call: _Call, uniqueid: str) -> _Channel | None:
    if call.rare is not None and call.rare.index is not None:
        return call.rare.index.get(uniqueid)
    ch = call.last
    while ch is not None:
        if ch.uniqueid == uniqueid:
            return ch
        ch = ch.before
    return None


def _legs(call: _Call) -> list[_Leg]:
    """The call's ringing attempts, in the order they began."""
    legs = [c for c in _channels(call) if isinstance(c, _Leg) and c.leg]
    legs.sort(key=lambda c: c.leg)
    return legs


def _add_recording(call: _Call, name: str) -> None:
    # the variable gives the PBX's full path, a userfield often just the file name: one file
    rare = call.more()
    if rare.recordings is None:
        rare.recordings = []
    base = name.rsplit("/", 1)[-1]
    if all(r.rsplit("/", 1)[-1] != base for r in rare.recordings):
        rare.recordings.append(name)


def _r(x: float) -> float:
    return round(x, 3)


def summarize(
    call: _Call, origin: _Origin, legs: list[_Leg], profile: PbxProfile, pbx_id: str,
    incomplete: bool,
) -> CallRecord:
    """One record for the whole call, from its folded state (``legs``: :func:`_legs`)."""
    answers = sorted((leg for leg in legs if leg.answered), key=lambda c: c.answered)
    humans = [c for c in _channels(call) if isinstance(c, _Party)]

    if origin.role == "trunk":
        direction = "inbound"
    elif any(leg.role == "trunk" for leg in legs):
        direction = "outbound"
    elif legs or profile.is_internal_number(origin.exten):
        direction = "internal"
    else:
        direction = "outbound"  # an employee dialled the PSTN; the route never reached a trunk

    start = origin.created if origin.created is not None else call.first_time
    ends = [c.hungup for c in humans if c.hungup is not None]
    end = max(ends) if ends else call.last_time
    answered = bool(answers)
    first_answer = answers[0].ring_end if answered else None

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
    parties: list[_Party] = [origin, *(answers if answered else legs)]
    asked = [(p.hangup_asked, i, p) for i, p in enumerate(parties) if p.hangup_asked is not None]
    hangup_by = ""
    if asked:
        hangup_by = "caller" if min(asked)[2] is origin else "callee"

    rang: list[str] = []
    for leg in legs:
        ext = leg.extension
        if leg.role == "device" and ext and ext not in rang:
            rang.append(ext)

    distinct_answerers = {ch.party for ch in answers}
    rare = call.rare or _NONE_RARE
    return CallRecord(
        call_id=f"{pbx_id}:{call.linkedid}",
        pbx_id=pbx_id,
        linkedid=call.linkedid,
        direction=direction,  # type: ignore[arg-type]
        caller=origin.callerid_num if origin.role == "trunk" else origin.extension,
        caller_name=origin.callerid_name,
        called=origin.exten,
        answered=answered,
        first_answered_by=answers[0].party if answered else None,
        last_answered_by=answers[-1].party if answered else None,
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
        transferred=rare.transferred or len(distinct_answerers) > 1,
        forwarded=rare.forwarded,
        recordings=tuple(rare.recordings or ()),
        disposition=origin.disposition,
        incomplete=incomplete,
        version=call.events,
    )


def _leg_record(ch: _Leg, record: CallRecord) -> CallLeg:
    answer = ch.answer
    end = ch.hungup if ch.hungup is not None else (ch.ring_end or record.end)
    rang_until = answer if answer is not None else (ch.ring_end or end)
    return CallLeg(
        leg_id=f"{record.pbx_id}:{ch.uniqueid}",
        call_id=record.call_id,
        pbx_id=record.pbx_id,
        linkedid=record.linkedid,
        kind="trunk" if ch.role == "trunk" else "device",
        extension=ch.party,
        channel=ch.name,
        start=_r(ch.leg_start),
        answer=_r(answer) if answer is not None else None,
        end=_r(end),
        ring_s=_r(max(rang_until - ch.leg_start, 0.0)),
        talk_s=_r(max(end - answer, 0.0)) if answer is not None else 0.0,
        outcome=ch.outcome or "UNKNOWN",
        answered=answer is not None,
        version=record.version,
    )
