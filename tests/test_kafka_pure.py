"""The pure parts behind the Kafka stages: the spool, message keys, per-partition commit points."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import kafka as k
from contracts.envelope import LINKEDID_HEADERS, Envelope, frames_decoder
from contracts.records import (
    CallLeg,
    CallRecord,
    Quarantined,
    call_leg_decoder,
    call_record_decoder,
    record_encoder,
)
from enrich.calls import CallBuilder
from enrich.partition import PartitionEnricher
from ingest.capture import read_capture
from ingest.framing import AmiFramer, Frame, quarantined, read_frames, split_frames
from ingest.routing import CallBatcher, CallRouter
from ingest.spool import Spool
from simulator.server import SimulatorConfig, render


def rec(n: int) -> tuple[bytes, bytes, bytes, float]:
    return (f"pbx1:{n % 7}".encode(), f"value-{n}".encode() * (n % 5 + 1), k.KIND_ENVELOPE, float(n))


def test_spool_gives_records_back_in_order_across_segments_and_restarts(tmp_path: Path) -> None:
    """What was appended comes out once, in order, even after a restart mid-way."""
    spool = Spool(tmp_path, segment_bytes=300)
    items = [rec(n) for n in range(100)]
    assert spool.append(items[:60]) == 0
    got = spool.peek(25)
    spool.consume()
    assert spool.append(items[60:]) == 0
    spool.close()
    spool = Spool(tmp_path, segment_bytes=300)  # a restarted ingest
    while not spool.empty:
        got += spool.peek(7)
        spool.consume()
    assert got == items
    spool.sync()
    assert len(list(tmp_path.glob("*.spool"))) == 1  # drained segments are deleted once synced
    spool.close()


def test_spool_not_consumed_is_given_again(tmp_path: Path) -> None:
    """A peek whose send failed is not consumed: the same records come back first."""
    spool = Spool(tmp_path)
    spool.append([rec(1), rec(2)])
    assert spool.peek(10) == [rec(1), rec(2)]
    assert spool.peek(10) == [rec(1), rec(2)]
    spool.close()


def test_spool_cuts_a_torn_record_and_is_bounded(tmp_path: Path) -> None:
    """A record half-written by a crash is cut on open; past max_bytes new records are refused."""
    spool = Spool(tmp_path)
    spool.append([rec(1)])
    spool.close()
    seg = next(tmp_path.glob("*.spool"))
    seg.write_bytes(seg.read_bytes() + b"\x00\x00\x01\x00abc")
    spool = Spool(tmp_path, max_bytes=200)
    assert spool.peek(10) == [rec(1)]
    assert spool.append([rec(n) for n in range(20)]) > 0
    spool.close()


def raw(headers: Frame, end: str = "\r\n") -> bytes:
    """A frame's bytes as AMI sends them (``end``: the line end)."""
    return (end.join(f"{k}: {v}" for k, v in headers) + end + end).encode()


def route(router: CallRouter, frame: bytes) -> bytes:
    name = frame[7 : frame.find(b"\r\n", 7)] if frame.startswith(b"Event: ") else b""
    return router.linkedid(frame, name)


def test_router_keeps_a_calls_cdr_with_the_call() -> None:
    """Cdr events without LinkedID are keyed by the call their party-A channel was created in;
    the preferred Linkedid header wins; frames of no call have no key; bare-LF lines route alike."""
    for end in ("\r\n", "\n"):
        r = CallRouter()
        assert route(r, raw((("Event", "Newchannel"), ("Uniqueid", "1.5"), ("Linkedid", "1.1")),
                            end)) == b"1.1"
        assert route(r, raw((("Event", "Cdr"), ("UniqueID", "1.5")), end)) == b"1.1"
        assert route(r, raw((("Event", "Cdr"), ("UniqueID", "1.5"), ("LinkedID", "1.9")), end)) == b"1.9"
        assert route(r, raw((("Event", "Cdr"), ("UniqueID", "7.7")), end)) == b"7.7"
        assert route(r, raw((("Event", "DialBegin"), ("DestLinkedid", "2.1"), ("Linkedid", "3.1")),
                            end)) == b"3.1"
        assert route(r, raw((("Event", "DialBegin"), ("Linkedid", ""), ("DestLinkedid", "2.1")),
                            end)) == b"2.1"
        assert route(r, raw((("Response", "Success"), ("Linkedid", "1.1")), end)) == b""
        assert route(r, raw((("Event", "PeerStatus"), ("Peer", "PJSIP/101")), end)) == b""


def reference_linkedid(frame: Frame, channels: dict[str, str]) -> str:
    """The routing rules over parsed headers, written plainly."""
    if not frame or frame[0][0] != "Event":
        return ""
    h: dict[str, str] = {}
    for key, value in frame:
        if value:
            h.setdefault(key, value)
    best = next((h[n] for n in LINKEDID_HEADERS if h.get(n)), "")
    if frame[0][1] == "Cdr":
        uid = dict(frame).get("UniqueID")
        return best or ("" if uid is None else channels.get(uid, uid))
    uid = [v for key, v in frame if key == "Uniqueid"]
    if best and uid and uid[-1] and frame[0][1] == "Newchannel":
        channels.setdefault(uid[-1], best)
    return best


def test_raw_routing_equals_the_rules_over_parsed_headers() -> None:
    """Every frame of the captured Asterisk and of a simulated PBX gets the key the routing
    rules give over its parsed headers, though ingest never parses it."""
    captures = [REAL_CAPTURE, render(SimulatorConfig(total_calls=300, seed=4)).capture]
    for capture in captures:
        framer = AmiFramer()
        frames, errors = framer.feed_raw(capture)
        assert not errors
        router, channels = CallRouter(), {}
        batcher = CallBatcher("pbx1", router=router)
        parsed = [item for _, item in split_frames(b"".join(frames), [len(f) for f in frames])]
        assert len(parsed) == len(frames)
        for frame, headers in zip(frames, parsed):
            assert isinstance(headers, tuple)
            want = reference_linkedid(headers, channels).encode()
            assert route(router, frame) == want, headers
        assert channels  # Newchannels were seen
        batcher.add(1, 1, frames, 0.0)  # the batcher's inline routing agrees too
        by_key: dict[bytes, list[int]] = {}
        for key, value, *_ in batcher.take():  # a big group comes in several messages
            by_key.setdefault(key, []).extend(frames_decoder.decode(value).seqs)
        again = CallRouter()
        assert by_key == _group(b"pbx1:" + route(again, f) for f in frames)


@pytest.mark.parametrize("frame", [
    b"Event: Hangup\r\nLinkedid: 1.1\r\n\r\n",
    b"Event: Hangup\nLinkedid: 1.1\n\n",  # bare LFs throughout
    b"Event: Hangup\nUniqueid: 1.2\r\nLinkedid: 1.1\r\n\r\n",  # the first line's only
    b"Event: Hangup\r\nLinkedid: 1.\n1\r\n\r\n",  # a bare LF inside the value
    b"Event: Hangup\r\nLinkedid: 1.1\nDestLinkedid: 2.1\r\n\r\n",
    b"Event: DialBegin\r\nLinkedid: \r\nDestLinkedid: 2.1\r\n\r\n",  # empty: the next one
    b"Event: Cdr\r\nUniqueID: 1.5\r\n\r\n",
    b"Event: \r\nLinkedid: 1.1\r\n\r\n",
    b"Event: Newchannel\r\nUniqueid: 1.5\r\nLinkedid: 1.1\r\n\r\n",
    b"Response: Success\r\nLinkedid: 1.1\r\n\r\n",
    b"Event: Hangup\r\nLinkedid: 1.1\r\r\n\r\n",  # CR CR LF: the frame's end strips both CRs
    b"Event: Hangup\r\nLinkedid: 1.1\r\r\nCause: 16\r\n\r\n",  # inside: one CR stays
    b"Event: Newchannel\r\nUniqueid: 1.5\r\nLinkedid: 1.1\r\r\n\r\n",
])
def test_the_batchers_own_routing_agrees_with_the_router_whatever_the_line_ends(frame: bytes) -> None:
    """The batcher routes the usual frame itself, not through CallRouter: on odd line ends too
    it keys the frame as the routing rules over its parsed headers do, and a Cdr after its
    Newchannel goes with the call."""
    cdr = b"Event: Cdr\r\nUniqueID: 1.5\r\n\r\n"
    batcher = CallBatcher("pbx1")
    batcher.add(1, 1, [frame, cdr], 0.0)
    channels: dict[str, str] = {}
    want = []
    for f in (frame, cdr):
        headers = split_frames(f, [len(f)])[0][1]  # unreadable: no call's
        linkedid = reference_linkedid(headers, channels) if isinstance(headers, tuple) else ""
        want.append(b"pbx1:" + linkedid.encode())
    got = {}
    for key, value, *_ in batcher.take():
        for seq in frames_decoder.decode(value).seqs:
            got[seq] = key
    assert [got[1], got[2]] == want


def _group(keys: Iterator[bytes]) -> dict[bytes, list[int]]:
    out: dict[bytes, list[int]] = {}
    for seq, key in enumerate(keys, 1):
        out.setdefault(key, []).append(seq)
    return out


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=30),
       st.integers(min_value=1, max_value=4))
def test_the_raw_topic_carries_the_exact_bytes_and_grows_per_partition(cuts: list[int],
                                                                        reads: int) -> None:
    """Any reads, any rounds: the messages hold every frame once, numbered 1..N, whose bytes in
    seq order are the capture after its banner; along each key, (epoch, first seq) grows."""
    capture = CAPTURE.capture
    framer = AmiFramer()
    batcher = CallBatcher("pbx1", max_message_bytes=2000)  # small: big calls are split too
    messages: list[k.Message] = []
    pos, seq, n = 0, 1, 0
    step = max(len(capture) // (reads * 50), 1)
    while pos < len(capture):
        size = cuts[n % len(cuts)] * step // 1000 + 1
        frames, errors = framer.feed_raw(capture[pos : pos + size])
        assert not errors
        batcher.add(7, seq, frames, float(n))
        seq += len(frames)
        pos += size
        n += 1
        if n % reads == 0:
            messages += batcher.take()
    messages += batcher.take()
    got: dict[int, bytes] = {}
    last: dict[bytes, tuple[int, int]] = {}
    for key, value, kind, _ in messages:
        assert kind == k.KIND_AMI
        batch = frames_decoder.decode(value)
        assert (batch.epoch, batch.seqs[0]) > last.get(key, (0, 0))
        last[key] = (batch.epoch, batch.seqs[0])
        at = 0
        for s_, size in zip(batch.seqs, batch.sizes):
            assert s_ not in got
            got[s_] = batch.raw[at : at + size]
            at += size
        assert at == len(batch.raw)
    assert sorted(got) == list(range(1, seq))
    assert b"".join(got[s_] for s_ in sorted(got)) == capture[capture.find(b"\n") + 1 :]


def _messages(capture: bytes, round_frames: int = 400) -> list[k.Message]:
    framer = AmiFramer()
    batcher = CallBatcher("pbx1")
    frames, _ = framer.feed_raw(capture)
    out: list[k.Message] = []
    for i in range(0, len(frames), round_frames):
        batcher.add(3, i + 1, frames[i : i + round_frames], float(i))
        out += batcher.take()
    return out


def _fold_messages(pe: PartitionEnricher, messages: list[k.Message]) -> list[object]:
    out: list[object] = []
    for offset, (key, value, _, _) in enumerate(messages):
        batch = frames_decoder.decode(value)
        if pe.accept(offset, batch.pbx_id, batch.epoch, batch.seqs[0]):
            envs, bad = read_frames(batch)
            out += [quarantined(e, batch.pbx_id, batch.recv_time) for _, e in bad]
            out += pe.fold_frames(offset, k.split_key(key)[1], batch.pbx_id, batch.recv_time, envs)
    return out + [o for b in pe.builders.values() for o in b.flush()]


def test_a_resent_round_of_messages_is_folded_once() -> None:
    """A produce round sent again (after a timeout, from the spool) brings the same messages:
    they are skipped, and the records are those of one delivery."""
    messages = _messages(CAPTURE.capture)
    once = _final(_fold_messages(_enricher(), messages))
    assert len(once) == 60
    pe = _enricher()
    twice = _fold_messages(pe, messages[:50] + messages[20:50] + messages[50:])
    assert pe.duplicates == 30
    assert _final(twice) == once


def test_a_malformed_frame_is_quarantined_and_the_rest_of_its_call_built() -> None:
    """A frame that is not 'Key: value' lines and one that is not UTF-8, inside a call's
    message: each becomes a Quarantined record (reason, raw kept); the call is still built."""
    good = _final(_fold_messages(_enricher(), _messages(CAPTURE.capture)))
    marker = b"\r\nEvent: Hangup\r\n"
    at = CAPTURE.capture.find(marker) + 2
    bad = b"Event: Newexten\r\nLinkedid: 1767600000.0\r\nthis is no header\r\n\r\n" \
          b"Event: VarSet\r\nLinkedid: 1767600000.0\r\nValue: \xff\xfe\r\n\r\n"
    out = _fold_messages(_enricher(), _messages(CAPTURE.capture[:at] + bad + CAPTURE.capture[at:]))
    quarantine = [o for o in out if isinstance(o, Quarantined)]
    assert sorted(q.reason for q in quarantine) == ["invalid_utf8", "malformed_frame"]
    assert "this is no header" in quarantine[0].raw + quarantine[1].raw
    assert _final(out) == good


def test_a_message_that_does_not_hold_its_frames_is_refused() -> None:
    """Sizes that do not add up, or fewer sizes than numbers: read_frames raises (the stage
    dead-letters the message as undecodable)."""
    batch = frames_decoder.decode(_messages(CAPTURE.capture)[0][1])
    with pytest.raises(ValueError, match="add up"):
        read_frames(msgspec.structs.replace(batch, raw=batch.raw[:-1]))
    with pytest.raises(ValueError, match="sizes for"):
        read_frames(msgspec.structs.replace(batch, sizes=batch.sizes[1:]))
    with pytest.raises(msgspec.DecodeError):
        frames_decoder.decode(b"\xc1 not msgpack")


def test_records_round_trip_through_msgpack() -> None:
    """CallRecord and CallLeg survive the records topic's encoding unchanged."""
    rendered = render(SimulatorConfig(total_calls=20, seed=2, calls_per_second=50.0))
    path_outputs = _fold(rendered.capture)
    for o in path_outputs:
        if isinstance(o, CallRecord):
            assert call_record_decoder.decode(record_encoder.encode(o)) == o
        elif isinstance(o, CallLeg):
            assert call_leg_decoder.decode(record_encoder.encode(o)) == o


def _fold(capture: bytes) -> list[object]:
    import tempfile

    with tempfile.NamedTemporaryFile() as f:
        f.write(capture)
        f.flush()
        envs = [e for e in read_capture(f.name, "pbx1") if isinstance(e, Envelope)]
    from contracts.profile import DEFAULT_PROFILE

    builder = CallBuilder(DEFAULT_PROFILE)
    out: list[object] = []
    for e in envs:
        out += builder.feed(e)
    return out + list(builder.flush())


REAL_CAPTURE = (Path(__file__).parent / "fixtures" / "asterisk" / "ami_raw.log").read_bytes()
CAPTURE = render(SimulatorConfig(total_calls=60, seed=9, calls_per_second=5.0, max_concurrency=100))


def _envelopes() -> list[tuple[str, Envelope]]:
    import tempfile

    router = CallRouter()
    with tempfile.NamedTemporaryFile() as f:
        f.write(CAPTURE.capture)
        f.flush()
        return [(route(router, raw(e.headers)).decode(), e) for e in read_capture(f.name, "pbx1")
                if isinstance(e, Envelope)]


ENVELOPES = _envelopes()


def _enricher() -> PartitionEnricher:
    from contracts.profile import DEFAULT_PROFILE

    return PartitionEnricher(lambda pbx: CallBuilder(DEFAULT_PROFILE, pbx_id=pbx))


def _final(outputs: list[object]) -> dict[str, CallRecord]:
    """What the calls table shows (ReplacingMergeTree(version), read with FINAL): per call the
    record of the highest version. A replay may emit a lower-version stub of a call's stray late
    events, which the fuller record outranks."""
    out: dict[str, CallRecord] = {}
    for o in outputs:
        if isinstance(o, CallRecord) and (o.call_id not in out or o.version >= out[o.call_id].version):
            out[o.call_id] = o
    return out


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(ENVELOPES) - 1), min_size=1, max_size=3),
       st.integers(min_value=1, max_value=500))
def test_restart_from_the_commit_point_rebuilds_the_same_records(crashes: list[int], chunk: int) -> None:
    """Crash anywhere, restart from the committed offset with fresh state: every call is
    emitted, and the records equal those of one uninterrupted run (replays collapse by id)."""
    reference = _enricher()
    ref_out: list[object] = []
    for offset, (linkedid, env) in enumerate(ENVELOPES):
        ref_out += reference.feed(offset, linkedid, env)
        ref_out += reference.advance()
    ref_out += [o for b in reference.builders.values() for o in b.flush()]
    expected = _final(ref_out)
    assert len(expected) == 60

    emitted: list[object] = []
    committed = 0
    for crash in sorted(crashes) + [len(ENVELOPES)]:
        pe = _enricher()  # a restart: fresh state, from the committed offset
        for offset in range(committed, max(crash, committed)):
            linkedid, env = ENVELOPES[offset]
            emitted += pe.feed(offset, linkedid, env)
            if offset % chunk == 0:
                emitted += pe.advance()
                committed = pe.commit_offset() or committed
        emitted += pe.advance()
        committed = pe.commit_offset() or committed
    emitted += [o for b in pe.builders.values() for o in b.flush()]
    got = _final(emitted)
    assert set(got) == set(expected)
    assert got == expected


def test_a_resent_envelope_is_folded_once() -> None:
    """The same (epoch, seq) again — a produce batch sent twice — is skipped."""
    pe = _enricher()
    linkedid, env = ENVELOPES[10]
    pe.feed(0, linkedid, env)
    assert pe.feed(1, linkedid, env) == []
    assert pe.duplicates == 1 and pe.next_offset == 2


WEEK = {"retention.ms": "604800000", "cleanup.policy": "delete"}


@pytest.mark.parametrize(("actual", "gap"), [
    ({"retention.ms": "604800000", "cleanup.policy": "delete"}, None),
    ({"retention.ms": "86400000", "cleanup.policy": "compact,delete"}, None),  # shorter: fine
    ({}, None),  # the broker did not say
    ({"retention.ms": "691200000"}, "retention.ms=691200000 (8 days)"),
    ({"retention.ms": "-1", "cleanup.policy": "delete"}, "retention.ms=-1: kept forever"),
    ({"retention.ms": "1", "cleanup.policy": "compact"},
     "cleanup.policy=compact: nothing is deleted by age"),
    ({"retention.ms": "soon"}, None),
])
def test_a_topic_keeping_data_longer_than_wanted_is_told(actual: dict[str, str],
                                                         gap: str | None) -> None:
    from kafkaio.client import retention_gap

    assert retention_gap(WEEK, actual) == gap


def test_a_dead_letter_is_read_from_its_headers_and_replayed_only_into_the_records_topic() -> None:
    from aiokafka.structs import ConsumerRecord

    from contracts.config import load_settings
    from kafkaio.dead_letters import chosen, not_replayed, read

    settings = load_settings(environ={})
    headers = [(k.HEADER_KIND, b"leg-batch"), (k.HEADER_DLQ_REASON, b"undecodable"),
               (k.HEADER_DLQ_DETAIL, b"bad"), (k.HEADER_DLQ_TOPIC, b"pbxpipe.call-records"),
               (k.HEADER_DLQ_PARTITION, b"3"), (k.HEADER_DLQ_OFFSET, b"17"),
               (k.HEADER_DLQ_STAGE, b"store")]
    letter = read(ConsumerRecord("pbxpipe.dead-letter", 2, 9, 1_700_000_000_500, 0, b"pbx1:1.1",
                                 b"xyz", None, 8, 3, headers))
    assert msgspec.structs.asdict(letter) == {
        "partition": 2, "offset": 9, "timestamp": 1_700_000_000.5, "stage": "store",
        "reason": "undecodable", "detail": "bad", "origin_topic": "pbxpipe.call-records",
        "origin_partition": 3, "origin_offset": 17, "kind": "leg-batch", "key": "pbx1:1.1",
        "value_bytes": 3}
    assert not_replayed(letter, settings) is None
    assert chosen(letter, "store", None) and chosen(letter, None, "undecodable")
    assert not chosen(letter, "enrich", None) and not chosen(letter, "store", "unknown_kind")
    bare = read(ConsumerRecord("pbxpipe.dead-letter", 0, 0, 0, 0, None, None, None, 0, 0, []))
    assert (bare.origin_topic, bare.origin_offset, bare.key, bare.value_bytes) == ("", -1, "", 0)
    assert not_replayed(bare, settings) == "from no topic, not this pipeline's records topic"
    raw = msgspec.structs.replace(letter, origin_topic=settings.kafka_raw_topic)
    assert "enrich passes over" in (not_replayed(raw, settings) or "")
