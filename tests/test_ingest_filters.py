"""The AMI event filters ingest installs, checked against Asterisk's own regex engine."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from ingest.ami import DEFAULT_FILTERS, NEEDED_EVENTS

EVENTS = Path(__file__).parent / "fixtures" / "asterisk" / "ami_events.jsonl"
REG_EXTENDED, REG_NOSUB = 1, 8  # glibc <regex.h>


def _event_texts() -> list[tuple[dict[str, str], str]]:
    """Each captured event as Asterisk builds the text its filters search."""
    out = []
    with open(EVENTS, encoding="utf-8") as f:
        for line in f:
            e = {k: v for k, v in json.loads(line).items() if not k.startswith("_")}
            out.append((e, "".join(f"{k}: {v}\r\n" for k, v in e.items()) + "\r\n"))
    return out


def _posix(pattern: str) -> Callable[[str], bool]:
    """regcomp/regexec from the C library, with the flags Asterisk's manager.c uses."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    compiled = ctypes.create_string_buffer(1024)  # larger than any libc's regex_t
    assert libc.regcomp(compiled, pattern.encode(), REG_EXTENDED | REG_NOSUB) == 0
    return lambda text: libc.regexec(compiled, text.encode(), 0, None, 0) == 0


def _passes(matchers: list[Callable[[str], bool]], text: str) -> bool:
    return any(m(text) for m in matchers)  # include filters only: any match lets it through


def test_default_filters_let_through_exactly_what_enrich_needs() -> None:
    """Needed event types pass, VarSet passes only for MIXMONITOR_FILENAME, the noise
    (Newexten, other VarSets, DeviceStateChange…) is dropped at the PBX."""
    matchers = [re.compile(p).search for p in DEFAULT_FILTERS]
    passed = {
        (e["Event"], e.get("Variable")) for e, text in _event_texts() if _passes(matchers, text)
    }
    seen = {(e["Event"], e.get("Variable")) for e, _ in _event_texts()}
    wanted = {
        (name, var) for name, var in seen
        if name in NEEDED_EVENTS or (name, var) == ("VarSet", "MIXMONITOR_FILENAME")
    }
    assert passed == wanted
    assert ("VarSet", "MIXMONITOR_FILENAME") in passed


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="needs the C library")
def test_posix_regex_and_python_re_agree_on_every_captured_event() -> None:
    """Asterisk compiles filters as POSIX ERE; a simulator uses Python's re: same verdicts."""
    posix = [_posix(p) for p in DEFAULT_FILTERS]
    python = [re.compile(p).search for p in DEFAULT_FILTERS]
    for _, text in _event_texts():
        assert _passes(posix, text) == _passes(python, text), text[:60]


@pytest.mark.parametrize(
    ("event", "passes"),
    [
        ("Event: Hangup\r\nChannel: x\r\n", True),
        ("Event: HangupHandlerPush\r\nChannel: x\r\n", False),
        ("Event: HangupRequest\r\n", True),
        ("Event: Hangup", True),
        ("UserEvent: Hangup\r\n", False),
        ("Event: VarSet\r\nVariable: MIXMONITOR_FILENAME\r\nValue: /r.wav\r\n", True),
        ("Event: VarSet\r\nVariable: MIXMONITOR_FILENAME2\r\nValue: x\r\n", False),
        ("Event: VarSet\r\nVariable: __MIXMONITOR_FILENAME\r\nValue: x\r\n", False),
        ("Event: Newexten\r\nChanVariable: MIXMONITOR_FILENAME=x\r\n", False),
    ],
)
def test_filter_edges(event: str, passes: bool) -> None:
    """Names must match whole; the VarSet filter wants exactly that variable."""
    assert _passes([re.compile(p).search for p in DEFAULT_FILTERS], event) is passes
    if ctypes.util.find_library("c"):
        assert _passes([_posix(p) for p in DEFAULT_FILTERS], event) is passes


def test_each_filter_fits_an_asterisk_action_line() -> None:
    """Asterisk reads action lines into a 1024-byte buffer: a longer Filter line is cut."""
    assert all(len(f"Filter: {p}\r\n".encode()) < 1024 for p in DEFAULT_FILTERS)
