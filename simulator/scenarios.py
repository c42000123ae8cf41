"""Every kind of call the simulated PBX makes, and a seeded generator that mixes them.

Pure: no I/O, no clock, no sleep. A kind is a function ``(start, ids, rng, **parties/times)``
returning a ``SimCall``: its AMI events and the call record the pipeline must produce (rules of
``tests/fixtures/asterisk/README.md``, "The call record we expect"). Each kind replays, channel
by channel, what the real Asterisk 22 did in the matching scenario of that capture (named in
the docstrings), with the capture's simulated humans removed and production channel names:

* ``PJSIP/trunk-pstn-%08x`` the SIP trunk (an inbound call starts on one, outbound calls dial one);
* ``PJSIP/<ext>-%08x`` the employees' phones;
* ``Local/<x>@<ctx>-%08x;1|;2`` where a real PBX has Local pairs: queue members
  (``Local/104@from-queue/n``), forwards (``Local/103@forward/n``) and the attended-transfer
  consultation call (``Local/103@employees``).

The dialplan the channels run is the capture's ``extensions.conf`` for the PBX part.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from simulator.ami import BUSY, DOWN, RING, RINGING, UP, Bridge, Chan
from simulator.customers import FOREIGN, LANDLINE, MOBILE, Customer, CustomerBook
from simulator.pbx import TRUNK, CallBuilder, Counters, IdAllocator, SimCall

# ---------------------------------------------------------------------------- the PBX

EMPLOYEES: dict[str, str] = {
    "101": "Anna Kowalska",
    "102": "Tomasz Lewandowski",
    "103": "Katarzyna Dabrowska",
    "104": "Ewa Zielinska",
    "105": "Piotr Wozniak",
    "106": "Małgorzata Wójcik",
    "107": "Krzysztof Kamiński",
    "108": "Agnieszka Szymańska",
    "109": "Michał Woźniak",
    "111": "Joanna Kozłowska",
    "112": "Grzegorz Jankowski",
}
MAIN_NUMBER = "+48221234567"  # ring group 600
RING_GROUP = ("101", "102", "103")
SALES_LINE = "+48221234510"  # recorded, rings 105
SALES_EXT = "105"
SUPPORT_LINE = "+48221234599"  # queue "support"
QUEUE = "support"
QUEUE_MEMBERS = ("104", "105")
QUEUE_MEMBER_TIMEOUT = 15.0
QUEUE_RETRY = 2.0
MONDIR = "/var/spool/asterisk/monitor"


def did_of(ext: str) -> str:
    """Direct DID of an extension: +48221234501..509 for 101..109, +48221234711.. above."""
    n = int(ext) - 100
    return f"+48221234{500 + n}" if n < 10 else f"+48221234{700 + n}"


def name_of(ext: str) -> str:
    return EMPLOYEES.get(ext, f"Extension {ext}")


def calltype_of(number: str) -> str:
    """The outbound route the capture's dialplan picks (``from-internal`` patterns)."""
    if number == "112":
        return "emergency"
    if number.startswith("00999"):
        return "blocked"
    if number.startswith("0048"):
        return "national-e164"
    if number.startswith("0044"):
        return "international-uk"
    if number.startswith("00"):
        return "international"
    if number.startswith("0700"):
        return "premium"
    if number[:2] in ("05", "06", "07", "08"):
        return "mobile"
    return "national"


Party = tuple[str, str]  # (number, name)

# ---------------------------------------------------------------------------- building blocks


@dataclass(slots=True)
class _Dial:
    """One Dial() (or Queue()) run by ``caller``: when it started and when a callee answered."""

    caller: Chan
    started: float
    answered: float | None = None
    cdr_start: float = 0.0


def _new(kind: str, start: float, ids: IdAllocator, rng: random.Random) -> CallBuilder:
    return CallBuilder(kind=kind, start=start, ids=ids, rng=rng)


def _device_name(ch: Chan) -> str:
    """Device-state name: the channel name without its ``-suffix`` (and ``;n``)."""
    return ch.name.rsplit("-", 1)[0]


def _inbound_leg(b: CallBuilder, did: str, caller: Party) -> Chan:
    """The trunk channel of an inbound call and ``[from-pstn]`` (capture: the from-pstn ``;2``)."""
    trunk = b.new_channel(f"PJSIP/{TRUNK}", tech="PJSIP", state=RING, context="from-pstn",
                          exten=did, role="trunk")
    b.varset(trunk, "__SCENARIO", b.kind)
    b.newcallerid(trunk, *caller)
    b.newconnectedline(trunk, *caller)
    b.device_state(f"PJSIP/{TRUNK}", "INUSE")
    b.run(trunk, "from-pstn", did, [
        ("NoOp", f"Inbound call to DID {did} from {caller[0]}"),
        ("Set", f"CDR(scenario)={b.kind}"),
        ("Set", "CDR(calltype)=inbound"),
        ("Set", f"CHANNEL(accountcode)={TRUNK}"),
        ("Goto", f"did-routes,{did},1"),
    ])
    return trunk


def _employee_leg(b: CallBuilder, ext: str, number: str) -> Chan:
    """An employee's phone placing a call (capture: the from-internal ``;2``)."""
    dev = b.new_channel(f"PJSIP/{ext}", tech="PJSIP", state=RING, context="from-internal",
                        exten=number, role="device", ext=ext)
    b.varset(dev, "__SCENARIO", b.kind)
    b.newcallerid(dev, ext, name_of(ext))
    b.newconnectedline(dev, ext, name_of(ext))
    b.device_state(f"PJSIP/{ext}", "INUSE")
    return dev


def _employees(b: CallBuilder, ch: Chan, ext: str, *, cfu: str = "", cfna: str = "") -> None:
    """``[employees]`` up to (not including) the Dial."""
    b.run(ch, "employees", ext, [
        ("NoOp", f"Extension {ext} (CFU={cfu} CFNA={cfna})"),
        ("GotoIf", f"{1 if cfu else 0}?cfu"),
    ])


def _direct_did(b: CallBuilder, trunk: Chan, did: str, ext: str) -> None:
    b.run(trunk, "did-routes", did, [("Set", f"CDR(route)=did-ext-{ext}"), ("Goto", f"employees,{ext},1")])


_DIAL_VARS = ("DIALSTATUS", "DIALEDPEERNUMBER", "DIALEDPEERNAME", "ANSWEREDTIME", "ANSWEREDTIME_MS",
              "DIALEDTIME", "DIALEDTIME_MS", "RINGTIME", "RINGTIME_MS", "PROGRESSTIME", "PROGRESSTIME_MS")


def _dial_app(b: CallBuilder, caller: Chan, data: str, priority: int | None = None) -> _Dial:
    """The ``Dial`` Newexten and app_dial clearing its variables."""
    b.newexten(caller, "Dial", data, priority=priority)
    for var in _DIAL_VARS:
        b.varset(caller, var, "")
    return _Dial(caller, b.t, cdr_start=caller.created)


def _callee(b: CallBuilder, caller: Chan, target: str, peer_number: str, *, ext: str = "",
            trunk: bool = False) -> Chan:
    """The channel a Dial creates: a phone (``PJSIP/<ext>``) or the trunk (``PJSIP/trunk-pstn``)."""
    if trunk:
        ch = b.new_channel(f"PJSIP/{TRUNK}", tech="PJSIP", state=DOWN, context="from-internal",
                           exten=target, role="trunk")
        cid: Party = (target, "")
    else:
        ch = b.new_channel(f"PJSIP/{ext}", tech="PJSIP", state=DOWN, context="from-internal",
                           exten=target, role="device", ext=ext)
        cid = (ext, name_of(ext))
    b.varset(ch, "DIALEDPEERNUMBER", peer_number)
    b.varset(ch, "__SCENARIO", b.kind)
    ch.cid_num, ch.cid_name = cid
    ch.conn_num, ch.conn_name = caller.cid_num, caller.cid_name
    acct, ch.accountcode = ch.accountcode, caller.accountcode
    b.newexten(ch, "AppDial", "(Outgoing Line)")
    ch.accountcode = acct
    b.newcallerid(ch, *cid)
    b.newaccountcode(ch, caller.accountcode)
    b.newconnectedline(ch, caller.cid_num, caller.cid_name)
    return ch


def _local_callee(b: CallBuilder, caller: Chan, target: str, context: str, *,
                  queue: bool = False) -> tuple[Chan, Chan]:
    """A ``Local/<target>@<context>/n`` pair dialled by ``caller`` (by Dial, or by app_queue)."""
    one, two = b.local_pair(target, context, cid1=("", ""), cid2=("", ""))
    peer = f"{target}@{context}/n"
    if queue:
        # app_queue: the member channel gets its caller ID before its variables (capture s05)
        one.cid_num, one.cid_name = caller.cid_num, caller.cid_name
        b.newexten(one, "AppQueue", "(Outgoing Line)")
        b.newcallerid(one, caller.cid_num, caller.cid_name)
        b.varset(one, "__SCENARIO", b.kind)
        b.varset(one, "DIALEDPEERNUMBER", peer)
    else:
        b.varset(one, "DIALEDPEERNUMBER", peer)
        b.varset(one, "__SCENARIO", b.kind)
        one.cid_num, one.cid_name = target, caller.cid_name
        one.conn_num, one.conn_name = caller.cid_num, caller.cid_name
        b.newexten(one, "AppDial", "(Outgoing Line)")
        b.newcallerid(one, target, caller.cid_name)
        b.newaccountcode(one, caller.accountcode)
        b.newconnectedline(one, caller.cid_num, caller.cid_name)
    b.varset(two, "DIALEDPEERNUMBER", peer)
    b.varset(two, "__SCENARIO", b.kind)
    b.newcallerid(two, caller.cid_num, caller.cid_name)
    b.newaccountcode(two, caller.accountcode)
    b.newconnectedline(two, caller.cid_num, caller.cid_name)
    b.local_bridge(one, two, context, target, optimize=False)
    return one, two


def _ring(b: CallBuilder, dial: _Dial, dest: Chan, *, first: bool = True) -> None:
    """The callee rings: its Newstate, the device state, RINGTIME on the first one, DialState."""
    b.newstate(dest, RINGING)
    b.device_state(_device_name(dest), "RINGING" if dest.role == "device" else "INUSE")
    if first:
        b.varset(dial.caller, "RINGTIME", "0")
        b.varset(dial.caller, "RINGTIME_MS", str(b.rng.randint(0, 5)))
    b.dial_state(dial.caller, dest)


def _answer(b: CallBuilder, dial: _Dial, dest: Chan, peer_number: str, *,
            losers: tuple[Chan, ...] = ()) -> Bridge:
    """The callee answers: DialEnd ANSWER, the caller is answered, both enter a new bridge."""
    b.newstate(dest, UP)
    b.device_state(_device_name(dest), "INUSE")
    for loser in losers:
        b.dial_end(dial.caller, loser, "CANCEL")
    for loser in losers:
        b.hangup(loser, 26)
        b.device_state(_device_name(loser), "NOT_INUSE")
    b.varset(dial.caller, "DIALSTATUS", "ANSWER")
    b.varset(dial.caller, "DIALEDPEERNAME", dest.name)
    b.varset(dial.caller, "DIALEDPEERNUMBER", peer_number)
    b.dial_end(dial.caller, dest, "ANSWER")
    dial.answered = b.t
    if dial.caller.state != UP:
        b.newstate(dial.caller, UP)
    bridge = b.bridge_create()
    b.newexten(dest, "AppDial", "(Outgoing Line)", exten="")
    b.bridge_enter(bridge, dest)
    b.bridge_enter(bridge, dial.caller)
    b.varset(dest, "BRIDGEPEER", dial.caller.name)
    b.varset(dial.caller, "BRIDGEPEER", dest.name)
    return bridge


def _dial_done_vars(b: CallBuilder, dial: _Dial, status: str = "ANSWER") -> None:
    """What app_dial sets when an answered Dial returns."""
    talk = b.t - (dial.answered if dial.answered is not None else b.t)
    total = b.t - dial.started
    b.varset(dial.caller, "ANSWEREDTIME", str(int(talk)))
    b.varset(dial.caller, "ANSWEREDTIME_MS", str(int(talk * 1000)))
    b.varset(dial.caller, "DIALEDTIME", str(int(total)))
    b.varset(dial.caller, "DIALEDTIME_MS", str(int(total * 1000)))
    b.varset(dial.caller, "DIALSTATUS", status)


def _hangup(b: CallBuilder, ch: Chan, cause: int) -> None:
    b.hangup(ch, cause)
    b.device_state(_device_name(ch), "NOT_INUSE")


def _end_bridged(b: CallBuilder, dial: _Dial, callee: Chan, bridge: Bridge, *, first: str,
                 cdr: Callable[[], None] | None = None, callee_hangs: bool = True) -> None:
    """Tear down an answered two-party Dial; ``first`` ("caller"/"callee") hangs up first.

    Caller first (capture s01, s16): HangupRequest, BRIDGEPEER cleared, both leave, the Dial
    returns on the caller, which hangs up, then the callee. Callee first (s24, s10, s12): the
    callee leaves and hangs up, the caller's Dial returns and it hangs up. The ``Cdr`` of the
    pair goes early or late: Asterisk finalises it in a race with the Hangup.
    """
    a = dial.caller
    early = cdr is not None and b.rng.random() < 0.5
    if first == "caller":
        b.hangup_request(a, 16)
        if early and cdr:
            cdr()
        b.varset(a, "BRIDGEPEER", "")
        b.varset(callee, "BRIDGEPEER", "")
        b.bridge_leave(bridge, a)
        b.bridge_leave(bridge, callee)
        _dial_done_vars(b, dial)
        b.soft_hangup_request(a, 16)
        _hangup(b, a, 16)
        b.bridge_destroy(bridge)
        if callee_hangs:
            _hangup(b, callee, 16)
    else:
        b.hangup_request(callee, 16)
        b.varset(callee, "BRIDGEPEER", "")
        b.varset(a, "BRIDGEPEER", "")
        b.bridge_leave(bridge, callee)
        _hangup(b, callee, 16)
        b.bridge_leave(bridge, a)
        b.bridge_destroy(bridge)
        _dial_done_vars(b, dial)
        if early and cdr:
            cdr()
        b.soft_hangup_request(a, 16)
        _hangup(b, a, 16)
    if cdr is not None and not early:
        cdr()


# ---------------------------------------------------------------------------- CDR helpers


def _cdr_dial(b: CallBuilder, dial: _Dial, callee: Chan | None, *, dst: str, dcontext: str, data: str,
              disposition: str, calltype: str, route: str, app: str = "Dial", userfield: str = "",
              answer: float | None = None, end: float | None = None, start: float | None = None) -> None:
    a = dial.caller
    row_start = dial.cdr_start if start is None else start
    ans = answer if answer is not None else dial.answered
    b.cdr(a, callee, dst=dst, dcontext=dcontext, lastapp=app, lastdata=data, start=row_start,
          answer=ans, end=b.t if end is None else end, disposition=disposition, calltype=calltype,
          route=route, userfield=userfield)


def _cdr_after(b: CallBuilder, a: Chan, *, dst: str, dcontext: str, app: str, data: str,
               disposition: str, calltype: str, route: str, answered: bool = False, userfield: str = "") -> None:
    """The 0-second row of a failed Dial that continued in the dialplan (README oddity 10e)."""
    b.cdr(a, None, dst=dst, dcontext=dcontext, lastapp=app, lastdata=data, start=b.t,
          answer=b.t if answered else None, end=b.t, disposition=disposition, calltype=calltype,
          route=route, userfield=userfield, peeraccount="")


# ---------------------------------------------------------------------------- inbound


def _inbound_record(caller: Party, did: str, route: str, status: str = "missed") -> dict[str, Any]:
    return {"direction": "inbound", "caller": caller[0], "called": did, "status": status, "route": route}


def _in_to_ext(b: CallBuilder, trunk: Chan, did: str, ext: str, *, cfu: str = "", cfna: str = "") -> None:
    _direct_did(b, trunk, did, ext)
    _employees(b, trunk, ext, cfu=cfu, cfna=cfna)


def inbound_answered(start: float, ids: IdAllocator, rng: random.Random, *, caller: Party, ext: str,
                     ring_s: float, talk_s: float, hangup_by: str = "caller",
                     kind: str = "in_answered") -> SimCall:
    """DID → extension, answered (capture s01, s29; callee hang-up as s10)."""
    b = _new(kind, start, ids, rng)
    did = did_of(ext)
    trunk = _inbound_leg(b, did, caller)
    _in_to_ext(b, trunk, did, ext)
    route = f"did-ext-{ext}"
    data = f"PJSIP/{ext},20,tT"
    dial = _dial_app(b, trunk, data, priority=3)
    dev = _callee(b, trunk, ext, ext, ext=ext)
    b.dial_begin(trunk, dev, ext)
    _ring(b, dial, dev)
    b.wait(ring_s)
    bridge = _answer(b, dial, dev, ext)
    b.wait(talk_s)
    _end_bridged(b, dial, dev, bridge, first="caller" if hangup_by == "caller" else "callee",
                 cdr=lambda: _cdr_dial(b, dial, dev, dst=ext, dcontext="employees", data=data,
                                       disposition="ANSWERED", calltype="inbound", route=route))
    return b.build(_inbound_record(caller, did, route))


def inbound_recorded(start: float, ids: IdAllocator, rng: random.Random, *, caller: Party,
                     ring_s: float, talk_s: float, hangup_by: str = "caller", ext: str = SALES_EXT) -> SimCall:
    """The recorded sales line: MixMonitor, then → 105 (capture s26)."""
    b = _new("in_recorded", start, ids, rng)
    did = SALES_LINE
    trunk = _inbound_leg(b, did, caller)
    rec = f"{MONDIR}/in-{trunk.uniqueid}.wav"
    b.run(trunk, "did-routes", did, [
        ("Set", "CDR(route)=sales-recorded"),
        ("Set", f"CDR(userfield)=rec:in-{trunk.uniqueid}.wav"),
        ("MixMonitor", f"{rec},b"),
    ])
    b.varset(trunk, "MIXMONITOR_FILENAME", rec)
    b.mixmonitor_start(trunk)
    b.newexten(trunk, "Goto", f"employees,{ext},1", priority=4)
    _employees(b, trunk, ext)
    data = f"PJSIP/{ext},20,tT"
    dial = _dial_app(b, trunk, data, priority=3)
    dev = _callee(b, trunk, ext, ext, ext=ext)
    b.dial_begin(trunk, dev, ext)
    _ring(b, dial, dev)
    b.wait(ring_s)
    bridge = _answer(b, dial, dev, ext)
    b.wait(talk_s)
    _end_bridged(b, dial, dev, bridge, first="caller" if hangup_by == "caller" else "callee",
                 cdr=lambda: _cdr_dial(b, dial, dev, dst=ext, dcontext="employees", data=data,
                                       disposition="ANSWERED", calltype="inbound", route="sales-recorded",
                                       userfield=f"rec:in-{trunk.uniqueid}.wav"))
    out = _inbound_record(caller, did, "sales-recorded")
    out["recordings"] = [rec]
    return b.build(out)


def _after_failed_dial(b: CallBuilder, trunk: Chan, status: str, cause: int) -> None:
    """``[employees]`` after a Dial that did not connect: NoOp, the two GotoIfs."""
    b.newexten(trunk, "NoOp", f"DIALSTATUS={status} HANGUPCAUSE={cause}", priority=4)
    b.newexten(trunk, "GotoIf", f"{1 if status == 'BUSY' else 0}?busy", priority=5)


def inbound_no_answer(start: float, ids: IdAllocator, rng: random.Random, *, caller: Party, ext: str,
                      ring_s: float = 20.0) -> SimCall:
    """Nobody answers; Dial times out after 20 s and the PBX hangs up (capture s02)."""
    b = _new("in_no_answer", start, ids, rng)
    did = did_of(ext)
    trunk = _inbound_leg(b, did, caller)
    _in_to_ext(b, trunk, did, ext)
    route = f"did-ext-{ext}"
    data = f"PJSIP/{ext},20,tT"
    dial = _dial_app(b, trunk, data, priority=3)
    dev = _callee(b, trunk, ext, ext, ext=ext)
    b.dial_begin(trunk, dev, ext)
    _ring(b, dial, dev)
    b.wait(ring_s)
    b.dial_end(trunk, dev, "NOANSWER")
    _hangup(b, dev, 0)
    b.varset(trunk, "DIALSTATUS", "NOANSWER")
    _after_failed_dial(b, trunk, "NOANSWER", 0)
    b.newexten(trunk, "GotoIf", "0?cfna", priority=6)
    b.newexten(trunk, "Hangup", "", priority=7)
    b.soft_hangup_request(trunk, 16)
    _hangup(b, trunk, 16)
    _cdr_dial(b, dial, dev, dst=ext, dcontext="employees", data=data, disposition="NO ANSWER",
              calltype="inbound", route=route)
    _cdr_after(b, trunk, dst=ext, dcontext="employees", app="Hangup", data="", disposition="NO ANSWER",
               calltype="inbound", route=route)
    return b.build(_inbound_record(caller, did, route))


def inbound_busy(start: float, ids: IdAllocator, rng: random.Random, *, caller: Party, ext: str,
                 listen_s: float = 1.0) -> SimCall:
    """The phone is busy; Busy(2) plays until the caller hangs up (capture s03)."""
    b = _new("in_busy", start, ids, rng)
    did = did_of(ext)
    trunk = _inbound_leg(b, did, caller)
    _in_to_ext(b, trunk, did, ext)
    route = f"did-ext-{ext}"
    data = f"PJSIP/{ext},20,tT"
    dial = _dial_app(b, trunk, data, priority=3)
    dev = _callee(b, trunk, ext, ext, ext=ext)
    b.dial_begin(trunk, dev, ext)
    b.gap(2e-4, 1.5e-3)
    b.dial_end(trunk, dev, "BUSY")
    _hangup(b, dev, 0)
    b.varset(trunk, "DIALSTATUS", "BUSY")
    _after_failed_dial(b, trunk, "BUSY", 0)
    b.newexten(trunk, "Busy", "2", priority=8)
    b.newstate(trunk, BUSY)
    b.wait(listen_s)
    b.hangup_request(trunk, 0)
    b.soft_hangup_request(trunk, 16)
    _hangup(b, trunk, 17)
    _cdr_dial(b, dial, dev, dst=ext, dcontext="employees", data=data, disposition="BUSY",
              calltype="inbound", route=route)
    _cdr_after(b, trunk, dst=ext, dcontext="employees", app="Busy", data="2", disposition="BUSY",
               calltype="inbound", route=route)
    return b.build(_inbound_record(caller, did, route))


def inbound_caller_gives_up(start: float, ids: IdAllocator, rng: random.Random, *, caller: Party,
                            ext: str, ring_s: float) -> SimCall:
    """The caller hangs up while the phone rings (capture s23)."""
    b = _new("in_caller_gives_up", start, ids, rng)
    did = did_of(ext)
    trunk = _inbound_leg(b, did, caller)
    _in_to_ext(b, trunk, did, ext)
    route = f"did-ext-{ext}"
    data = f"PJSIP/{ext},20,tT"
    dial = _dial_app(b, trunk, data, priority=3)
    dev = _callee(b, trunk, ext, ext, ext=ext)
    b.dial_begin(trunk, dev, ext)
    _ring(b, dial, dev)
    b.wait(ring_s)
    b.hangup_request(trunk, 19)
    b.dial_end(trunk, dev, "CANCEL")
    _hangup(b, dev, 19)
    b.varset(trunk, "DIALSTATUS", "CANCEL")
    b.soft_hangup_request(trunk, 16)
    _hangup(b, trunk, 19)
    _cdr_dial(b, dial, dev, dst=ext, dcontext="employees", data=data, disposition="NO ANSWER",
              calltype="inbound", route=route)
    return b.build(_inbound_record(caller, did, route))


def inbound_unavailable(start: float, ids: IdAllocator, rng: random.Random, *, caller: Party,
                        ext: str, fail_s: float = 1.0) -> SimCall:
    """The phone rejects the call, cause 20 subscriber absent: CHANUNAVAIL (capture s27)."""
    b = _new("in_unavailable", start, ids, rng)
    did = did_of(ext)
    trunk = _inbound_leg(b, did, caller)
    _in_to_ext(b, trunk, did, ext)
    route = f"did-ext-{ext}"
    data = f"PJSIP/{ext},20,tT"
    dial = _dial_app(b, trunk, data, priority=3)
    dev = _callee(b, trunk, ext, ext, ext=ext)
    b.dial_begin(trunk, dev, ext)
    b.wait(fail_s)
    b.hangup_request(dev, 20)
    b.dial_end(trunk, dev, "CHANUNAVAIL")
    _hangup(b, dev, 20)
    b.varset(trunk, "DIALSTATUS", "CHANUNAVAIL")
    _after_failed_dial(b, trunk, "CHANUNAVAIL", 20)
    b.newexten(trunk, "GotoIf", "0?cfna", priority=6)
    b.newexten(trunk, "Hangup", "", priority=7)
    b.soft_hangup_request(trunk, 16)
    _cdr_dial(b, dial, dev, dst=ext, dcontext="employees", data=data, disposition="FAILED",
              calltype="inbound", route=route)
    _hangup(b, trunk, 20)
    _cdr_after(b, trunk, dst=ext, dcontext="employees", app="Hangup", data="", disposition="FAILED",
               calltype="inbound", route=route)
    return b.build(_inbound_record(caller, did, route))


def inbound_ring_group(start: float, ids: IdAllocator, rng: random.Random, *, caller: Party,
                       members: tuple[str, ...] = RING_GROUP, answerer: str | None, ring_s: float,
                       talk_s: float = 0.0, hangup_by: str = "caller") -> SimCall:
    """Main number → ring group, all phones in parallel; one answers or none in 20 s (capture s04)."""
    b = _new("in_ring_group", start, ids, rng)
    did = MAIN_NUMBER
    route = "ringgroup-600"
    trunk = _inbound_leg(b, did, caller)
    b.run(trunk, "did-routes", did, [("Set", f"CDR(route)={route}")])
    data = "&".join(f"PJSIP/{m}" for m in members) + ",20,tT"
    dial = _dial_app(b, trunk, data, priority=2)
    devs = [_callee(b, trunk, m, m, ext=m) for m in members]
    for d, m in zip(devs, members, strict=True):
        b.dial_begin(trunk, d, m)
    for i, d in enumerate(devs):
        _ring(b, dial, d, first=i == 0)
    if answerer is None:
        b.wait(20.0)
        for d in devs:
            b.dial_end(trunk, d, "NOANSWER")
        for d in devs:
            _hangup(b, d, 0)
        b.varset(trunk, "DIALSTATUS", "NOANSWER")
        b.newexten(trunk, "NoOp", "Ring group DIALSTATUS=NOANSWER", priority=3)
        b.newexten(trunk, "Hangup", "", priority=4)
        b.soft_hangup_request(trunk, 16)
        _hangup(b, trunk, 16)
        for d in devs:
            _cdr_dial(b, dial, d, dst=did, dcontext="did-routes", data=data, disposition="NO ANSWER",
                      calltype="inbound", route=route)
        return b.build(_inbound_record(caller, did, route))
    b.wait(ring_s)
    winner = devs[members.index(answerer)]
    losers = tuple(d for d in devs if d is not winner)
    bridge = _answer(b, dial, winner, answerer, losers=losers)
    b.wait(talk_s)

    answered_at = dial.answered

    def cdrs() -> None:
        for d in devs:
            _cdr_dial(b, dial, d, dst=did, dcontext="did-routes", data=data,
                      disposition="ANSWERED" if d is winner else "NO ANSWER", calltype="inbound", route=route,
                      answer=answered_at if d is winner else None, end=None if d is winner else answered_at)

    _end_bridged(b, dial, winner, bridge, first="caller" if hangup_by == "caller" else "callee", cdr=cdrs)
    return b.build(_inbound_record(caller, did, route))


# ---------------------------------------------------------------------------- queue

_QUEUE_STATS = ("QUEUENAME", "QUEUEMAX", "QUEUESTRATEGY", "QUEUECALLS", "QUEUEHOLDTIME", "QUEUETALKTIME",
                "QUEUECOMPLETED", "QUEUEABANDONED", "QUEUESRVLEVEL", "QUEUESRVLEVELPERF")


def _queue_stats(b: CallBuilder, ch: Chan, *, calls: int, hold: int, talk: int, completed: int,
                 abandoned: int) -> None:
    values = (QUEUE, "0", "ringall", str(calls), str(hold), str(talk), str(completed), str(abandoned), "0", "0.0")
    for var, value in zip(_QUEUE_STATS, values, strict=True):
        b.varset(ch, var, value)


@dataclass(slots=True)
class _Member:
    ext: str
    one: Chan
    two: Chan
    dial: _Dial  # the ;2's Dial(PJSIP/<ext>)
    dev: Chan

    @property
    def interface(self) -> str:
        return f"Local/{self.ext}@from-queue/n"

    @property
    def name(self) -> str:
        return f"{name_of(self.ext)} ({self.ext})"


def _queue_ring_round(b: CallBuilder, trunk: Chan, members: tuple[str, ...]) -> list[_Member]:
    """app_queue rings every member (ringall): a Local member channel each, whose ;2 dials the phone."""
    out = []
    pending = []
    for ext in members:
        one, two = _local_callee(b, trunk, ext, "from-queue", queue=True)
        b.queue_event("AgentCalled", trunk, one, [("Queue", QUEUE), ("Interface", f"Local/{ext}@from-queue/n"),
                                                  ("MemberName", f"{name_of(ext)} ({ext})")])
        b.dial_begin(trunk, one, f"{ext}@from-queue/n")
        pending.append((ext, one, two))
    for ext, one, two in pending:
        b.run(two, "from-queue", ext, [("NoOp", f"Queue member {ext}")])
        data = f"PJSIP/{ext},,t"
        dial = _dial_app(b, two, data, priority=2)
        dev = _callee(b, two, ext, ext, ext=ext)
        b.dial_begin(two, dev, ext)
        out.append(_Member(ext, one, two, dial, dev))
    for m in out:
        _ring(b, m.dial, m.dev)
        b.newstate(m.one, RINGING)
        b.newexten(m.one, "AppQueue", "(Outgoing Line)")
        b.newconnectedline(m.one, trunk.cid_num, trunk.cid_name)
        b.queue_member_status(QUEUE, m.name, m.interface, f"PJSIP/{m.ext}", 6)
    for m in reversed(out):
        b.dial_state(trunk, m.one)
    return out


def _member_cancel(b: CallBuilder, m: _Member, cause: int) -> None:
    """A member leg that lost: the queue hangs up its ;1, the ;2 cancels the phone."""
    _hangup(b, m.one, cause)
    b.hangup_request(m.two, cause)
    b.dial_end(m.two, m.dev, "CANCEL")
    _hangup(b, m.dev, cause)
    b.varset(m.two, "DIALSTATUS", "CANCEL")
    b.soft_hangup_request(m.two, 16)
    b.hangup(m.two, cause)
    b.queue_member_status(QUEUE, m.name, m.interface, f"PJSIP/{m.ext}", 1)


def _queue_start(b: CallBuilder, trunk: Chan, timeout: int) -> None:
    did = trunk.exten
    b.run(trunk, "did-routes", did, [("Set", "CDR(route)=queue-support"), ("Answer", "")])
    b.newstate(trunk, UP)
    b.device_state(f"PJSIP/{TRUNK}", "INUSE")
    b.gap(0.015, 0.025)  # Answer() waits for media before the next priority
    b.newexten(trunk, "Queue", f"{QUEUE},rt,,,{timeout}", priority=3)
    for var in ("ANSWEREDTIME", "ANSWEREDTIME_MS", "DIALEDTIME", "DIALEDTIME_MS", "QUEUEWAIT", "QUEUEWAIT_MS"):
        b.varset(trunk, var, "")
    b.queue_event("QueueCallerJoin", trunk, None, [("Queue", QUEUE), ("Position", "1"), ("Count", "1")])


def _queue_cdrs(b: CallBuilder, trunk: Chan, rows: list[tuple[_Member, float, float, str]], data: str) -> None:
    for m, row_start, row_end, disposition in rows:
        b.cdr(trunk, m.one, dst=trunk.exten, dcontext="did-routes", lastapp="Queue", lastdata=data,
              start=row_start, answer=row_start, end=row_end, disposition=disposition, calltype="inbound",
              route="queue-support", peeraccount="")


def inbound_queue_answered(start: float, ids: IdAllocator, rng: random.Random, *, caller: Party,
                           members: tuple[str, ...] = QUEUE_MEMBERS, answerer: str, ring_s: float,
                           talk_s: float, hangup_by: str = "agent") -> SimCall:
    """Support line → Answer → Queue(support) ringall; a member answers (capture s05)."""
    b = _new("in_queue_answered", start, ids, rng)
    did = SUPPORT_LINE
    trunk = _inbound_leg(b, did, caller)
    timeout = 60
    _queue_start(b, trunk, timeout)
    data = f"{QUEUE},rt,,,{timeout}"
    queue_at = b.t
    ring_s = min(ring_s, QUEUE_MEMBER_TIMEOUT - 0.5)
    members_ = _queue_ring_round(b, trunk, members)
    b.wait(ring_s)
    win = next(m for m in members_ if m.ext == answerer)
    others = [m for m in members_ if m is not win]
    # the phone answers the member's ;2, which answers the ;1 (Local /n: no optimisation)
    lbridge = _answer(b, win.dial, win.dev, win.ext)
    b.newstate(win.one, UP)
    b.dial_end(trunk, win.one, "ANSWER")
    for m in others:
        b.dial_end(trunk, m.one, "CANCEL")
        b.dial_end(trunk, m.one, "CANCEL")
    for m in others:
        _member_cancel(b, m, 26)
    cancelled_at = b.t
    hold = int(b.t - queue_at)
    member_vars = (("MEMBERINTERFACE", win.interface), ("MEMBERNAME", win.name), ("MEMBERCALLS", "0"),
                   ("MEMBERLASTCALL", "0"), ("MEMBERPENALTY", "0"), ("MEMBERDYNAMIC", "0"),
                   ("MEMBERREALTIME", "0"))
    for ch in (trunk, win.one):
        for var, value in member_vars:
            b.varset(ch, var, value)
    for ch in (trunk, win.one):
        b.varset(ch, "QEHOLDTIME", str(hold))
        b.varset(ch, "QEORIGINALPOS", "1")
    for ch in (trunk, win.one):
        _queue_stats(b, ch, calls=1, hold=hold, talk=0, completed=0, abandoned=0)
    b.queue_event("QueueCallerLeave", trunk, None, [("Queue", QUEUE), ("Position", "1"), ("Count", "0")])
    b.varset(trunk, "QUEUEPOSITION", "1")
    b.varset(trunk, "QUEUEWAIT", str(hold))
    b.varset(trunk, "QUEUEWAIT_MS", str(int((b.t - queue_at) * 1000)))
    b.queue_event("AgentConnect", trunk, win.one, [("Queue", QUEUE), ("Interface", win.interface),
                                                   ("MemberName", win.name), ("HoldTime", str(hold)),
                                                   ("RingTime", str(int(ring_s)))])
    b.queue_member_status(QUEUE, win.name, win.interface, f"PJSIP/{win.ext}", 2, in_call=1)
    qbridge = b.bridge_create()
    b.bridge_enter(qbridge, win.one)
    b.bridge_enter(qbridge, trunk)
    b.varset(win.one, "BRIDGEPEER", trunk.name)
    b.varset(trunk, "BRIDGEPEER", win.one.name)
    connected = b.t
    b.wait(talk_s)
    talk = int(b.t - connected)
    reason = "agent" if hangup_by == "agent" else "caller"
    if hangup_by == "agent":
        # the phone hangs up: its ;2 finishes, the ;1 is hung up, the queue reports and returns
        _end_bridged(b, win.dial, win.dev, lbridge, first="callee")
        b.hangup_request(win.one, 16)
        b.queue_event("AgentComplete", trunk, win.one, [
            ("Queue", QUEUE), ("Interface", win.interface), ("MemberName", win.name),
            ("HoldTime", str(hold)), ("TalkTime", str(talk)), ("Reason", reason)])
        b.varset(win.one, "BRIDGEPEER", "")
        b.varset(trunk, "BRIDGEPEER", "")
        b.bridge_leave(qbridge, win.one)
        _hangup(b, win.one, 16)
        b.bridge_leave(qbridge, trunk)
        b.bridge_destroy(qbridge)
    else:
        b.hangup_request(trunk, 16)
        b.queue_event("AgentComplete", trunk, win.one, [
            ("Queue", QUEUE), ("Interface", win.interface), ("MemberName", win.name),
            ("HoldTime", str(hold)), ("TalkTime", str(talk)), ("Reason", reason)])
        b.varset(trunk, "BRIDGEPEER", "")
        b.varset(win.one, "BRIDGEPEER", "")
        b.bridge_leave(qbridge, trunk)
        b.bridge_leave(qbridge, win.one)
        b.bridge_destroy(qbridge)
        _hangup(b, win.one, 16)
        _end_bridged(b, win.dial, win.dev, lbridge, first="caller")
    b.queue_member_status(QUEUE, win.name, win.interface, f"PJSIP/{win.ext}", 1, calls_taken=1,
                          last_call=int(b.now()))
    rows = [(win, trunk.created, b.t, "ANSWERED")] + [(m, trunk.created, cancelled_at, "NO ANSWER")
                                                     for m in others]
    _queue_stats(b, trunk, calls=0, hold=hold, talk=talk, completed=1, abandoned=0)
    total = b.t - queue_at
    b.varset(trunk, "ANSWEREDTIME", str(talk))
    b.varset(trunk, "ANSWEREDTIME_MS", str(int((b.t - connected) * 1000)))
    b.varset(trunk, "DIALEDTIME", str(int(total)))
    b.varset(trunk, "DIALEDTIME_MS", str(int(total * 1000)))
    _queue_stats(b, trunk, calls=0, hold=hold, talk=talk, completed=1, abandoned=0)
    _queue_cdrs(b, trunk, rows[:1], data)
    b.soft_hangup_request(trunk, 16)
    _hangup(b, trunk, 16)
    _queue_cdrs(b, trunk, rows[1:], data)
    return b.build({**_inbound_record(caller, did, "queue-support"), "queue": QUEUE})


def _queue_unanswered(kind: str, start: float, ids: IdAllocator, rng: random.Random, *, caller: Party,
                      members: tuple[str, ...], wait_s: float, timeout: int | None) -> SimCall:
    """Nobody answers; the caller gives up (abandon, s06) or the queue times out (s28)."""
    b = _new(kind, start, ids, rng)
    did = SUPPORT_LINE
    trunk = _inbound_leg(b, did, caller)
    qtimeout = timeout if timeout is not None else 60
    _queue_start(b, trunk, qtimeout)
    data = f"{QUEUE},rt,,,{qtimeout}"
    queue_at = b.t
    end_at = queue_at + (float(qtimeout) if timeout is not None else wait_s)
    rows: list[tuple[_Member, float, float, str]] = []
    round_start = b.t
    members_ = _queue_ring_round(b, trunk, members)
    while True:
        ring_end = round_start + QUEUE_MEMBER_TIMEOUT
        if ring_end >= end_at:
            break
        # member timeout: every leg rings out, the queue retries after ``retry`` seconds
        b.wait(ring_end - b.t)
        for m in members_:
            b.queue_event("AgentRingNoAnswer", trunk, m.one, [
                ("Queue", QUEUE), ("Interface", m.interface), ("MemberName", m.name),
                ("RingTime", str(int(QUEUE_MEMBER_TIMEOUT * 1000)))])
        for m in members_:
            b.dial_end(trunk, m.one, "NOANSWER")
        for m in members_:
            b.dial_end(trunk, m.one, "CANCEL")
            _member_cancel(b, m, 0)
        rows += [(m, round_start, b.t, "NO ANSWER") for m in members_]
        b.wait(QUEUE_RETRY)
        round_start = b.t
        members_ = _queue_ring_round(b, trunk, members)
    b.wait(end_at - b.t)
    if timeout is None:  # abandon: the caller hangs up
        b.hangup_request(trunk, 16)
        for m in members_:
            b.dial_end(trunk, m.one, "CANCEL")
        for m in members_:
            b.dial_end(trunk, m.one, "CANCEL")
            _member_cancel(b, m, 0)
        held = int(b.t - queue_at)
        b.varset(trunk, "QUEUEWAIT", str(held))
        b.varset(trunk, "QUEUEWAIT_MS", str(int((b.t - queue_at) * 1000)))
        b.varset(trunk, "DIALEDTIME", str(held))
        b.varset(trunk, "DIALEDTIME_MS", str(int((b.t - queue_at) * 1000)))
        b.varset(trunk, "ANSWEREDTIME", "0")
        b.varset(trunk, "ANSWEREDTIME_MS", "0")
        b.varset(trunk, "ABANDONED", "TRUE")
        _queue_stats(b, trunk, calls=1, hold=0, talk=0, completed=0, abandoned=0)
        b.queue_event("QueueCallerAbandon", trunk, None, [("Queue", QUEUE), ("Position", "1"),
                                                           ("OriginalPosition", "1"), ("HoldTime", str(held))])
        _queue_stats(b, trunk, calls=1, hold=0, talk=0, completed=0, abandoned=1)
        b.queue_event("QueueCallerLeave", trunk, None, [("Queue", QUEUE), ("Position", "1"), ("Count", "0")])
        b.varset(trunk, "QUEUEPOSITION", "1")
        rows += [(m, round_start, b.t, "NO ANSWER") for m in members_]
        b.soft_hangup_request(trunk, 16)
        _hangup(b, trunk, 16)
        _queue_cdrs(b, trunk, rows, data)
        return b.build({**_inbound_record(caller, did, "queue-support"), "queue": QUEUE})
    # queue timeout: the last round is cut short
    for m in members_:
        b.queue_event("AgentRingNoAnswer", trunk, m.one, [
            ("Queue", QUEUE), ("Interface", m.interface), ("MemberName", m.name),
            ("RingTime", str(int((b.t - round_start) * 1000)))])
    for m in members_:
        b.dial_end(trunk, m.one, "NOANSWER")
    for m in members_:
        b.dial_end(trunk, m.one, "CANCEL")
        _member_cancel(b, m, 0)
    rows += [(m, round_start, b.t, "NO ANSWER") for m in members_]
    held = int(b.t - queue_at)
    b.varset(trunk, "ABANDONED", "TRUE")
    _queue_stats(b, trunk, calls=1, hold=0, talk=0, completed=0, abandoned=0)
    b.queue_event("QueueCallerAbandon", trunk, None, [("Queue", QUEUE), ("Position", "1"),
                                                       ("OriginalPosition", "1"), ("HoldTime", str(held))])
    b.varset(trunk, "QUEUEWAIT", str(held))
    b.varset(trunk, "QUEUEWAIT_MS", str(int((b.t - queue_at) * 1000)))
    b.varset(trunk, "DIALEDTIME", str(held))
    b.varset(trunk, "DIALEDTIME_MS", str(int((b.t - queue_at) * 1000)))
    b.varset(trunk, "ANSWEREDTIME", "0")
    b.varset(trunk, "ANSWEREDTIME_MS", "0")
    _queue_stats(b, trunk, calls=1, hold=0, talk=0, completed=0, abandoned=1)
    b.queue_event("QueueCallerLeave", trunk, None, [("Queue", QUEUE), ("Position", "1"), ("Count", "0")])
    _queue_cdrs(b, trunk, rows, data)
    b.varset(trunk, "QUEUEPOSITION", "1")
    b.varset(trunk, "QUEUESTATUS", "TIMEOUT")
    b.cdr(trunk, None, dst=did, dcontext="did-routes", lastapp="Hangup", lastdata="", start=b.t, answer=b.t,
          end=b.t, disposition="ANSWERED", calltype="inbound", route="queue-support", peeraccount="")
    b.newexten(trunk, "NoOp", "QUEUESTATUS=TIMEOUT", priority=4)
    b.newexten(trunk, "Hangup", "", priority=5)
    b.soft_hangup_request(trunk, 16)
    _hangup(b, trunk, 16)
    return b.build({**_inbound_record(caller, did, "queue-support"), "queue": QUEUE})


def inbound_queue_abandoned(start: float, ids: IdAllocator, rng: random.Random, *, caller: Party,
                            members: tuple[str, ...] = QUEUE_MEMBERS, wait_s: float) -> SimCall:
    """The caller hangs up while waiting in the queue (capture s06)."""
    return _queue_unanswered("in_queue_abandoned", start, ids, rng, caller=caller, members=members,
                             wait_s=wait_s, timeout=None)


def inbound_queue_timeout(start: float, ids: IdAllocator, rng: random.Random, *, caller: Party,
                          members: tuple[str, ...] = QUEUE_MEMBERS, timeout: int = 20) -> SimCall:
    """Queue timeout: nobody answered within ``timeout`` s, the PBX hangs up (capture s28)."""
    return _queue_unanswered("in_queue_timeout", start, ids, rng, caller=caller, members=members,
                             wait_s=float(timeout), timeout=timeout)


# ---------------------------------------------------------------------------- forwards


def _forward_leg(b: CallBuilder, trunk: Chan, ext: str, target: str, how: str,
                 ring_s: float) -> tuple[_Dial, Chan, _Dial, Chan, Chan]:
    """Dial(Local/<ext>@forward/n): the ``;2`` runs the forward of ``ext`` and dials the target
    phone, which rings ``ring_s``."""
    data = f"Local/{ext}@forward/n,20,tT"
    dial = _dial_app(b, trunk, data, priority=trunk.priority + 1)
    dial.cdr_start = b.t
    one, two = _local_callee(b, trunk, ext, "forward")
    b.dial_begin(trunk, one, f"{ext}@forward/n")
    b.run(two, "forward", ext, [("NoOp", f"Forward {ext} -> {target} ({how})")])
    ldial = _dial_app(b, two, f"PJSIP/{target},20,t", priority=2)
    dev = _callee(b, two, ext, target, ext=target)
    b.dial_begin(two, dev, target)
    _ring(b, ldial, dev)
    b.newstate(one, RINGING)
    b.varset(trunk, "RINGTIME", "0")
    b.varset(trunk, "RINGTIME_MS", str(b.rng.randint(0, 5)))
    b.dial_state(trunk, one)
    b.wait(ring_s)
    return dial, one, ldial, two, dev


def _forward_answered(b: CallBuilder, dial: _Dial, one: Chan, ldial: _Dial, dev: Chan, talk_s: float,
                      hangup_by: str, cdr: Callable[[], None]) -> None:
    lbridge = _answer(b, ldial, dev, dev.ext)
    bridge = _answer(b, dial, one, f"{one.exten}@forward/n")
    b.wait(talk_s)
    if hangup_by == "caller":
        _end_bridged(b, dial, one, bridge, first="caller", cdr=cdr)
        _end_bridged(b, ldial, dev, lbridge, first="caller")
    else:
        _end_bridged(b, ldial, dev, lbridge, first="callee")
        _end_bridged(b, dial, one, bridge, first="callee", cdr=cdr)


def inbound_forward_unconditional(start: float, ids: IdAllocator, rng: random.Random, *, caller: Party,
                                  ext: str, target: str, ring_s: float, talk_s: float,
                                  hangup_by: str = "callee") -> SimCall:
    """CFU: the extension forwards everything to ``target`` through a Local pair (capture s10)."""
    b = _new("in_forward_unconditional", start, ids, rng)
    did = did_of(ext)
    route = f"did-ext-{ext}"
    trunk = _inbound_leg(b, did, caller)
    _in_to_ext(b, trunk, did, ext, cfu=target)
    userfield = f"CFU {ext}->{target}"
    b.newexten(trunk, "Set", f"CDR(userfield)={userfield}", priority=10)
    dial, one, ldial, two, dev = _forward_leg(b, trunk, ext, target, "CFU", ring_s)
    data = f"Local/{ext}@forward/n,20,tT"
    _forward_answered(b, dial, one, ldial, dev, talk_s, hangup_by,
                      lambda: _cdr_dial(b, dial, one, dst=ext, dcontext="employees", data=data,
                                        disposition="ANSWERED", calltype="inbound", route=route,
                                        userfield=userfield, start=trunk.created))
    out = _inbound_record(caller, did, route)
    out["forwarded"] = True
    return b.build(out)


def inbound_forward_no_answer(start: float, ids: IdAllocator, rng: random.Random, *, caller: Party,
                              ext: str, target: str, ring_s: float, talk_s: float,
                              hangup_by: str = "callee") -> SimCall:
    """CFNA: the extension rings 10 s, then the call is forwarded to ``target`` (dialplan cfna)."""
    b = _new("in_forward_no_answer", start, ids, rng)
    did = did_of(ext)
    route = f"did-ext-{ext}"
    trunk = _inbound_leg(b, did, caller)
    _in_to_ext(b, trunk, did, ext, cfna=target)
    data = f"PJSIP/{ext},10,tT"
    first = _dial_app(b, trunk, data, priority=3)
    dev1 = _callee(b, trunk, ext, ext, ext=ext)
    b.dial_begin(trunk, dev1, ext)
    _ring(b, first, dev1)
    b.wait(10.0)
    b.dial_end(trunk, dev1, "NOANSWER")
    _hangup(b, dev1, 0)
    b.varset(trunk, "DIALSTATUS", "NOANSWER")
    _after_failed_dial(b, trunk, "NOANSWER", 0)
    b.newexten(trunk, "GotoIf", "1?cfna", priority=6)
    userfield = f"CFNA {ext}->{target}"
    b.newexten(trunk, "Set", f"CDR(userfield)={userfield}", priority=13)
    _cdr_dial(b, first, dev1, dst=ext, dcontext="employees", data=data, disposition="NO ANSWER",
              calltype="inbound", route=route)
    dial, one, ldial, two, dev = _forward_leg(b, trunk, ext, target, "CFNA", ring_s)
    fdata = f"Local/{ext}@forward/n,20,tT"
    _forward_answered(b, dial, one, ldial, dev, talk_s, hangup_by,
                      lambda: _cdr_dial(b, dial, one, dst=ext, dcontext="employees", data=fdata,
                                        disposition="ANSWERED", calltype="inbound", route=route,
                                        userfield=userfield))
    out = _inbound_record(caller, did, route)
    out["forwarded"] = True
    return b.build(out)


# ---------------------------------------------------------------------------- transfers


def _answered_inbound_head(
    b: CallBuilder, caller: Party, ext: str, ring_s: float
) -> tuple[Chan, _Dial, Chan, Bridge, str]:
    did = did_of(ext)
    trunk = _inbound_leg(b, did, caller)
    _in_to_ext(b, trunk, did, ext)
    dial = _dial_app(b, trunk, f"PJSIP/{ext},20,tT", priority=3)
    dev = _callee(b, trunk, ext, ext, ext=ext)
    b.dial_begin(trunk, dev, ext)
    _ring(b, dial, dev)
    b.wait(ring_s)
    bridge = _answer(b, dial, dev, ext)
    return trunk, dial, dev, bridge, did


def _transferred_dial(b: CallBuilder, trunk: Chan, target: str, ring_s: float, talk_s: float,
                      route: str, first_dial: _Dial, first_dev: Chan, old_bridge: Bridge,
                      drop_old: Callable[[], None]) -> None:
    """The transferee runs ``[employees]`` for ``target`` and dials it (capture s07 after the Redirect)."""
    b.newexten(trunk, "Dial", f"PJSIP/{first_dev.ext},20,tT", context="employees", exten=target, priority=1)
    b.varset(first_dev, "BRIDGEPEER", "")
    b.bridge_leave(old_bridge, trunk)
    b.varset(trunk, "DIALSTATUS", "ANSWER")
    b.newexten(trunk, "GotoIf", "0?cfu", priority=2)
    data = f"PJSIP/{target},20,tT"
    xfer_at = b.t
    dial = _dial_app(b, trunk, data, priority=3)
    dial.cdr_start = b.t
    dev = _callee(b, trunk, target, target, ext=target)
    b.dial_begin(trunk, dev, target)
    drop_old()
    first_end = b.t
    _ring(b, dial, dev)
    b.wait(ring_s)
    bridge = _answer(b, dial, dev, target)
    b.wait(talk_s)

    def cdrs() -> None:
        _cdr_dial(b, first_dial, first_dev, dst=target, dcontext="employees",
                  data=f"PJSIP/{first_dev.ext},20,tT", disposition="ANSWERED", calltype="inbound",
                  route=route, end=first_end)
        _cdr_dial(b, dial, dev, dst=target, dcontext="employees", data=data, disposition="ANSWERED",
                  calltype="inbound", route=route, answer=xfer_at)

    _end_bridged(b, dial, dev, bridge, first="callee", cdr=cdrs)


def inbound_transfer_redirect(start: float, ids: IdAllocator, rng: random.Random, *, caller: Party,
                              ext: str, target: str, ring_s: float, talk1_s: float, ring2_s: float,
                              talk_s: float) -> SimCall:
    """Blind transfer by AMI Redirect of the trunk channel: no transfer event at all (capture s07)."""
    b = _new("in_transfer_redirect", start, ids, rng)
    trunk, dial, dev, bridge, did = _answered_inbound_head(b, caller, ext, ring_s)
    b.wait(talk1_s)
    route = f"did-ext-{ext}"

    def drop_old() -> None:
        b.bridge_leave(bridge, dev)
        b.bridge_destroy(bridge)
        _hangup(b, dev, 16)

    _transferred_dial(b, trunk, target, ring2_s, talk_s, route, dial, dev, bridge, drop_old)
    out = _inbound_record(caller, did, route)
    out["transferred"] = True
    return b.build(out)


def inbound_blind_transfer(start: float, ids: IdAllocator, rng: random.Random, *, caller: Party,
                           ext: str, target: str, ring_s: float, talk1_s: float, ring2_s: float,
                           talk_s: float) -> SimCall:
    """Blind transfer from the phone (SIP REFER): a ``BlindTransfer`` event, then as a Redirect."""
    b = _new("in_blind_transfer", start, ids, rng)
    trunk, dial, dev, bridge, did = _answered_inbound_head(b, caller, ext, ring_s)
    b.wait(talk1_s)
    route = f"did-ext-{ext}"
    b.varset(dev, "TRANSFER_CONTEXT", "employees")
    b.emit("BlindTransfer", [("Result", "Success"), *dev.block("Transferer"), *trunk.block("Transferee"),
                             *bridge.block(), ("IsExternal", "Yes"), ("Context", "employees"),
                             ("Extension", target)])

    def drop_old() -> None:
        b.hangup_request(dev, 16)
        b.varset(dev, "BRIDGEPEER", "")
        b.bridge_leave(bridge, dev)
        b.bridge_destroy(bridge)
        _hangup(b, dev, 16)

    _transferred_dial(b, trunk, target, ring2_s, talk_s, route, dial, dev, bridge, drop_old)
    out = _inbound_record(caller, did, route)
    out["transferred"] = True
    return b.build(out)


def inbound_attended_transfer(start: float, ids: IdAllocator, rng: random.Random, *, caller: Party,
                              ext: str, target: str, ring_s: float, talk1_s: float, ring2_s: float,
                              consult_s: float, talk_s: float) -> SimCall:
    """Attended transfer with the ``*2`` feature: a consultation call through
    ``Local/<target>@employees``, completed when the transferer hangs up (capture s09)."""
    b = _new("in_attended_transfer", start, ids, rng)
    trunk, dial, dev, bridge, did = _answered_inbound_head(b, caller, ext, ring_s)
    route = f"did-ext-{ext}"
    b.wait(talk1_s)
    b.varset(dev, "TRANSFER_CONTEXT", "employees")
    for digit, pause in (("*", 0.0), ("2", 0.15), (None, 0.1), ("1", 0.06), ("0", 0.06), ("3", 0.06)):
        b.wait(pause)
        if digit is None:
            b.hold(dev)
        else:
            b.dtmf_end(dev, digit)
    # the consultation call
    one, two = b.local_pair(target, "employees", cid1=("", ""), cid2=("", ""), accountcode="")
    b.newaccountcode(one, trunk.accountcode)
    b.varset(one, "TRANSFERERNAME", dev.name)
    b.varset(one, "ATTENDEDTRANSFER", dev.name)
    b.varset(one, "__SCENARIO", b.kind)
    cbridge = b.bridge_create()
    b.varset(two, "ATTENDEDTRANSFER", dev.name)
    b.varset(two, "TRANSFERERNAME", dev.name)
    b.varset(two, "__SCENARIO", b.kind)
    b.newcallerid(two, ext, caller[1])
    b.newaccountcode(two, trunk.accountcode)
    b.local_bridge(one, two, "employees", target, optimize=True)
    b.newexten(two, "NoOp", f"Extension {target} (CFU= CFNA=)", priority=1)
    b.newconnectedline(one, ext, caller[1])
    b.newexten(two, "GotoIf", "0?cfu", priority=2)
    data = f"PJSIP/{target},20,tT"
    cdial = _dial_app(b, two, data, priority=3)
    tdev = _callee(b, two, target, target, ext=target)
    b.bridge_enter(cbridge, one)
    b.varset(one, "ATTENDEDTRANSFER", "")
    b.dial_begin(two, tdev, target)
    b.bridge_leave(bridge, dev)
    b.bridge_enter(cbridge, dev)
    b.varset(one, "BRIDGEPEER", dev.name)
    b.varset(dev, "BRIDGEPEER", one.name)
    b.newconnectedline(dev, "", "")
    b.newstate(tdev, RINGING)
    b.device_state(_device_name(tdev), "RINGING")
    b.newstate(one, RINGING)
    b.dial_state(None, one)
    b.varset(two, "RINGTIME", "0")
    b.varset(two, "RINGTIME_MS", str(b.rng.randint(0, 5)))
    b.dial_state(two, tdev)
    b.wait(ring2_s)
    b.newstate(tdev, UP)
    b.device_state(_device_name(tdev), "INUSE")
    b.varset(two, "DIALSTATUS", "ANSWER")
    b.varset(two, "DIALEDPEERNAME", tdev.name)
    b.varset(two, "DIALEDPEERNUMBER", target)
    b.dial_end(two, tdev, "ANSWER")
    cdial.answered = b.t
    b.newstate(two, UP)
    tbridge = b.bridge_create()
    b.newexten(tdev, "AppDial", "(Outgoing Line)", exten="")
    b.bridge_enter(tbridge, tdev)
    b.newstate(one, UP)
    b.dial_end(None, one, "ANSWER")
    b.varset(one, "BRIDGEPEER", dev.name)
    b.varset(dev, "BRIDGEPEER", one.name)
    b.bridge_enter(tbridge, two)
    b.varset(two, "ATTENDEDTRANSFER", "")
    b.varset(tdev, "BRIDGEPEER", two.name)
    b.varset(two, "BRIDGEPEER", tdev.name)
    b.wait(consult_s)
    # the transferer hangs up: attended transfer completes into the original bridge
    consult_end = b.t
    b.cdr(dev, one, dst="", dcontext="employees", lastapp="AppDial", lastdata="(Outgoing Line)",
          start=one.created, answer=cdial.answered, end=b.t, disposition="ANSWERED", calltype="",
          route="", clid=(ext, caller[1]))
    b.hangup_request(dev, 16)
    b.varset(dev, "BRIDGEPEER", "")
    b.bridge_leave(cbridge, dev)
    b.device_state(_device_name(dev), "NOT_INUSE")
    b.emit("BridgeMerge", [*bridge.block("To"), *cbridge.block("From")])
    b.bridge_leave(cbridge, one)
    b.bridge_enter(bridge, one)
    b.varset(trunk, "BRIDGEPEER", one.name)
    b.varset(one, "BRIDGEPEER", trunk.name)
    orig_block = [*bridge.block("Orig")]
    orig_block[5] = ("OrigBridgeNumChannels", "2")
    b.emit("AttendedTransfer", [
        ("Result", "Success"), *dev.block("OrigTransferer"), *orig_block, *dev.block("SecondTransferer"),
        *cbridge.block("Second"), *trunk.block("Transferee"), *one.block("TransferTarget"),
        ("IsExternal", "No"), ("DestType", "Bridge"), ("DestBridgeUniqueid", bridge.uniqueid)])
    b.bridge_destroy(cbridge)
    b.hangup(dev, 16)
    b.newconnectedline(trunk, "", "")
    b.newconnectedline(one, trunk.cid_num, trunk.cid_name)
    b.newconnectedline(tdev, trunk.cid_num, trunk.cid_name)
    b.wait(b.rng.uniform(0.2, 0.4))
    # Local optimisation: the transferee replaces the ;2 in the target's bridge
    opt_id = "0"
    b.emit("LocalOptimizationBegin", [*one.block("LocalOne"), *two.block("LocalTwo"), *trunk.block("Source"),
                                      ("DestUniqueId", two.uniqueid), ("Id", opt_id)])
    b.bridge_leave(bridge, trunk)
    b.varset(two, "BRIDGEPEER", "")
    b.newcallerid(two, trunk.cid_num, trunk.cid_name)
    b.bridge_leave(tbridge, two)
    b.bridge_enter(tbridge, trunk, swap=two)
    b.varset(tdev, "BRIDGEPEER", trunk.name)
    b.varset(trunk, "BRIDGEPEER", tdev.name)
    b.varset(one, "BRIDGEPEER", "")
    b.emit("LocalOptimizationEnd", [*one.block("LocalOne"), *two.block("LocalTwo"), ("Success", "No"),
                                    ("Id", opt_id)])
    b.cdr(one, None, dst=target, dcontext="employees", lastapp="", lastdata="", start=b.t, answer=b.t,
          end=b.t, disposition="ANSWERED", calltype="", route="", clid=("", ""))
    _cdr_dial(b, cdial, tdev, dst=target, dcontext="employees", data=data, disposition="ANSWERED",
              calltype="", route="", start=one.created)
    b.bridge_leave(bridge, one)
    b.bridge_destroy(bridge)
    b.hangup_request(two, 16)
    b.hangup(one, 16)
    _dial_done_vars(b, cdial)
    b.soft_hangup_request(two, 16)
    b.hangup(two, 16)
    b.device_state("Local/" + target + "@employees", "NOT_INUSE")
    b.wait(talk_s)
    # the target hangs up
    b.hangup_request(tdev, 16)
    b.varset(tdev, "BRIDGEPEER", "")
    b.varset(trunk, "BRIDGEPEER", "")
    b.bridge_leave(tbridge, tdev)
    _hangup(b, tdev, 16)
    _cdr_dial(b, dial, dev, dst=ext, dcontext="employees", data=f"PJSIP/{ext},20,tT", disposition="ANSWERED",
              calltype="inbound", route=route, end=consult_end)
    b.bridge_leave(tbridge, trunk)
    b.cdr(trunk, one, dst=ext, dcontext="employees", lastapp="Dial", lastdata=f"PJSIP/{ext},20,tT",
          start=consult_end, answer=consult_end, end=b.t, disposition="ANSWERED", calltype="inbound", route=route)
    b.cdr(trunk, tdev, dst=ext, dcontext="employees", lastapp="Dial", lastdata=f"PJSIP/{ext},20,tT",
          start=consult_end, answer=consult_end, end=b.t, disposition="ANSWERED", calltype="inbound", route=route)
    _dial_done_vars(b, dial)
    b.soft_hangup_request(trunk, 16)
    _hangup(b, trunk, 16)
    b.bridge_destroy(tbridge)
    out = _inbound_record(caller, did, route)
    out["transferred"] = True
    return b.build(out)


# ---------------------------------------------------------------------------- outbound & internal


def _outbound_head(b: CallBuilder, ext: str, number: str, *, record: bool) -> tuple[Chan, str, str]:
    """``[from-internal]`` → ``[outbound]`` up to the Dial (capture s12, s16)."""
    ct = calltype_of(number)
    dev = _employee_leg(b, ext, number)
    b.run(dev, "from-internal", number, [("Set", f"CT={ct}"), ("Goto", f"outbound,{number},1")])
    b.run(dev, "outbound", number, [
        ("NoOp", f"Outbound {ct} call {ext} -> {number}"),
        ("Set", f"CDR(scenario)={b.kind}"),
        ("Set", f"CDR(calltype)={ct}"),
        ("Set", "CDR(route)=trunk-out"),
        ("Set", f"CHANNEL(accountcode)=ext{ext}"),
    ])
    flag = "1" if record else "0"
    userfield = f"rec:out-{dev.uniqueid}.wav" if record else ""
    b.newexten(dev, "ExecIf", f"{flag}?Set(CDR(userfield)=rec:out-{dev.uniqueid}.wav)", priority=6)
    rec = f"{MONDIR}/out-{dev.uniqueid}.wav"
    b.newexten(dev, "ExecIf", f"{flag}?MixMonitor({rec},b)", priority=7)
    if record:
        b.varset(dev, "MIXMONITOR_FILENAME", rec)
        b.mixmonitor_start(dev)
    return dev, ct, userfield


def _outbound_record(ext: str, number: str, status: str, route: str = "trunk-out") -> dict[str, Any]:
    return {"direction": "outbound", "caller": ext, "called": number, "status": status, "route": route}


def _dial_trunk(b: CallBuilder, dev: Chan, number: str) -> tuple[_Dial, Chan, str]:
    data = f"PJSIP/{number}@{TRUNK},60,T"
    dial = _dial_app(b, dev, data, priority=8)
    out = _callee(b, dev, number, f"{number}@{TRUNK}", trunk=True)
    b.dial_begin(dev, out, f"{number}@{TRUNK}")
    return dial, out, data


def outbound_answered(start: float, ids: IdAllocator, rng: random.Random, *, ext: str, number: str,
                      ring_s: float, talk_s: float, hangup_by: str = "callee", record: bool = False,
                      kind: str | None = None) -> SimCall:
    """An employee calls the PSTN and the far end answers (capture s12, s14, s15, s18, s31; s16 recorded)."""
    ct = calltype_of(number)
    b = _new(kind or ("out_recorded" if record else f"out_{ct.split('-')[0]}"), start, ids, rng)
    dev, ct, userfield = _outbound_head(b, ext, number, record=record)
    dial, out, data = _dial_trunk(b, dev, number)
    _ring(b, dial, out)
    b.wait(ring_s)
    bridge = _answer(b, dial, out, f"{number}@{TRUNK}")
    b.wait(talk_s)
    _end_bridged(b, dial, out, bridge, first="caller" if hangup_by == "caller" else "callee",
                 cdr=lambda: _cdr_dial(b, dial, out, dst=number, dcontext="outbound", data=data,
                                       disposition="ANSWERED", calltype=ct, route="trunk-out",
                                       userfield=userfield))
    record_ = _outbound_record(ext, number, "answered")
    if record:
        record_["recordings"] = [f"{MONDIR}/out-{dev.uniqueid}.wav"]
    return b.build(record_)


def _outbound_failed(kind: str, start: float, ids: IdAllocator, rng: random.Random, *, ext: str,
                     number: str, status: str, listen_s: float) -> SimCall:
    """The far end is busy or congested (capture s21, s19)."""
    b = _new(kind, start, ids, rng)
    dev, ct, _ = _outbound_head(b, ext, number, record=False)
    dial, out, data = _dial_trunk(b, dev, number)
    b.gap(2e-4, 1.5e-3)
    b.dial_end(dev, out, status)
    _hangup(b, out, 0)
    b.varset(dev, "DIALSTATUS", status)
    b.newexten(dev, "NoOp", f"DIALSTATUS={status} HANGUPCAUSE=0", priority=9)
    b.newexten(dev, "GotoIf", f"{1 if status == 'BUSY' else 0}?busy", priority=10)
    if status == "BUSY":
        b.newexten(dev, "Busy", "2", priority=12)
        cause, disposition, app = 17, "BUSY", "Busy"
    else:
        b.newexten(dev, "GotoIf", "1?cong", priority=11)
        b.newexten(dev, "Congestion", "2", priority=14)
        cause, disposition, app = 34, "CONGESTION", "Congestion"
    b.newstate(dev, BUSY)
    b.wait(listen_s)
    b.hangup_request(dev, 0)
    b.soft_hangup_request(dev, 16)
    _cdr_dial(b, dial, out, dst=number, dcontext="outbound", data=data, disposition=disposition,
              calltype=ct, route="trunk-out")
    _cdr_after(b, dev, dst=number, dcontext="outbound", app=app, data="2", disposition=disposition,
               calltype=ct, route="trunk-out")
    _hangup(b, dev, cause)
    return b.build(_outbound_record(ext, number, "busy" if status == "BUSY" else "congestion"))


def outbound_busy(start: float, ids: IdAllocator, rng: random.Random, *, ext: str, number: str,
                  listen_s: float = 1.0) -> SimCall:
    """The called number is busy (capture s21)."""
    return _outbound_failed("out_busy", start, ids, rng, ext=ext, number=number, status="BUSY", listen_s=listen_s)


def outbound_congestion(start: float, ids: IdAllocator, rng: random.Random, *, ext: str, number: str,
                        listen_s: float = 1.0) -> SimCall:
    """The carrier returns congestion (capture s19)."""
    return _outbound_failed("out_congestion", start, ids, rng, ext=ext, number=number, status="CONGESTION",
                            listen_s=listen_s)


def outbound_blocked(start: float, ids: IdAllocator, rng: random.Random, *, ext: str, number: str,
                     listen_s: float = 1.0) -> SimCall:
    """A blocked destination: Congestion() without dialling anything (capture s20)."""
    b = _new("out_blocked", start, ids, rng)
    dev = _employee_leg(b, ext, number)
    b.run(dev, "from-internal", number, [
        ("NoOp", f"Blocked destination {number}"),
        ("Set", f"CDR(scenario)={b.kind}"),
        ("Set", "CDR(calltype)=blocked"),
        ("Set", "CDR(route)=blocked"),
        ("Set", f"CHANNEL(accountcode)=ext{ext}"),
        ("Congestion", "3"),
    ])
    b.newstate(dev, BUSY)
    b.wait(listen_s)
    b.hangup_request(dev, 0)
    b.soft_hangup_request(dev, 16)
    _hangup(b, dev, 34)
    b.cdr(dev, None, dst=number, dcontext="from-internal", lastapp="Congestion", lastdata="3", start=dev.created,
          answer=None, end=b.t, disposition="CONGESTION", calltype="blocked", route="blocked", peeraccount="")
    return b.build(_outbound_record(ext, number, "congestion", route="blocked"))


def outbound_no_answer(start: float, ids: IdAllocator, rng: random.Random, *, ext: str, number: str,
                       ring_s: float) -> SimCall:
    """The far end rings and never answers; the employee gives up (capture s22)."""
    b = _new("out_no_answer", start, ids, rng)
    dev, ct, _ = _outbound_head(b, ext, number, record=False)
    dial, out, data = _dial_trunk(b, dev, number)
    _ring(b, dial, out)
    b.wait(ring_s)
    b.hangup_request(dev, 19)
    b.dial_end(dev, out, "CANCEL")
    _hangup(b, out, 19)
    b.varset(dev, "DIALSTATUS", "CANCEL")
    b.soft_hangup_request(dev, 16)
    _cdr_dial(b, dial, out, dst=number, dcontext="outbound", data=data, disposition="NO ANSWER",
              calltype=ct, route="trunk-out")
    _hangup(b, dev, 19)
    return b.build(_outbound_record(ext, number, "no_answer"))


def _internal_head(b: CallBuilder, ext: str, target: str) -> Chan:
    """``[from-internal]`` for an extension, then ``[employees]`` (capture s24, s25)."""
    dev = _employee_leg(b, ext, target)
    b.run(dev, "from-internal", target, [
        ("NoOp", f"Internal call {ext} -> {target}"),
        ("Set", f"CDR(scenario)={b.kind}"),
        ("Set", "CDR(calltype)=internal"),
        ("Set", "CDR(route)=internal"),
        ("Set", f"CHANNEL(accountcode)=ext{ext}"),
        ("Goto", f"employees,{target},1"),
    ])
    _employees(b, dev, target)
    return dev


def internal_answered(start: float, ids: IdAllocator, rng: random.Random, *, ext: str, target: str,
                      ring_s: float, talk_s: float, hangup_by: str = "callee") -> SimCall:
    """Employee → employee, answered (capture s24)."""
    b = _new("internal_answered", start, ids, rng)
    dev = _internal_head(b, ext, target)
    data = f"PJSIP/{target},20,tT"
    dial = _dial_app(b, dev, data, priority=3)
    callee = _callee(b, dev, target, target, ext=target)
    b.dial_begin(dev, callee, target)
    _ring(b, dial, callee)
    b.wait(ring_s)
    bridge = _answer(b, dial, callee, target)
    b.wait(talk_s)
    _end_bridged(b, dial, callee, bridge, first="caller" if hangup_by == "caller" else "callee",
                 cdr=lambda: _cdr_dial(b, dial, callee, dst=target, dcontext="employees", data=data,
                                       disposition="ANSWERED", calltype="internal", route="internal"))
    return b.build({"direction": "internal", "caller": ext, "called": target, "status": "answered",
                    "route": "internal"})


def internal_busy(start: float, ids: IdAllocator, rng: random.Random, *, ext: str, target: str,
                  listen_s: float = 1.0) -> SimCall:
    """Employee → employee who is busy (capture s25)."""
    b = _new("internal_busy", start, ids, rng)
    dev = _internal_head(b, ext, target)
    data = f"PJSIP/{target},20,tT"
    dial = _dial_app(b, dev, data, priority=3)
    callee = _callee(b, dev, target, target, ext=target)
    b.dial_begin(dev, callee, target)
    b.gap(2e-4, 1.5e-3)
    b.dial_end(dev, callee, "BUSY")
    _hangup(b, callee, 0)
    b.varset(dev, "DIALSTATUS", "BUSY")
    _after_failed_dial(b, dev, "BUSY", 0)
    b.newexten(dev, "Busy", "2", priority=8)
    b.newstate(dev, BUSY)
    _cdr_dial(b, dial, callee, dst=target, dcontext="employees", data=data, disposition="BUSY",
              calltype="internal", route="internal")
    _cdr_after(b, dev, dst=target, dcontext="employees", app="Busy", data="2", disposition="BUSY",
               calltype="internal", route="internal")
    b.wait(listen_s)
    b.hangup_request(dev, 0)
    b.soft_hangup_request(dev, 16)
    _hangup(b, dev, 17)
    return b.build({"direction": "internal", "caller": ext, "called": target, "status": "busy",
                    "route": "internal"})


# ---------------------------------------------------------------------------- distributions


@dataclass(frozen=True, slots=True)
class Distribution:
    """``exp:<mean>``, ``uniform:<lo>:<hi>`` or ``fixed:<s>``, in seconds, capped at ``cap``."""

    kind: str
    a: float
    b: float = 0.0
    cap: float = 3600.0

    @classmethod
    def parse(cls, spec: str) -> Distribution:
        parts = spec.strip().split(":")
        try:
            nums = [float(x) for x in parts[1:]]
        except ValueError:
            raise ValueError(f"bad distribution {spec!r}: numbers expected") from None
        if parts[0] == "exp" and len(nums) == 1 and nums[0] > 0:
            return cls("exp", nums[0])
        if parts[0] == "uniform" and len(nums) == 2 and 0 <= nums[0] <= nums[1]:
            return cls("uniform", nums[0], nums[1])
        if parts[0] == "fixed" and len(nums) == 1 and nums[0] >= 0:
            return cls("fixed", nums[0])
        raise ValueError(f"bad distribution {spec!r}: use exp:<mean>, uniform:<lo>:<hi> or fixed:<s>")

    def sample(self, rng: random.Random) -> float:
        if self.kind == "exp":
            x = rng.expovariate(1.0 / self.a)
        elif self.kind == "uniform":
            x = rng.uniform(self.a, self.b)
        else:
            x = self.a
        return round(min(x, self.cap), 3)


# ---------------------------------------------------------------------------- the generator


# outbound categories whose numbers may be a customer's, and the customer's line for each
_BOOK_LINES = {"national": LANDLINE, "mobile": MOBILE, "international": FOREIGN}


class Picker:
    """Draws parties, numbers and times for one call from the generator's seeded RNG.

    Callers and most national, mobile and international destinations come from the customer
    ``book``; ``caller()`` remembers whom it drew (``last_caller``), and returns ``forced_caller``
    when the generator has set one (a customer calling again).
    """

    def __init__(self, rng: random.Random, talk: Distribution, ring: Distribution, *,
                 book: CustomerBook | None = None, unknown_callers: float = 0.1,
                 book_destinations: float = 0.85) -> None:
        self.rng = rng
        self.talk_dist = talk
        self.ring_dist = ring
        self.book = book if book is not None else CustomerBook(())
        self.unknown_callers = unknown_callers
        self.book_destinations = book_destinations
        self.forced_caller: Customer | None = None
        self.last_caller: Customer | None = None

    def ring(self, hi: float = 19.0) -> float:
        return min(self.ring_dist.sample(self.rng), hi)

    def talk(self) -> float:
        return self.talk_dist.sample(self.rng)

    def employee(self, *exclude: str) -> str:
        return self.rng.choice([e for e in EMPLOYEES if e not in exclude])

    def customer(self) -> Customer:
        """Who calls in: a customer by popularity, now and then a number never seen before."""
        if self.forced_caller is not None:
            return self.forced_caller
        if not len(self.book) or self.rng.random() < self.unknown_callers:
            return self.book.stranger(self.rng)
        return self.book.pick(self.rng)

    def caller(self) -> Party:
        self.last_caller = self.customer()
        return self.last_caller.party

    def number(self, category: str) -> str:
        r = self.rng

        def d(k: int) -> str:
            return "".join(r.choices("0123456789", k=k))

        line = _BOOK_LINES.get(category)
        if line is not None and len(self.book) and r.random() < self.book_destinations:
            return self.book.pick(r, line).dialled
        if category == "national":
            return r.choice(["0048" + r.choice(["22", "12", "61", "71", "58"]) + d(7),
                             "0" + r.choice("1234") + d(8)])
        if category == "mobile":
            return "0" + r.choice("5678") + d(8)
        if category == "international":
            return r.choice(["001212" + d(7), "0044" + r.choice(["20", "161", "131"]) + d(7),
                             "0049" + r.choice(["30", "89"]) + d(7), "0033" + "1" + d(8)])
        if category == "premium":
            return "0700" + d(6)
        if category == "emergency":
            return "112"
        if category == "blocked":
            return "00999" + d(6)
        raise ValueError(category)


KindFn = Callable[[float, IdAllocator, random.Random, Picker], SimCall]


def _kinds() -> dict[str, KindFn]:
    """Every kind, with how the generator picks its parties and times."""

    def hang(p: Picker, a: str = "caller", b_: str = "callee") -> str:
        return a if p.rng.random() < 0.5 else b_

    def out(category: str) -> KindFn:
        return lambda s, i, r, p: outbound_answered(
            s, i, r, ext=p.employee(), number=p.number(category), ring_s=p.ring(), talk_s=p.talk(),
            hangup_by=hang(p), kind=f"out_{category}")

    return {
        "in_answered": lambda s, i, r, p: inbound_answered(
            s, i, r, caller=p.caller(), ext=p.employee(), ring_s=p.ring(), talk_s=p.talk(), hangup_by=hang(p)),
        "in_no_answer": lambda s, i, r, p: inbound_no_answer(s, i, r, caller=p.caller(), ext=p.employee()),
        "in_busy": lambda s, i, r, p: inbound_busy(
            s, i, r, caller=p.caller(), ext=p.employee(), listen_s=round(p.rng.uniform(0.5, 4.0), 3)),
        "in_caller_gives_up": lambda s, i, r, p: inbound_caller_gives_up(
            s, i, r, caller=p.caller(), ext=p.employee(), ring_s=round(p.rng.uniform(2.0, 19.0), 3)),
        "in_unavailable": lambda s, i, r, p: inbound_unavailable(
            s, i, r, caller=p.caller(), ext=p.employee(), fail_s=round(p.rng.uniform(0.2, 2.0), 3)),
        "in_ring_group": lambda s, i, r, p: inbound_ring_group(
            s, i, r, caller=p.caller(), answerer=None if p.rng.random() < 0.15 else p.rng.choice(RING_GROUP),
            ring_s=p.ring(), talk_s=p.talk(), hangup_by=hang(p)),
        "in_recorded": lambda s, i, r, p: inbound_recorded(
            s, i, r, caller=p.caller(), ring_s=p.ring(), talk_s=p.talk(), hangup_by=hang(p)),
        "in_queue_answered": lambda s, i, r, p: inbound_queue_answered(
            s, i, r, caller=p.caller(), answerer=p.rng.choice(QUEUE_MEMBERS), ring_s=p.ring(),
            talk_s=p.talk(), hangup_by=hang(p, "agent", "caller")),
        "in_queue_abandoned": lambda s, i, r, p: inbound_queue_abandoned(
            s, i, r, caller=p.caller(), wait_s=round(p.rng.uniform(3.0, 45.0), 3)),
        "in_queue_timeout": lambda s, i, r, p: inbound_queue_timeout(
            s, i, r, caller=p.caller(), timeout=p.rng.choice([20, 30, 45, 60])),
        "in_transfer_redirect": lambda s, i, r, p: _transfer(inbound_transfer_redirect, s, i, r, p),
        "in_blind_transfer": lambda s, i, r, p: _transfer(inbound_blind_transfer, s, i, r, p),
        "in_attended_transfer": lambda s, i, r, p: _transfer(
            inbound_attended_transfer, s, i, r, p, consult_s=round(p.rng.uniform(3.0, 30.0), 3)),
        "in_forward_unconditional": lambda s, i, r, p: _forward(inbound_forward_unconditional, s, i, r, p),
        "in_forward_no_answer": lambda s, i, r, p: _forward(inbound_forward_no_answer, s, i, r, p),
        "out_national": out("national"),
        "out_mobile": out("mobile"),
        "out_international": out("international"),
        "out_premium": out("premium"),
        "out_emergency": out("emergency"),
        "out_recorded": lambda s, i, r, p: outbound_answered(
            s, i, r, ext=p.employee(), number=p.number("mobile"), ring_s=p.ring(), talk_s=p.talk(),
            hangup_by=hang(p), record=True, kind="out_recorded"),
        "out_busy": lambda s, i, r, p: outbound_busy(
            s, i, r, ext=p.employee(), number=p.number(p.rng.choice(["national", "mobile"])),
            listen_s=round(p.rng.uniform(0.5, 4.0), 3)),
        "out_congestion": lambda s, i, r, p: outbound_congestion(
            s, i, r, ext=p.employee(), number=p.number("international"), listen_s=round(p.rng.uniform(0.5, 3.0), 3)),
        "out_blocked": lambda s, i, r, p: outbound_blocked(
            s, i, r, ext=p.employee(), number=p.number("blocked"), listen_s=round(p.rng.uniform(0.5, 3.0), 3)),
        "out_no_answer": lambda s, i, r, p: outbound_no_answer(
            s, i, r, ext=p.employee(), number=p.number(p.rng.choice(["national", "mobile"])),
            ring_s=round(p.rng.uniform(8.0, 45.0), 3)),
        "internal_answered": lambda s, i, r, p: _internal(internal_answered, s, i, r, p, answered=True),
        "internal_busy": lambda s, i, r, p: _internal(internal_busy, s, i, r, p, answered=False),
    }


def _transfer(fn: Callable[..., SimCall], s: float, i: IdAllocator, r: random.Random, p: Picker,
              **extra: Any) -> SimCall:
    ext = p.employee()
    return fn(s, i, r, caller=p.caller(), ext=ext, target=p.employee(ext), ring_s=p.ring(),
              talk1_s=round(p.rng.uniform(5.0, 60.0), 3), ring2_s=p.ring(), talk_s=p.talk(), **extra)


def _forward(fn: Callable[..., SimCall], s: float, i: IdAllocator, r: random.Random, p: Picker) -> SimCall:
    ext = p.employee()
    return fn(s, i, r, caller=p.caller(), ext=ext, target=p.employee(ext), ring_s=p.ring(), talk_s=p.talk(),
              hangup_by="caller" if p.rng.random() < 0.5 else "callee")


def _internal(fn: Callable[..., SimCall], s: float, i: IdAllocator, r: random.Random, p: Picker, *,
              answered: bool) -> SimCall:
    ext = p.employee()
    target = p.employee(ext)
    if answered:
        return fn(s, i, r, ext=ext, target=target, ring_s=p.ring(), talk_s=p.talk(),
                  hangup_by="caller" if p.rng.random() < 0.5 else "callee")
    return fn(s, i, r, ext=ext, target=target, listen_s=round(p.rng.uniform(0.5, 3.0), 3))


KINDS: dict[str, KindFn] = _kinds()

DEFAULT_MIX: dict[str, float] = {
    "in_answered": 22, "in_no_answer": 5, "in_busy": 2, "in_caller_gives_up": 4, "in_unavailable": 1,
    "in_ring_group": 8, "in_recorded": 2, "in_queue_answered": 10, "in_queue_abandoned": 3,
    "in_queue_timeout": 1, "in_transfer_redirect": 1, "in_blind_transfer": 2, "in_attended_transfer": 2,
    "in_forward_unconditional": 1, "in_forward_no_answer": 1,
    "out_national": 8, "out_mobile": 10, "out_international": 2, "out_premium": 0.5, "out_emergency": 0.2,
    "out_recorded": 1, "out_busy": 2, "out_congestion": 0.5, "out_blocked": 0.3, "out_no_answer": 3,
    "internal_answered": 6, "internal_busy": 1,
}


def parse_mix(spec: str | Mapping[str, float]) -> dict[str, float]:
    """``"in_answered=5,out_mobile=2"`` (or a mapping) → weights; unknown kinds are an error."""
    if isinstance(spec, str):
        if not spec.strip():
            return dict(DEFAULT_MIX)
        mix: dict[str, float] = {}
        for part in spec.split(","):
            name, _, weight = part.partition("=")
            mix[name.strip()] = float(weight) if weight.strip() else 1.0
    else:
        mix = dict(spec) or dict(DEFAULT_MIX)
    unknown = sorted(set(mix) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown call kinds {unknown}; known: {sorted(KINDS)}")
    if not any(w > 0 for w in mix.values()):
        raise ValueError("the scenario mix has no positive weight")
    return mix


# ---------------------------------------------------------------------------- follow-ups


@dataclass(frozen=True, slots=True)
class FollowUp:
    """What a missed inbound call leads to: an employee calls the customer back, or the customer
    calls again, once ``due`` (virtual epoch seconds) has passed."""

    due: float
    action: str  # callback | redial
    customer: Customer
    ext: str  # who calls back
    of: str  # Linkedid of the missed call


CALLBACK_OUTCOMES = {"answered": 0.75, "no_answer": 0.17, "busy": 0.08}
_CALLBACK_KIND = {MOBILE: "out_mobile", LANDLINE: "out_national", FOREIGN: "out_international"}


def answerers_of(did: str) -> tuple[str, ...]:
    """The extensions a DID rings: one of them calls back a missed call to it."""
    if did == MAIN_NUMBER:
        return RING_GROUP
    if did == SUPPORT_LINE:
        return QUEUE_MEMBERS
    if did == SALES_LINE:
        return (SALES_EXT,)
    return tuple(e for e in EMPLOYEES if did_of(e) == did) or tuple(EMPLOYEES)


def callback(start: float, ids: IdAllocator, rng: random.Random, p: Picker, *, ext: str,
             customer: Customer) -> SimCall:
    """``ext`` calls ``customer`` back on the number as dialled: mostly answered, else no answer or busy."""
    outcome = p.rng.choices(list(CALLBACK_OUTCOMES), list(CALLBACK_OUTCOMES.values()))[0]
    number = customer.dialled
    if outcome == "answered":
        return outbound_answered(start, ids, rng, ext=ext, number=number, ring_s=p.ring(), talk_s=p.talk(),
                                 hangup_by="caller" if p.rng.random() < 0.5 else "callee",
                                 kind=_CALLBACK_KIND[customer.line])
    if outcome == "no_answer":
        return outbound_no_answer(start, ids, rng, ext=ext, number=number, ring_s=round(p.rng.uniform(8.0, 45.0), 3))
    return outbound_busy(start, ids, rng, ext=ext, number=number, listen_s=round(p.rng.uniform(0.5, 4.0), 3))


FOLLOW_UP_CAP = 4 * 3600.0  # a delay drawn longer than this is cut to it


def _probability(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value}")
    return value


@dataclass
class CallGenerator:
    """Seeded: the same seed, mix, distributions and habits give the same calls, byte for byte.

    Callers come from a book of ``customers`` (popularity skewed by ``customer_skew``), a share
    ``unknown_callers`` of inbound calls from one-off numbers; ``book_destinations`` of national,
    mobile and international outbound calls go to customers. After a missed inbound call, an
    employee calls back (``callback_probability``, after ``callback_delay``) or the customer
    calls again (``redial_probability``, after ``redial_delay``): the follow-up takes the first
    call slot once it is due. A callback is an outbound call whatever the mix; a redial is of one
    of the mix's inbound kinds.
    """

    seed: int = 0
    mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    talk_time: str = "exp:90"
    ring_time: str = "uniform:2:15"
    ids: IdAllocator | None = None
    customers: int = 120
    customer_skew: float = 0.5
    unknown_callers: float = 0.1
    book_destinations: float = 0.85
    callback_probability: float = 0.6
    redial_probability: float = 0.15
    callback_delay: str = "exp:1800"
    redial_delay: str = "exp:600"

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._mix = parse_mix(self.mix)
        self._names = list(self._mix)
        self._cum = list(itertools.accumulate(self._mix[n] for n in self._names))
        inbound = [n for n in self._names if n.startswith("in_") and self._mix[n] > 0]
        self._in_names = inbound or ["in_answered"]
        self._in_cum = list(itertools.accumulate(self._mix.get(n, 1.0) for n in self._in_names))
        for name in ("unknown_callers", "book_destinations", "callback_probability", "redial_probability"):
            _probability(name, getattr(self, name))
        if self.callback_probability + self.redial_probability > 1.0:
            raise ValueError("callback_probability + redial_probability must be <= 1")
        self._callback_delay = replace(Distribution.parse(self.callback_delay), cap=FOLLOW_UP_CAP)
        self._redial_delay = replace(Distribution.parse(self.redial_delay), cap=FOLLOW_UP_CAP)
        self.book = CustomerBook.generate(self.customers, seed=self.seed, skew=self.customer_skew)
        self._picker = Picker(self._rng, Distribution.parse(self.talk_time), Distribution.parse(self.ring_time),
                              book=self.book, unknown_callers=self.unknown_callers,
                              book_destinations=self.book_destinations)
        self._due: list[tuple[float, int, FollowUp]] = []  # a heap, by due time then order made
        self._made = 0
        if self.ids is None:
            self.ids = Counters(self.seed)

    def _draw(self, names: list[str], cum: list[float]) -> str:
        x = self._rng.random() * cum[-1]
        return names[min(bisect.bisect_right(cum, x), len(names) - 1)]

    def pick_kind(self) -> str:
        return self._draw(self._names, self._cum)

    @property
    def pending(self) -> list[FollowUp]:
        """Follow-ups not made yet, soonest first."""
        return [f for _, _, f in sorted(self._due)]

    def next_call(self, start: float, kind: str | None = None) -> SimCall:
        """The next call, starting at ``start`` (epoch seconds): the follow-up that is due first,
        if any (unless a ``kind`` is asked for), else a new call of ``kind`` or one from the mix."""
        assert self.ids is not None
        if kind is None and self._due and self._due[0][0] <= start:
            call = self._follow_up(start, heapq.heappop(self._due)[2])
        else:
            call_rng = random.Random(self._rng.getrandbits(64))
            call = KINDS[kind or self.pick_kind()](start, self.ids, call_rng, self._picker)
        self._plan_follow_up(call)
        return call

    def _follow_up(self, start: float, f: FollowUp) -> SimCall:
        assert self.ids is not None
        call_rng = random.Random(self._rng.getrandbits(64))
        if f.action == "redial":
            self._picker.forced_caller = f.customer
            try:
                call = KINDS[self._draw(self._in_names, self._in_cum)](start, self.ids, call_rng, self._picker)
            finally:
                self._picker.forced_caller = None
        else:
            call = callback(start, self.ids, call_rng, self._picker, ext=f.ext, customer=f.customer)
        return replace(call, expected={**call.expected, "follow_up": f.action, "follow_up_of": f.of})

    def _plan_follow_up(self, call: SimCall) -> None:
        who, self._picker.last_caller = self._picker.last_caller, None
        exp = call.expected
        if exp["direction"] != "inbound" or exp["status"] != "missed" or who is None or who.number != exp["caller"]:
            return
        x = self._rng.random()
        if x < self.callback_probability:
            action, delay = "callback", self._callback_delay
        elif x < self.callback_probability + self.redial_probability:
            action, delay = "redial", self._redial_delay
        else:
            return
        f = FollowUp(due=exp["end"] + delay.sample(self._rng), action=action, customer=who,
                     ext=self._rng.choice(answerers_of(exp["called"])), of=exp["linkedid"])
        heapq.heappush(self._due, (f.due, self._made, f))
        self._made += 1


__all__ = ["CALLBACK_OUTCOMES", "DEFAULT_MIX", "EMPLOYEES", "KINDS", "CallGenerator", "Distribution", "FollowUp",
           "SimCall", "calltype_of", "did_of", "parse_mix"]
