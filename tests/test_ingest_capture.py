"""Replaying a raw AMI capture file: the same framing as the live listener, numbered frames."""

from __future__ import annotations

from pathlib import Path

from contracts.envelope import Envelope
from contracts.records import Quarantined
from ingest.capture import read_capture
from ingest.framing import AmiFramer

RAW_LOG = Path(__file__).parent / "fixtures" / "asterisk" / "ami_raw.log"


def test_capture_replays_every_frame_numbered_with_pbx_timestamps() -> None:
    """Every frame, responses included, in order: epoch 0, seq 1..N, recv_time = the frame's
    Timestamp, else the last one seen (0.0 before the first)."""
    out = list(read_capture(RAW_LOG, "acme", chunk_size=4093))
    frames = AmiFramer().feed(RAW_LOG.read_bytes())
    assert all(isinstance(e, Envelope) for e in out)
    assert [e.headers for e in out] == frames
    assert [e.seq for e in out] == list(range(1, len(frames) + 1))
    assert {(e.pbx_id, e.epoch) for e in out} == {("acme", 0)}
    assert out[0].name == "Success" and out[0].recv_time == 0.0
    assert out[1].name == "FullyBooted" and out[1].recv_time == 0.0  # no Timestamp, none yet
    last = 0.0
    for e in out:
        ts = e.get("Timestamp")
        last = float(ts) if ts is not None else last
        assert e.recv_time == last
    assert out[-1].name == "Goodbye" and out[-1].recv_time == last > 1.7e9


def test_a_capture_cut_inside_a_frame_quarantines_the_tail(tmp_path: Path) -> None:
    """Bad frames and a truncated end come out as Quarantined records, in place."""
    path = tmp_path / "cut.log"
    path.write_bytes(
        b"Asterisk Call Manager/11.0.0\r\n"
        b"Event: Newchannel\r\nTimestamp: 1795539179.810380\r\n\r\n"
        b"Event: Bad\r\nName: \xff\r\n\r\n"
        b"Event: Hangup\r\nTimes"
    )
    first, bad, tail = read_capture(path, "acme", chunk_size=7)
    assert isinstance(first, Envelope) and first.seq == 1
    assert isinstance(bad, Quarantined) and bad.reason == "invalid_utf8"
    assert bad.received_at == 1795539179.81038
    assert isinstance(tail, Quarantined) and tail.reason == "malformed_frame"
    assert tail.raw == "Event: Hangup\r\nTimes"
