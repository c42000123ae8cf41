"""The boundary and the compact call state: typed events from headers, rare paths of the builder."""

from __future__ import annotations

from contracts.envelope import Envelope
from contracts.profile import DEFAULT_PROFILE
from contracts.records import CallLeg, CallRecord
from enrich.calls import CallBuilder
from enrich.events import decode

LID = "1700000000.1"
CHANNEL = (("Privilege", "call,all"), ("ChannelStateDesc", "Up"), ("CallerIDNum", "101"),
           ("CallerIDName", "Anna"), ("Context", "from-internal"), ("Exten", "0601234567"))


def env(seq: int, *headers: tuple[str, str], t: float | None = None) -> Envelope:
    t = float(seq) if t is None else t
    kind, *rest = headers
    return Envelope("pbx1", 0, seq, t, (kind, ("Timestamp", f"{t:.6f}"), *rest))


def channel_event(seq: int, kind: str, uid: str, name: str, **extra: str) -> Envelope:
    return env(seq, ("Event", kind), ("Channel", name), *CHANNEL, ("Uniqueid", uid),
               ("Linkedid", LID), *extra.items())


def test_varset_reads_the_same_in_any_header_order():
    """VarSet's usual layout is read where it stands; any other order gives the same event."""
    usual = channel_event(1, "VarSet", LID, "PJSIP/101-00000001",
                          Variable="MIXMONITOR_FILENAME", Value="/rec/a.wav")
    head, *rest = usual.headers
    moved = Envelope("pbx1", 0, 1, usual.recv_time, (head, *reversed(rest)))
    ev = decode(usual)
    assert ev is not None and ev == decode(moved)
    assert (ev.linkedid, ev.variable, ev.value, ev.time) == (LID, "MIXMONITOR_FILENAME",
                                                              "/rec/a.wav", 1.0)


def test_ring_group_wider_than_a_scan_keeps_every_leg():
    """A call with more channels than a list scan serves (an index takes over) loses no leg."""
    phones = [(f"{LID[:-1]}{n + 2}", f"PJSIP/{200 + n}-0000000{n}") for n in range(12)]
    evs = [channel_event(1, "Newchannel", LID, "PJSIP/101-00000001")]
    seq = 2
    for uid, name in phones:
        evs.append(channel_event(seq, "Newchannel", uid, name))
        evs.append(env(seq + 1, ("Event", "DialBegin"), ("Uniqueid", LID), ("Linkedid", LID),
                       ("Exten", "600"), ("DestChannel", name), ("DestUniqueid", uid)))
        seq += 2
    winner = phones[7]
    for uid, name in phones:
        status = "ANSWER" if uid == winner[0] else "CANCEL"
        evs.append(env(seq, ("Event", "DialEnd"), ("Uniqueid", LID), ("Linkedid", LID),
                       ("DestChannel", name), ("DestUniqueid", uid), ("DialStatus", status)))
        seq += 1
    for uid, name in [(LID, "PJSIP/101-00000001"), *phones]:
        evs.append(channel_event(seq, "Hangup", uid, name, Cause="16"))
        seq += 1
    builder = CallBuilder(DEFAULT_PROFILE)
    out = [o for e in evs for o in builder.feed(e)] + builder.flush()
    [rec] = [o for o in out if isinstance(o, CallRecord)]
    legs = [o for o in out if isinstance(o, CallLeg)]
    assert rec.extensions_rang == tuple(str(200 + n) for n in range(12))
    assert rec.first_answered_by == "207" and rec.status == "answered"
    assert [(leg.extension, leg.outcome) for leg in legs] == [
        (str(200 + n), "ANSWER" if n == 7 else "CANCEL") for n in range(12)]
    assert not rec.incomplete


def test_cdr_row_before_its_channel_still_gives_the_disposition():
    """A Cdr naming the origin before its channel is seen counts; of rows ending in the same
    second, the later one wins; rows of other channels do not."""
    origin = "PJSIP/101-00000001"

    def cdr(seq: int, uid: str, disposition: str, end: str) -> Envelope:
        return env(seq, ("Event", "Cdr"), ("LinkedID", LID), ("UniqueID", uid),
                   ("Disposition", disposition), ("EndTime", end))

    evs = [
        channel_event(1, "VarSet", LID, origin, Variable="X", Value="1"),
        cdr(2, LID, "BUSY", "2026-11-24 10:00:05"),
        channel_event(3, "Newchannel", LID, origin),
        channel_event(4, "Newchannel", f"{LID}9", "PJSIP/102-00000002"),
        cdr(5, f"{LID}9", "ANSWERED", "2026-11-24 10:00:09"),
        channel_event(6, "Hangup", LID, origin, Cause="17"),
        channel_event(7, "Hangup", f"{LID}9", "PJSIP/102-00000002", Cause="16"),
    ]
    builder = CallBuilder(DEFAULT_PROFILE)
    for e in evs:
        builder.feed(e)
    [rec] = [o for o in builder.flush() if isinstance(o, CallRecord)]
    assert rec.disposition == "BUSY"

    builder = CallBuilder(DEFAULT_PROFILE)
    for e in [*evs, cdr(8, LID, "NO ANSWER", "2026-11-24 10:00:05"),
              cdr(9, LID, "FAILED", "2026-11-24 10:00:04")]:
        builder.feed(e)
    [rec] = [o for o in builder.flush() if isinstance(o, CallRecord)]
    assert rec.disposition == "NO ANSWER"


def _raw_frames(data: bytes) -> list[bytes]:
    from ingest.framing import AmiFramer

    framer = AmiFramer()
    frames: list[bytes] = []
    for i in range(0, len(data), 65536):
        frames += framer.feed_raw(data[i : i + 65536])[0]
    return frames


def _errors(bad: list) -> list[tuple[int, str, str, bytes]]:
    return [(seq, e.reason, e.detail, e.raw) for seq, e in bad]


def test_frames_judged_ignored_from_their_bytes_are_the_ones_decode_drops():
    """On the real capture and on frames made awkward on purpose, each read as a message of
    its own: the frames ``ignored_frame`` passes over are only ever one event that ``decode``
    maps to None (or, unread, one of such a kind that would not have parsed, as an AMI filter
    drops it at a live PBX); they include the common kinds (VarSet of other variables,
    Newexten), never a recording's VarSet nor what hides behind a blank line."""
    from contracts.envelope import AmiFrames
    from enrich.events import ignored_frame
    from ingest.framing import read_frames
    from tests.conftest import CAPTURE

    awkward = [
        b"Event: Newexten\r\nChannel: x\r\n\r\n",
        b"Event: Newexten\r\n\r\n",
        b"Event: Newexten\nLinkedid: 1\n\nEvent: Hangup\r\nLinkedid: 1\r\n\r\n",  # two frames
        b"Event: Newexten\nLinkedid: 1\n\r\nEvent: Hangup\r\nLinkedid: 1\r\n\r\n",  # two too
        b"Event: VarSet\r\nLinkedid: 1\r\nVariable: MIXMONITOR_FILENAME\r\nValue: a\r\n\r\n",
        b"Event: VarSet\r\nLinkedid: 1\r\nVariable: MIXMONITOR_FILENAME\r\n\r\n",
        b"Event: VarSet\r\nLinkedid: 1\r\nVariable: MIXMONITOR_FILENAME2\r\nValue: a\r\n\r\n",
        b"Event: VarSet\r\nLinkedid: 1\r\nVariable: DIALSTATUS\r\nValue: ANSWER\r\n\r\n",
        b"Event: Newexten\r\nLinkedid: 1\r\nValue: \xff\r\n\r\n",  # not UTF-8: not read
        b"Event: \r\nLinkedid: 1\r\n\r\n",
        b"Event: Hangup\r\nLinkedid: 1\r\n\r\n\r\n",
        b"Event: Newexten\r\nno header\r\n\r\n",  # unreadable, so not read: as filtered
        b"Event: Hangup\r\nno header\r\n\r\n",
        b"Response: Success\r\n\r\n",
        b"Event: Newstate\nLinkedid: 1\r\n\r\n",  # a bare LF ends the name's line
    ]
    skipped: dict[bytes, str] = {}
    for frame in _raw_frames((CAPTURE / "ami_raw.log").read_bytes()) + awkward:
        batch = AmiFrames("acme", 0, [5], [len(frame)], 0.0, frame)
        every, bad_every = read_frames(batch)
        kept, bad_kept = read_frames(batch, ignored=ignored_frame)
        if (kept, _errors(bad_kept)) != (every, _errors(bad_every)):
            assert kept == [] and bad_kept == [], frame
            if every:
                assert len(every) == 1 and not bad_every, frame
                assert decode(every[0]) is None, frame
                skipped[frame] = every[0].name
            else:
                assert len(bad_every) == 1, frame
                skipped[frame] = frame[7 : frame.find(b"\r\n")].decode()
    assert {"VarSet", "Newexten"} <= set(skipped.values())
    assert [f in skipped for f in awkward] == [
        True, True, False, False, False, False, True, True, True, False, False, True, False,
        False, False]


def test_reading_a_message_without_the_ignored_frames_builds_the_same_calls(capture_profile):
    """The real capture through raw-topic messages: passing over the ignored frames unparsed
    gives the very records and legs that parsing every frame gives."""
    from contracts.envelope import AmiFrames
    from enrich.events import ignored_frame
    from ingest.framing import read_frames
    from tests.conftest import CAPTURE

    frames = _raw_frames((CAPTURE / "ami_raw.log").read_bytes())
    batch = AmiFrames("acme", 0, list(range(len(frames))), [len(f) for f in frames], 0.0,
                      b"".join(frames))

    def build(ignored):
        envs, bad = read_frames(batch, ignored=ignored)
        builder = CallBuilder(capture_profile, pbx_id="acme")
        out = []
        for e in envs:
            out += builder.feed(e)
        return out + builder.flush(), bad

    (every, bad_every), (fewer, bad_fewer) = build(None), build(ignored_frame)
    assert bad_every == bad_fewer
    assert [o for o in every if isinstance(o, CallRecord)]
    assert every == fewer
