"""AMI framing: the captured Asterisk stream, any chunking, split characters, bad input."""

from __future__ import annotations

import itertools
import json
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.errors import FrameError
from contracts.records import QuarantineReason
from ingest.framing import AmiFramer, Frame, quarantined, split_frames

CAPTURE = Path(__file__).parent / "fixtures" / "asterisk"
RAW = (CAPTURE / "ami_raw.log").read_bytes()
BANNER = "Asterisk Call Manager/11.0.0"


def _jsonl_events() -> list[Frame]:
    with open(CAPTURE / "ami_events.jsonl", encoding="utf-8") as f:
        return [
            tuple((k, v) for k, v in json.loads(line).items() if not k.startswith("_"))
            for line in f
        ]


def frame_all(chunks: typing.Iterable[bytes], max_frame_bytes: int = 1 << 20) -> list:
    """Frames, and errors as comparable (reason, raw) pairs, of a whole stream."""
    framer = AmiFramer(max_frame_bytes)
    out: list = []
    for chunk in chunks:
        out += framer.feed(chunk)
    return [_comparable(x) for x in out + framer.close()]


def _comparable(item: Frame | FrameError) -> Frame | tuple[str, bytes]:
    return (item.reason, item.raw) if isinstance(item, FrameError) else item


def cut(data: bytes, points: typing.Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


WHOLE = frame_all([RAW])


def test_capture_in_one_piece_equals_the_parsed_events() -> None:
    """The raw capture frames into the login response, every jsonl event (headers in order,
    values exact) and the logoff response; the banner is recognised, not a frame."""
    framer = AmiFramer()
    frames = framer.feed(RAW)
    assert framer.banner == BANNER
    assert framer.close() == []
    assert frames[0] == (
        ("Response", "Success"), ("ActionID", "cap-login-0001"),
        ("Message", "Authentication accepted"),
    )
    assert frames[-1][0] == ("Response", "Goodbye")
    events = [f for f in frames if f[0][0] == "Event"]
    assert events == _jsonl_events()
    assert len(frames) == len(events) + 2


def test_accountcode_with_trailing_space_is_empty() -> None:
    """Asterisk sends ``AccountCode: `` (colon, space, nothing): the value is ''."""
    newchannel = next(f for f in WHOLE if f[0] == ("Event", "Newchannel"))
    assert ("AccountCode", "") in newchannel


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=1, max_value=len(RAW) - 1), max_size=60))
def test_any_chunking_of_the_capture_gives_the_same_frames(points: list[int]) -> None:
    """Cutting the byte stream anywhere (inside a line, a CRLF, the banner) changes nothing."""
    assert frame_all(cut(RAW, points)) == WHOLE


HEAD = RAW[:40_000]
HEAD_FRAMES = frame_all([HEAD])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=97), min_size=1, max_size=50))
def test_tiny_reads_give_the_same_frames(sizes: list[int]) -> None:
    """Reads of a few bytes each (sizes cycled over the first 40 kB) frame identically."""
    chunks, i, n = [], 0, 0
    while i < len(HEAD):
        size = sizes[n % len(sizes)]
        chunks.append(HEAD[i : i + size])
        i, n = i + size, n + 1
    assert frame_all(chunks) == HEAD_FRAMES


def test_bare_lf_line_ends_are_tolerated() -> None:
    """A stream with LF-only line ends frames to the same headers."""
    assert frame_all([RAW.replace(b"\r\n", b"\n")]) == WHOLE


NAME = "Łukasz Żółć"
POLISH = (
    "Event: Newchannel\r\nChannel: PJSIP/101-00000001\r\n"
    f"CallerIDNum: 101\r\nCallerIDName: {NAME}\r\nAccountCode: \r\n\r\n"
    "Event: Hangup\r\nCause: 16\r\n\r\n"
).encode()


@pytest.mark.parametrize("at", range(1, len(POLISH)))
def test_a_multibyte_character_split_across_reads_survives(at: int) -> None:
    """Whatever byte the read boundary falls on, "Łukasz Żółć" arrives intact."""
    frames = frame_all([POLISH[:at], POLISH[at:]])
    assert frames == [
        (
            ("Event", "Newchannel"), ("Channel", "PJSIP/101-00000001"), ("CallerIDNum", "101"),
            ("CallerIDName", NAME), ("AccountCode", ""),
        ),
        (("Event", "Hangup"), ("Cause", "16")),
    ]


GOOD = b"Event: Hangup\r\nUniqueid: 1.1\r\n\r\n"
GOOD_FRAME = (("Event", "Hangup"), ("Uniqueid", "1.1"))


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"Event: Newstate\r\nthis line has no colon\r\n\r\n", "malformed_frame"),
        (b"Event: Newstate\r\nKey:value\r\n\r\n", "malformed_frame"),
        (b": no name\r\nEvent: Newstate\r\n\r\n", "malformed_frame"),
        (b"Event: Newstate\r\nCallerIDName: \xc5\x81ukasz \xff\r\n\r\n", "invalid_utf8"),
        (b"Event: Newstate\r\nCallerIDName: \xc5\r\n\r\n", "invalid_utf8"),
        (b"Event: Newstate\r\nVariable: " + b"x" * 300 + b"\r\n\r\n", "oversized_frame"),
    ],
)
@pytest.mark.parametrize("split", [False, True])
def test_bad_frames_are_reported_and_framing_goes_on(bad: bytes, reason: str, split: bool) -> None:
    """Each kind of bad frame yields one FrameError with its reason, between the good frames
    around it, whether it arrives with them or byte by byte."""
    data = GOOD + bad + GOOD
    chunks = [data[i : i + 1] for i in range(len(data))] if split else [data]
    out = frame_all(chunks, max_frame_bytes=200)
    assert out[0] == GOOD_FRAME and out[2] == GOOD_FRAME and len(out) == 3
    got_reason, raw = out[1]
    assert got_reason == reason
    assert reason in typing.get_args(QuarantineReason)
    assert raw and raw in bad


def test_an_unterminated_oversized_frame_is_dropped_to_the_next_blank_line() -> None:
    """A frame that never ends is reported once, its bytes are not buffered without bound,
    and framing resumes after the next blank line."""
    framer = AmiFramer(max_frame_bytes=1000)
    out = framer.feed(GOOD + b"Event: Flood\r\nData: ")
    for _ in range(100):
        out += framer.feed(b"y" * 97)
        assert framer.buffered <= 1000 + 97
    out += framer.feed(b"\r\n\r\n" + GOOD)
    assert out[0] == GOOD_FRAME and out[-1] == GOOD_FRAME and len(out) == 3
    assert isinstance(out[1], FrameError) and out[1].reason == "oversized_frame"
    assert out[1].raw.startswith(b"Event: Flood")


def test_header_values_are_kept_exactly() -> None:
    """Split on the first ': ' only; 'Key:' gives ''; repeated headers kept in order;
    extra blank lines between frames are not frames."""
    data = (
        b"\r\n\r\nEvent: VarSet\r\nValue: a: b: c\r\nEmpty:\r\nVariable: A=1\r\n"
        b"Variable: B=2\r\nSpaces:   x  \r\n\r\n\r\n\r\n" + GOOD
    )
    assert frame_all([data]) == [
        (
            ("Event", "VarSet"), ("Value", "a: b: c"), ("Empty", ""), ("Variable", "A=1"),
            ("Variable", "B=2"), ("Spaces", "  x  "),
        ),
        GOOD_FRAME,
    ]


@pytest.mark.parametrize("at", range(len(BANNER) + 3))
def test_the_banner_is_recognised_even_split(at: int) -> None:
    """The first line of a connection is the banner, not a frame, wherever the read splits."""
    data = BANNER.encode() + b"\r\n" + GOOD
    framer = AmiFramer()
    out = framer.feed(data[:at]) + framer.feed(data[at:])
    assert framer.banner == BANNER
    assert out == [GOOD_FRAME]


def test_a_stream_without_banner_starts_with_a_frame() -> None:
    """No banner (a capture cut after it, a proxy): the first line is a header."""
    framer = AmiFramer()
    assert framer.feed(GOOD) == [GOOD_FRAME]
    assert framer.banner is None


def test_a_stream_ending_inside_a_frame_reports_the_tail() -> None:
    """close() turns bytes left in the buffer into a malformed_frame error, not silence."""
    framer = AmiFramer()
    assert framer.feed(GOOD + b"Event: Cut\r\nChan") == [GOOD_FRAME]
    (err,) = framer.close()
    assert err.reason == "malformed_frame" and err.raw == b"Event: Cut\r\nChan"
    assert framer.close() == []


def test_quarantined_keeps_reason_detail_and_escaped_raw() -> None:
    """The quarantine record carries the reason and the raw bytes, undecodable ones escaped."""
    (_, err) = AmiFramer().feed(GOOD + b"Event: X\r\nName: \xff\r\n\r\n")
    assert isinstance(err, FrameError)
    q = quarantined(err, "pbx1", 12.5)
    assert (q.pbx_id, q.received_at, q.reason) == ("pbx1", 12.5, "invalid_utf8")
    assert q.raw == "Event: X\r\nName: \\xff"
    assert q.detail


def test_the_line_memo_stays_bounded_and_correct(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memo of header lines rotates when full; frames are the same, memory is bounded."""
    from ingest import framing

    monkeypatch.setattr(framing._LineMemo, "max_entries", 64)
    framing._LINES.reset()
    try:
        assert frame_all(cut(RAW, range(0, len(RAW), 65536))) == WHOLE
        assert len(framing._LINES) <= 64
    finally:
        framing._LINES.reset()


# ------------------------------------------------------------------ raw frames (for Kafka)

_LINE = st.sampled_from(["Event: Newchannel", "Linkedid: 1.1", "Value: zażółć", "Key:", "junk",
                         "Uniqueid: 1.2", "\r", "Message: a\rb"])
_END = st.sampled_from(["\r\n\r\n", "\r\n\r\n", "\r\n\r\n", "\n\n", "\r\n\n", "\n\r\n",
                        "\r\n\r\n\r\n", "\r\n\r\n\r\n\r\n"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.lists(_LINE, min_size=1, max_size=4), _END), max_size=12),
       st.lists(st.integers(min_value=0, max_value=400), max_size=8), st.booleans())
def test_raw_frames_read_back_as_the_frames_of_the_stream(frames, points, bad_utf8) -> None:
    """Whatever the line ends and the reads: feed_raw's frames, joined, read back (split_frames)
    as exactly the frames and errors feed gives for the stream, in order; with CRLF frames
    only, their bytes are the stream's."""
    text = "".join("\r\n".join(lines) + end for lines, end in frames)
    data = BANNER.encode() + b"\r\n" + text.encode()
    if bad_utf8:
        data += b"Event: X\r\nName: \xff\r\n\r\n"
    raw_framer = AmiFramer()
    raw: list[bytes] = []
    for chunk in cut(data, [p % (len(data) + 1) for p in points]):
        got, errors = raw_framer.feed_raw(chunk)
        assert errors == []
        raw += got
    assert raw_framer.close() == []
    read = [_comparable(item) for _, item in split_frames(b"".join(raw), [len(r) for r in raw])]
    assert [_no_blank_lines(x) for x in read] == [_no_blank_lines(x) for x in frame_all([data])]
    if all(end == "\r\n\r\n" for _, end in frames):
        assert b"".join(raw) == data[len(BANNER) + 2 :]


def _no_blank_lines(item: Frame | tuple[str, bytes]) -> Frame | tuple[str, bytes]:
    """An error's raw bytes may keep the blank lines before the frame (raw frames keep every
    byte): the same frame either way."""
    if isinstance(item[0], str):
        return (item[0], item[1].lstrip(b"\r\n"))  # type: ignore[return-value]
    return item
