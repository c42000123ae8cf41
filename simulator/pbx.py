"""One simulated call's timeline: channels, their state, and the AMI events Asterisk emits for them.

Pure: time is an offset in seconds from the call's start (passed in), ids come from an injected
allocator, jitter from an injected ``random.Random``. ``scenarios.py`` composes these emitters
into whole calls, in the order the real Asterisk 22 capture shows.
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from simulator.ami import (
    CAUSE_TEXT,
    DOWN,
    RING,
    Bridge,
    Chan,
    Headers,
    cdr_time,
    event_headers,
)

TRUNK = "trunk-pstn"


class IdAllocator(Protocol):
    """Process-wide counters of the PBX, shared by every call so calls interleave deterministically."""

    def channel_suffix(self, tech: str) -> str: ...
    def uniqueid(self, epoch: float) -> str: ...
    def cdr_sequence(self) -> int: ...
    def bridge_uniqueid(self) -> str: ...


class Counters:
    """The default allocator: Asterisk's counters, started where a freshly booted PBX starts them."""

    def __init__(self, seed: int = 0) -> None:
        self._suffix: dict[str, int] = {}
        self._unique = 0
        self._sequence = 0
        self._rng = random.Random(f"bridges:{seed}")

    def channel_suffix(self, tech: str) -> str:
        n = self._suffix.get(tech, 0)
        self._suffix[tech] = n + 1
        return f"{n:08x}"

    def uniqueid(self, epoch: float) -> str:
        n = self._unique
        self._unique += 1
        return f"{int(epoch)}.{n}"

    def cdr_sequence(self) -> int:
        n = self._sequence
        self._sequence += 1
        return n

    def bridge_uniqueid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))


@dataclass(frozen=True, slots=True)
class SimCall:
    """One call: its events (offset from ``start``, headers) and the record the pipeline must make."""

    kind: str
    start: float
    events: tuple[tuple[float, Headers], ...]
    expected: dict[str, Any]

    @property
    def duration(self) -> float:
        return self.events[-1][0] if self.events else 0.0


@dataclass(slots=True)
class _CdrRow:
    end: float
    disposition: str


@dataclass
class CallBuilder:
    """Accumulates one call's events; every emitter updates the channels it touches first."""

    kind: str
    start: float
    ids: IdAllocator
    rng: random.Random
    t: float = 0.0
    events: list[tuple[float, Headers]] = field(default_factory=list)
    channels: list[Chan] = field(default_factory=list)
    linkedid: str = ""
    answers: list[tuple[float, str]] = field(default_factory=list)  # (offset, who) of each person answering
    _pbx_rows: list[_CdrRow] = field(default_factory=list)

    # ---------------------------------------------------------------- time

    def gap(self, lo: float = 4e-6, hi: float = 6e-5) -> None:
        """The few microseconds between two events Asterisk publishes back to back."""
        self.t += self.rng.uniform(lo, hi)

    def wait(self, seconds: float) -> None:
        self.t += max(0.0, seconds)

    def now(self) -> float:
        return self.start + self.t

    def emit(self, name: str, fields: list[tuple[str, str]] | tuple[tuple[str, str], ...], *,
             advance: bool = True) -> None:
        if advance:
            self.gap()
        self.events.append((self.t, event_headers(name, self.start + self.t, fields)))

    # ---------------------------------------------------------------- channels

    def new_channel(
        self,
        name_prefix: str,
        *,
        tech: str,
        state: int,
        context: str,
        exten: str,
        role: str,
        ext: str = "",
        cid: tuple[str, str] = ("", ""),
        accountcode: str = "",
        suffix: str | None = None,
        half: str = "",
    ) -> Chan:
        """Allocate a channel (``<prefix>-<suffix><half>``) and publish its Newchannel."""
        self.gap()
        if suffix is None:
            suffix = self.ids.channel_suffix(tech)
        uid = self.ids.uniqueid(self.start + self.t)
        ch = Chan(
            name=f"{name_prefix}-{suffix}{half}",
            uniqueid=uid,
            linkedid=self.linkedid or uid,
            created=self.t,
            state=state,
            cid_num=cid[0],
            cid_name=cid[1],
            accountcode=accountcode,
            context=context,
            exten=exten,
            role=role,
            ext=ext,
        )
        if not self.linkedid:
            self.linkedid = uid
        self.channels.append(ch)
        self.emit("Newchannel", ch.block(), advance=False)  # at the instant the Uniqueid was taken
        return ch

    def local_pair(
        self, target: str, context: str, *, cid1: tuple[str, str], cid2: tuple[str, str],
        accountcode: str = "",
    ) -> tuple[Chan, Chan]:
        """A Local channel: two halves, ``;1`` created Down and ``;2`` Ring, one suffix."""
        suffix = self.ids.channel_suffix("Local")
        prefix = f"Local/{target}@{context}"
        one = self.new_channel(prefix, tech="Local", state=DOWN, context=context, exten=target,
                               role="local", cid=cid1, accountcode=accountcode, suffix=suffix, half=";1")
        two = self.new_channel(prefix, tech="Local", state=RING, context=context, exten=target,
                               role="local", cid=cid2, accountcode=accountcode, suffix=suffix, half=";2")
        return one, two

    # ---------------------------------------------------------------- channel events

    def newexten(self, ch: Chan, app: str, data: str, *, context: str | None = None,
                 exten: str | None = None, priority: int | None = None) -> None:
        if context is not None:
            ch.context = context
        if exten is not None:
            ch.exten = exten
        if priority is not None:
            ch.priority = priority
        ch.app, ch.appdata = app, data
        self.emit("Newexten", [*ch.block(), ("Extension", ch.exten), ("Application", app), ("AppData", data)])

    def run(self, ch: Chan, context: str, exten: str, steps: list[tuple[str, str]], first: int = 1) -> None:
        """Dialplan steps ``(app, data)`` at priorities first, first+1…, with their side effects."""
        for i, (app, data) in enumerate(steps):
            self.newexten(ch, app, data, context=context, exten=exten, priority=first + i)
            self.app_effects(ch, app, data)

    def app_effects(self, ch: Chan, app: str, data: str) -> None:
        if app == "Set" and "=" in data:
            var, value = data.split("=", 1)
            if var == "CHANNEL(accountcode)":
                self.newaccountcode(ch, value)
            elif not var.startswith("CDR("):
                self.varset(ch, var, value)

    def varset(self, ch: Chan, var: str, value: str) -> None:
        ch.vars[var] = value
        self.emit("VarSet", [*ch.block(), ("Variable", var), ("Value", value)])

    def newcallerid(self, ch: Chan, num: str, name: str) -> None:
        ch.cid_num, ch.cid_name = num, name
        self.emit("NewCallerid", [*ch.block(), ("CID-CallingPres", "0 (Presentation Allowed, Not Screened)")])

    def newconnectedline(self, ch: Chan, num: str, name: str) -> None:
        ch.conn_num, ch.conn_name = num, name
        self.emit("NewConnectedLine", ch.block())

    def newaccountcode(self, ch: Chan, code: str) -> None:
        old, ch.accountcode = ch.accountcode, code
        self.emit("NewAccountCode", [*ch.block(), ("OldAccountCode", old)])

    def newstate(self, ch: Chan, state: int) -> None:
        ch.state = state
        self.emit("Newstate", ch.block())

    def hangup_request(self, ch: Chan, cause: int) -> None:
        self.emit("HangupRequest", [*ch.block(), ("Cause", str(cause))])

    def soft_hangup_request(self, ch: Chan, cause: int = 16) -> None:
        self.emit("SoftHangupRequest", [*ch.block(), ("Cause", str(cause))])

    def hangup(self, ch: Chan, cause: int) -> None:
        self.emit("Hangup", [*ch.block(), ("Cause", str(cause)), ("Cause-txt", CAUSE_TEXT.get(cause, "Unknown"))])
        ch.hungup = self.t

    def device_state(self, device: str, state: str) -> None:
        self.emit("DeviceStateChange", [("Device", device), ("State", state)])

    def mixmonitor_start(self, ch: Chan) -> None:
        self.emit("MixMonitorStart", ch.block())

    def dtmf_end(self, ch: Chan, digit: str) -> None:
        self.emit("DTMFEnd", [*ch.block(), ("Digit", digit), ("DurationMs", "0"), ("Direction", "Received")])

    def hold(self, ch: Chan) -> None:
        self.emit("Hold", ch.block())

    # ---------------------------------------------------------------- dial

    def dial_begin(self, caller: Chan | None, dest: Chan, dialstring: str) -> None:
        fields = [*(caller.block() if caller else []), *dest.block("Dest"), ("DialString", dialstring)]
        self.emit("DialBegin", fields)

    def dial_state(self, caller: Chan | None, dest: Chan, status: str = "RINGING") -> None:
        self.emit("DialState", [*(caller.block() if caller else []), *dest.block("Dest"), ("DialStatus", status)])

    def dial_end(self, caller: Chan | None, dest: Chan, status: str) -> None:
        self.emit("DialEnd", [*(caller.block() if caller else []), *dest.block("Dest"), ("DialStatus", status)])
        if status == "ANSWER" and dest.role in ("device", "trunk"):
            self.answers.append((self.t, dest.ext if dest.role == "device" else "external"))

    def local_bridge(self, one: Chan, two: Chan, context: str, exten: str, optimize: bool) -> None:
        self.emit("LocalBridge", [*one.block("LocalOne"), *two.block("LocalTwo"), ("Context", context),
                                  ("Exten", exten), ("LocalOptimization", "Yes" if optimize else "No")])

    # ---------------------------------------------------------------- bridges

    def bridge_create(self) -> Bridge:
        b = Bridge(self.ids.bridge_uniqueid())
        self.emit("BridgeCreate", b.block())
        return b

    def bridge_enter(self, b: Bridge, ch: Chan, swap: Chan | None = None) -> None:
        b.channels.append(ch)
        ch.bridge = b.uniqueid
        fields = [*b.block(), *ch.block()]
        if swap is not None:
            fields.append(("SwapUniqueid", swap.uniqueid))
        self.emit("BridgeEnter", fields)

    def bridge_leave(self, b: Bridge, ch: Chan) -> None:
        if ch in b.channels:
            b.channels.remove(ch)
        ch.bridge = ""
        self.emit("BridgeLeave", [*b.block(), *ch.block()])

    def bridge_destroy(self, b: Bridge) -> None:
        self.emit("BridgeDestroy", b.block())

    # ---------------------------------------------------------------- queues

    def queue_event(self, name: str, caller: Chan, dest: Chan | None, extra: list[tuple[str, str]]) -> None:
        self.emit(name, [*caller.block(), *(dest.block("Dest") if dest else []), *extra])

    def queue_member_status(self, queue: str, member: str, interface: str, state_interface: str,
                            status: int, *, calls_taken: int = 0, last_call: int = 0, in_call: int = 0) -> None:
        self.emit("QueueMemberStatus", [
            ("Queue", queue), ("MemberName", member), ("Interface", interface),
            ("StateInterface", state_interface), ("Membership", "static"), ("Penalty", "0"),
            ("CallsTaken", str(calls_taken)), ("LastCall", str(last_call)), ("LastPause", "0"),
            ("LoginTime", str(int(self.start) - 3600)), ("InCall", str(in_call)), ("Status", str(status)),
            ("Paused", "0"), ("PausedReason", ""), ("Ringinuse", "1"), ("Wrapuptime", "0"),
        ])

    # ---------------------------------------------------------------- CDR

    def cdr(
        self,
        a: Chan,
        b: Chan | None,
        *,
        dst: str,
        dcontext: str,
        lastapp: str,
        lastdata: str,
        start: float,
        answer: float | None,
        end: float,
        disposition: str,
        calltype: str,
        route: str,
        userfield: str = "",
        peeraccount: str | None = None,
        clid: tuple[str, str] | None = None,
    ) -> None:
        """A ``Cdr`` event (cdr_manager with the LinkedID/Sequence/… mappings) for one (A, B) row."""
        num, name = clid if clid is not None else (a.cid_num, a.cid_name)
        duration = math.floor(end - start)
        billsec = math.floor(end - answer) if answer is not None else 0
        self.emit("Cdr", [
            ("AccountCode", a.accountcode),
            ("Source", num),
            ("Destination", dst),
            ("DestinationContext", dcontext),
            ("CallerID", f'"{name}" <{num}>' if name else num),
            ("Channel", a.name),
            ("DestinationChannel", b.name if b else ""),
            ("LastApplication", lastapp),
            ("LastData", lastdata),
            ("StartTime", cdr_time(self.start + start)),
            ("AnswerTime", cdr_time(self.start + answer) if answer is not None else ""),
            ("EndTime", cdr_time(self.start + end)),
            ("Duration", str(duration)),
            ("BillableSeconds", str(billsec)),
            ("Disposition", disposition),
            ("AMAFlags", "DOCUMENTATION"),
            ("UniqueID", a.uniqueid),
            ("UserField", userfield),
            ("LinkedID", a.linkedid),
            ("Sequence", str(self.ids.cdr_sequence())),
            ("PeerAccount", (b.accountcode if b else "") if peeraccount is None else peeraccount),
            ("Scenario", self.kind),
            ("CallType", calltype),
            ("Route", route),
        ])
        if self.channels and a is self.channels[0]:
            self._pbx_rows.append(_CdrRow(end, disposition))

    # ---------------------------------------------------------------- result

    def last_disposition(self) -> str:
        """The PBX leg's CDR row that ended last (ties: the later one written)."""
        if not self._pbx_rows:
            return ""
        best = self._pbx_rows[0]
        for row in self._pbx_rows[1:]:
            if row.end >= best.end:
                best = row
        return best.disposition

    def build(self, expected: dict[str, Any]) -> SimCall:
        """Freeze the call. Timing fields of ``expected`` come from the events themselves."""
        origin = self.channels[0]
        humans = [c for c in self.channels if c.role in ("trunk", "device")]
        ends = [c.hungup for c in humans if c.hungup is not None]
        start = round(self.start + origin.created, 3)
        end = round(self.start + max(ends), 3)
        out = {"transferred": False, "forwarded": False, "recordings": [], "queue": "",
               "caller_name": origin.cid_name, "follow_up": None, "follow_up_of": None, **expected}
        out["kind"] = self.kind
        out["linkedid"] = self.linkedid
        out["start"] = start
        out["end"] = end
        out["duration_s"] = round(end - start, 3)
        if self.answers:
            answer = round(self.start + self.answers[0][0], 3)
            out.update(answered=True, status="answered", first_answered_by=self.answers[0][1],
                       last_answered_by=self.answers[-1][1], wait_s=round(answer - start, 3),
                       talk_s=round(end - answer, 3))
        else:
            out.update(answered=False, first_answered_by=None, last_answered_by=None, wait_s=None, talk_s=0)
        out["asterisk_last_disposition"] = self.last_disposition()
        return SimCall(self.kind, self.start, tuple(self.events), out)

