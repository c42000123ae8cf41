"""Shared fixtures: the real Asterisk 22 capture and its PBX profile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts.envelope import Envelope
from contracts.profile import PbxProfile, load_profile

FIXTURES = Path(__file__).parent / "fixtures"
CAPTURE = FIXTURES / "asterisk"


def load_capture_envelopes(pbx_id: str = "acme") -> list[Envelope]:
    """The captured events, one envelope each, receive times as Asterisk's TCP reads returned."""
    out = []
    with open(CAPTURE / "ami_events.jsonl", encoding="utf-8") as f:
        for line in f:
            e = json.loads(line)
            headers = tuple((k, str(v)) for k, v in e.items() if not k.startswith("_"))
            out.append(Envelope(pbx_id, 0, e["_seq"], e["_recv_time"], headers))
    return out


@pytest.fixture(scope="session")
def capture_envelopes() -> list[Envelope]:
    return load_capture_envelopes()


@pytest.fixture(scope="session")
def expected_calls() -> dict[str, dict]:
    return json.loads((CAPTURE / "expected_calls.json").read_text())


@pytest.fixture(scope="session")
def capture_profile() -> PbxProfile:
    return load_profile(FIXTURES / "asterisk_profile.toml")
