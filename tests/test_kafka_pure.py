"""The pure parts behind the Kafka stages: the spool, message keys, per-partition commit points."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import kafka as k
from contracts.envelope import Envelope
from contracts.records import CallLeg, CallRecord, call_leg_decoder, call_record_decoder, record_encoder
from enrich.calls import CallBuilder
from enrich.partition import PartitionEnricher
from ingest.routing import CallRouter
from ingest.spool import Spool
from simulator.server import SimulatorConfig, render
from ingest.capture import read_capture


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
    assert len(list(tmp_path.glob("*.spool"))) == 1  # drained segments are deleted
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


def test_router_keeps_a_calls_cdr_with_the_call() -> None:
    """Cdr events without LinkedID are keyed by the call their party-A channel belongs to."""
    r = CallRouter()
    assert r.linkedid((("Event", "Newchannel"), ("Uniqueid", "1.5"), ("Linkedid", "1.1"))) == "1.1"
    assert r.linkedid((("Event", "Cdr"), ("UniqueID", "1.5"))) == "1.1"
    assert r.linkedid((("Event", "Cdr"), ("UniqueID", "1.5"), ("LinkedID", "1.1"))) == "1.1"
    assert r.linkedid((("Event", "DialBegin"), ("DestLinkedid", "2.1"))) == "2.1"
    assert r.linkedid((("Response", "Success"),)) == ""


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


CAPTURE = render(SimulatorConfig(total_calls=60, seed=9, calls_per_second=5.0, max_concurrency=100))


def _envelopes() -> list[tuple[str, Envelope]]:
    import tempfile

    router = CallRouter()
    with tempfile.NamedTemporaryFile() as f:
        f.write(CAPTURE.capture)
        f.flush()
        return [(router.linkedid(e.headers), e) for e in read_capture(f.name, "pbx1")
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
