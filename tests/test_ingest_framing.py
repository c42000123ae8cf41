"""AMI framing: the captured Asterisk stream, any chunking, split characters, bad input."""

from __future__ import annotations

import itertools
import json
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from contracts.envelope import Envelope
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

    monkeypatch.setattr(framing.LineMemo, "max_entries", 64)
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


# ------------------------------------------------------------------ raw-topic messages (enrich)

RAW_FRAMES = AmiFramer().feed_raw(RAW)[0]
_MUTATIONS: dict[str, typing.Callable[[bytes], bytes]] = {
    "as sent": lambda f: f,
    "bare LF line": lambda f: f.replace(b"\r\n", b"\n", 1),
    "blank line after": lambda f: f + b"\r\n",
    "bare-LF blank line inside": lambda f: f.replace(b"\r\n", b"\n\n", 1),
    "LF CRLF blank line inside": lambda f: f.replace(b"\r\n", b"\n\r\n", 1),
    "a Hangup behind a bare-LF blank line": lambda f: f[:-4] + b"\n\nEvent: Hangup\r\n"
                                                    b"Linkedid: 1.1\r\n\r\n",
    "CRLF blank line inside": lambda f: f.replace(b"\r\n", b"\r\n\r\n", 1),
    "not UTF-8": lambda f: f.replace(b": ", b": \xff", 1),
    "a line that is no header": lambda f: f[:-2] + b"junk\r\n\r\n",
    "CR inside a line": lambda f: f.replace(b": ", b": a\rb", 1),
    "unterminated": lambda f: f[:-4],
    "empty": lambda f: b"\r\n\r\n",
    "recording VarSet": lambda f: b"Event: VarSet\r\nLinkedid: 1.1\r\n"
                                  b"Variable: MIXMONITOR_FILENAME\r\nValue: a.wav\r\n\r\n",
    "Timestamp not a number": lambda f: f.replace(b"Timestamp: ", b"Timestamp: x", 1),
    "Timestamp with a bare LF": lambda f: f.replace(b"Timestamp: ", b"Timestamp: 1\n", 1),
    "Timestamp twice": lambda f: f[:-2] + b"Timestamp: 5.5\r\n\r\n",
    "no Linkedid": lambda f: f.replace(b"Linkedid: ", b"LinkedXd: "),
    "a long event name": lambda f: f.replace(b"Event: ", b"Event: PresenceStateListComplete", 1),
    "a short frame": lambda f: b"Event: Hangup\r\nLinkedid: 1\r\n\r\n",
    "a recording VarSet, then another variable": lambda f: (
        b"Event: VarSet\r\nLinkedid: 1.1\r\nVariable: MIXMONITOR_FILENAME\r\nValue: a.wav\r\n"
        b"Variable: OTHER\r\nValue: b\r\n\r\n"),
}


def _read_outcome(read: typing.Callable[[], tuple[list, list]]) -> object:
    """What a read gives, comparable: envelopes, errors as (seq, reason, detail, raw), or the
    ValueError's message."""
    try:
        envs, bad = read()
    except ValueError as e:
        return str(e)
    return envs, [(seq, e.reason, e.detail, e.raw) for seq, e in bad]


def _decoded(envs: list) -> list:
    """What the builder is given of read envelopes: decode's event of each, none for those it
    maps to None, the envelope itself for one it rejects (no Linkedid)."""
    from enrich.events import MissingLinkedid, decode

    out = []
    for env in envs:
        try:
            ev = decode(env)
        except MissingLinkedid:
            out.append(env)
            continue
        if ev is not None:
            out.append(ev)
    return out


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, len(RAW_FRAMES) - 1), min_size=1, max_size=12),
       st.lists(st.tuples(st.integers(0, 11), st.sampled_from(sorted(_MUTATIONS))), max_size=2),
       st.booleans(), st.sampled_from([1 << 20, 300]), st.booleans())
# a Hangup hidden behind a frame of a kind passed over (FullyBooted), either way of counting
@example([1, 4], [(0, "a Hangup behind a bare-LF blank line")], False, 1 << 20, True)
@example([1, 4], [(0, "a Hangup behind a bare-LF blank line")], False, 1 << 20, False)
def test_a_message_reads_the_same_in_one_pass_as_frame_by_frame(
        picks: list[int], edits: list[tuple[int, str]], misaligned: bool, max_frame_bytes: int,
        vectorised: bool,
) -> None:
    """A raw-topic message of captured frames, some made odd (bare LFs, extra blank lines,
    bytes not UTF-8, bad lines, odd Timestamps, no Linkedid, oversized, sizes that do not line
    up): when read_events reads it in one pass, it gives exactly the events that the general
    frame-by-frame reading (passing over the frames enrich ignores) and decode give, and it
    takes its way whenever every frame is as Asterisk writes it; whether it counts the
    message's blank lines with NumPy (large messages) or with byte scans."""
    from contracts.envelope import AmiFrames
    from enrich import events as enrich_events
    from enrich.events import ignored_frame, read_events
    from ingest import framing

    frames = [RAW_FRAMES[i] for i in picks]
    for at, mutation in edits:
        frames[at % len(frames)] = _MUTATIONS[mutation](frames[at % len(frames)])
    raw = b"".join(frames)
    sizes = [len(f) for f in frames]
    if misaligned and len(sizes) > 1:
        sizes[0] -= 1
        sizes[1] += 1
    batch = AmiFrames("acme", 3, [7 + 2 * n for n in range(len(frames))], sizes, 1.5, raw)
    general = _read_outcome(lambda: framing.read_frames(batch, max_frame_bytes, ignored_frame))
    vector_bytes = enrich_events.VECTOR_BYTES
    enrich_events.VECTOR_BYTES = 0 if vectorised else 1 << 30
    try:
        events = read_events(batch, max_frame_bytes)
    finally:
        enrich_events.VECTOR_BYTES = vector_bytes
    if events is not None:
        assert isinstance(general, tuple) and general[1] == []
        assert events == _decoded(general[0])
    usual = {"as sent", "recording VarSet", "Timestamp not a number", "Timestamp twice",
             "no Linkedid", "a long event name", "a short frame",
             "a recording VarSet, then another variable"}
    if not misaligned and max_frame_bytes > len(raw) and {m for _, m in edits} <= usual:
        assert events is not None


def test_a_message_of_the_capture_is_read_in_one_pass() -> None:
    """The captured frames as one message: read_events reads them all in one pass, each the
    event decode makes of it, the frames decode drops left out; they include a recording's
    VarSet and every kind of the calls."""
    from contracts.envelope import AmiFrames
    from enrich.events import read_events

    body = [f for f in RAW_FRAMES if not f.startswith(b"Response")]
    batch = AmiFrames("acme", 1, list(range(len(body))), [len(f) for f in body], 0.0,
                      b"".join(body))
    events = read_events(batch)
    assert events is not None
    whole = [f for f in WHOLE if f[0][0] == "Event"]
    assert events == _decoded([Envelope("acme", 1, i, 0.0, f) for i, f in enumerate(whole)])
    kinds = {e.kind for e in events}
    assert {"Newchannel", "DialBegin", "DialEnd", "Hangup", "Cdr", "VarSet"} <= kinds
    assert 0 < len(events) < len(body)


def test_a_bare_lf_before_the_blank_line_reads_the_same_whatever_shares_the_read() -> None:
    """A frame whose last line ends in a bare LF, then a CRLF blank line, is one frame: alone,
    after a good frame, or after a frame that is not UTF-8 (which once sent it another way)."""

    def read(data: bytes) -> list[object]:
        framer = AmiFramer(banner=False)
        return [item if isinstance(item, tuple) else item.reason
                for item in framer.feed(data) + framer.close()]

    odd = b"Event: Newchannel\r\nLinkedid: 1.1\n\r\n\r\n"
    frame = (("Event", "Newchannel"), ("Linkedid", "1.1"))
    assert read(odd) == [frame]
    assert read(b"Event: Hangup\r\nLinkedid: 1.1\r\n\r\n" + odd)[1:] == [frame]
    assert read(b"Event: Hangup\r\nValue: \xff\r\n\r\n" + odd) == ["invalid_utf8", frame]
