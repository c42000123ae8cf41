"""Properties of the call builder: order-independence across calls, idempotency, bounds, bad input."""

from __future__ import annotations

import ast
import random
from collections import defaultdict
from pathlib import Path

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from test_enrich_capture import replay

from contracts.envelope import Envelope
from contracts.profile import DEFAULT_PROFILE
from contracts.records import CallLeg, CallRecord, Quarantined
from enrich.calls import CallBuilder
from ingest.routing import CallRouter

ROOT = Path(__file__).parent.parent


def per_call(envelopes: list[Envelope]) -> dict[str, list[Envelope]]:
    """The capture split by call (events without a Linkedid are dropped)."""
    calls: dict[str, list[Envelope]] = defaultdict(list)
    for env in envelopes:
        lid = env.get("Linkedid") or env.get("LinkedID") or env.get("DestLinkedid")
        if lid:
            calls[lid].append(env)
    return calls


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_interleaving_of_calls_does_not_change_records(seed, capture_envelopes, capture_profile):
    """Calls interleaved in any order (each call's own events in order) give the same records."""
    calls = per_call(capture_envelopes)
    rng = random.Random(seed)
    queues = {lid: list(evs) for lid, evs in calls.items()}
    merged: list[Envelope] = []
    while queues:
        lid = rng.choice(sorted(queues))
        merged.append(queues[lid].pop(0))
        if not queues[lid]:
            del queues[lid]
    baseline = {r.call_id: r for r in replay(capture_envelopes, capture_profile)
                if isinstance(r, CallRecord)}
    builder = CallBuilder(capture_profile)
    out = []
    for env in merged:
        out += builder.feed(env)
    shuffled = {r.call_id: r for r in out + builder.flush() if isinstance(r, CallRecord)}
    assert shuffled.keys() == baseline.keys()
    for cid, rec in shuffled.items():
        base = baseline[cid]
        assert (rec.status, rec.caller, rec.called, rec.first_answered_by, rec.last_answered_by,
                rec.start, rec.end, rec.talk_s, rec.disposition) == (
            base.status, base.caller, base.called, base.first_answered_by,
            base.last_answered_by, base.start, base.end, base.talk_s, base.disposition)


def test_replaying_twice_gives_identical_records(capture_envelopes, capture_profile):
    """Deterministic ids and values: a replay of the same events emits the same rows."""
    first = replay(capture_envelopes, capture_profile)
    second = replay(capture_envelopes, capture_profile)
    assert first == second
    ids = [r.call_id for r in first if isinstance(r, CallRecord)]
    assert len(ids) == len(set(ids))
    leg_ids = [r.leg_id for r in first if isinstance(r, CallLeg)]
    assert len(leg_ids) == len(set(leg_ids))


@settings(max_examples=30, deadline=None)
@given(cut=st.floats(0.05, 1.0))
def test_talk_never_exceeds_duration(cut, capture_envelopes, capture_profile):
    """talk ≤ duration and wait + talk ≈ duration for any prefix of the stream."""
    prefix = capture_envelopes[: max(1, int(len(capture_envelopes) * cut))]
    builder = CallBuilder(capture_profile)
    for env in prefix:
        builder.feed(env)
    for r in builder.flush():
        if isinstance(r, CallRecord):
            assert 0 <= r.talk_s <= r.duration_s + 1e-9
            if r.wait_s is not None:
                assert abs(r.wait_s + r.talk_s - r.duration_s) < 0.002
        elif isinstance(r, CallLeg):
            assert r.ring_s >= 0 and r.talk_s >= 0


def test_call_is_emitted_only_after_the_grace_period(capture_envelopes, capture_profile):
    """Nothing is emitted while channels are up or within grace; then exactly once."""
    calls = per_call(capture_envelopes)
    _, events = next(iter(calls.items()))
    builder = CallBuilder(capture_profile, grace_s=2.0)
    for env in events:
        builder.feed(env)
        assert builder.advance(env.recv_time) == []
    last = max(e.recv_time for e in events)
    assert builder.advance(last + 1.0) == []
    out = builder.advance(last + 2.5)
    assert isinstance(out[0], CallRecord)
    assert builder.open_calls == 0
    # a late event for the closed call is counted, not turned into a ghost call
    builder.feed(events[-1])
    assert builder.open_calls == 0 and builder.rejected["late_event"] == 1


def test_call_without_hangup_times_out_incomplete(capture_envelopes, capture_profile):
    """A call whose Hangup never comes is closed after the timeout and flagged incomplete."""
    calls = per_call(capture_envelopes)
    lid, events = next(iter(calls.items()))
    builder = CallBuilder(capture_profile, timeout_s=60.0)
    for env in events:
        if env.name != "Hangup":
            builder.feed(env)
    start = events[0].recv_time
    assert builder.advance(start + 30) == []
    out = builder.advance(start + 61)
    rec = next(r for r in out if isinstance(r, CallRecord))
    assert rec.incomplete and rec.linkedid == lid


@settings(max_examples=30, deadline=None)
@given(opened=st.floats(1.0, 2e9), timeout=st.floats(1.0, 86400.0))
def test_a_call_never_times_out_before_its_timeout(opened, timeout):
    """Calls opened within a second share their open time, yet none closes before timeout_s
    after its first event came, and each closes within the second after (advance runs often)."""
    builder = CallBuilder(DEFAULT_PROFILE, timeout_s=timeout)
    for n, recv in enumerate((opened, opened + 0.4)):
        builder.feed(Envelope("acme", 0, n, recv, (("Event", "Newchannel"), ("Uniqueid", f"1.{n}"),
                                                    ("Linkedid", f"1.{n}"),
                                                    ("Channel", "PJSIP/trunk-pstn-00000001"))))
    assert builder.advance(opened + timeout - 0.001) == [] and builder.open_calls == 2
    out = builder.advance(opened + timeout + 1.5)
    assert sorted(r.linkedid for r in out if isinstance(r, CallRecord) and r.incomplete) == [
        "1.0", "1.1"]


def _raw(env: Envelope) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in env.headers).encode() + b"\r\n"


def test_cdrs_follow_the_message_key_as_they_follow_their_channel(capture_envelopes,
                                                                    capture_profile):
    """Cdr events name no Linkedid without cdr_manager's mapping. Fed each frame's raw-topic
    key (ingest's routing), the builder folds them into the calls it folds them into without
    keys, where it looks their party-A channel up: the same records and legs."""
    envelopes = [msgspec.structs.replace(e, headers=tuple(h for h in e.headers if h[0] != "LinkedID"))
                 if e.name == "Cdr" else e for e in capture_envelopes]
    assert sum(e.name == "Cdr" for e in envelopes) > 26
    router = CallRouter()
    keyed = CallBuilder(capture_profile, grace_s=2.0)
    out = []
    for env in envelopes:
        name = env.name.encode() if env.headers[0][0] == "Event" else b""
        out += keyed.feed(env, router.linkedid(_raw(env), name).decode())
        out += keyed.advance(env.recv_time)
    out += keyed.flush()
    assert out == replay(envelopes, capture_profile)
    assert all(r.disposition for r in out if isinstance(r, CallRecord))


def test_a_keyed_cdr_of_no_open_call_is_counted_not_made_a_call(capture_profile):
    """A Cdr without a Linkedid whose key names no open call (its call was emitted already) is
    counted as unrouted, as without a key; it does not open a call."""
    cdr = Envelope("acme", 0, 1, 1.0, (("Event", "Cdr"), ("UniqueID", "9.9"),
                                       ("EndTime", "2026-11-24 16:53:09"), ("Disposition", "ANSWERED")))
    for key in ("9.9", ""):
        builder = CallBuilder(capture_profile)
        assert builder.feed(cdr, key) == []
        assert builder.open_calls == 0 and builder.rejected == {"cdr_unrouted": 1}


def test_event_without_linkedid_is_quarantined(capture_profile):
    """A call event that names no call is kept with its reason, not dropped or fatal."""
    env = Envelope("acme", 0, 1, 1.0, (("Event", "Hangup"), ("Channel", "PJSIP/101-00000001"),
                                       ("Uniqueid", "1.1"), ("Cause", "16")))
    builder = CallBuilder(capture_profile)
    [q] = builder.feed(env)
    assert isinstance(q, Quarantined) and q.reason == "missing_linkedid"
    assert "Channel: PJSIP/101-00000001" in q.raw
    assert builder.rejected == {"missing_linkedid": 1}


def test_unknown_events_and_responses_are_ignored(capture_profile):
    builder = CallBuilder(capture_profile)
    assert builder.feed(Envelope("acme", 0, 1, 1.0, (("Event", "SomethingNew"), ("X", "y")))) == []
    assert builder.feed(Envelope("acme", 0, 2, 1.0, (("Response", "Success"),))) == []
    assert builder.open_calls == 0


FORBIDDEN = {"aiokafka", "clickhouse_connect", "chdb", "panoramisk", "minio", "asyncio", "socket",
             "time", "structlog", "prometheus_client", "os", "io"}
# datetime is allowed for calendar arithmetic (tariffs' local time bands) but not to read the clock
CLOCK_READS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter"}


ENRICH_SHELL = {
    "stage.py",  # the enrich process: Kafka, the event loop, the clock, logs
    "rating.py",  # the tariff stage: reads the price list, logs and counts what it rates
}


def test_domain_core_is_pure():
    """enrich's core (not its process, nor the tariff stage's file reading, logs and counts) and
    contracts' records import no I/O library and never read the clock."""
    core = [p for p in ROOT.joinpath("enrich").glob("*.py") if p.name not in ENRICH_SHELL]
    for path in [*core, ROOT / "contracts/records.py", ROOT / "contracts/envelope.py"]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in FORBIDDEN, f"{path.name} imports {n}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in CLOCK_READS, f"{path.name} reads the clock: {node.func.attr}()"
