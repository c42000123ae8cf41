"""`pbxpipe rederive`: today's enrich rules re-run over the raw events into a shadow table, a
per-field diff against what is stored, and --apply writing the differences as versions that win;
a second --apply changes nothing. On the real PJSIP capture, from the capture file and from the
raw topic (Tansu); versions compose with `pbxpipe rerate`'s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FIXTURES
from hypothesis import given
from hypothesis import strategies as st

from contracts.envelope import Envelope
from contracts.profile import load_profile
from contracts.records import CallRecord
from enrich.calls import CallBuilder
from enrich.partition import fold_to_end
from ingest.capture import read_capture
from reconcile.rederive import (
    REDERIVE_REVISION_SHIFT,
    Partial,
    changed_fields,
    rederived_version,
)
from store.tariffs import RATING_REVISION_SHIFT, rerated_version
from tests.kafkabroker import Broker

PJSIP = FIXTURES / "asterisk-pjsip"
CAPTURE = PJSIP / "ami_raw.log"
PROFILE = load_profile(PJSIP / "pjsip_profile.toml")
EXPECTED = json.loads((PJSIP / "expected_calls.json").read_text())
PBXPIPE = [sys.executable, "-c", "from pbxpipe.cli import main; main()"]


def envelopes() -> list[Envelope]:
    return [e for e in read_capture(CAPTURE, "acme-pjsip") if isinstance(e, Envelope)]


# -- pure -----------------------------------------------------------------------------------------


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 50),
       st.integers(0, 50))
def test_a_rederived_version_beats_what_it_replaces_and_composes_with_rerating(
        stored_events, events, rerates, rederives):
    """Whatever re-ratings and re-derivations a stored row went through, its re-derivation
    beats it, keeps the events count in the low bits, and a re-rating after it beats it again."""
    v = stored_events
    for _ in range(rederives):
        v = rederived_version(v, stored_events)
    for _ in range(rerates):
        v = rerated_version(v)
    new = rederived_version(v, events)
    assert new > v
    assert new & ((1 << RATING_REVISION_SHIFT) - 1) == events
    assert new >> REDERIVE_REVISION_SHIFT == (v >> REDERIVE_REVISION_SHIFT) + 1
    assert rerated_version(new) > new
    assert rederived_version(rerated_version(new), events) > rerated_version(new)


def test_fold_to_end_builds_what_the_pipeline_builds():
    """A capture folded to its end (one partition, re-sent frames dropped, calls emitted by the
    stream's time) gives the calls the in-process pipeline gives."""
    builder = CallBuilder(PROFILE, grace_s=2.0)
    want = []
    for env in envelopes():
        want += builder.feed(env)
        want += builder.advance(env.recv_time)
    want += builder.flush()
    frames = [(0, n, "", e) for n, e in enumerate(envelopes())]
    got = list(fold_to_end([*frames, *frames[100:200]], lambda _: CallBuilder(PROFILE, grace_s=2.0)))
    key = lambda o: (type(o).__name__, getattr(o, "call_id", ""), getattr(o, "leg_id", ""))  # noqa: E731
    assert sorted(got, key=key) == sorted(want, key=key)


def test_changed_fields_names_each_difference_but_the_version():
    """Every field but the version is compared; times to the millisecond."""
    import msgspec

    record = next(o for o in fold_to_end(((0, n, "", e) for n, e in enumerate(envelopes())),
                                         lambda _: CallBuilder(PROFILE))
                  if isinstance(o, CallRecord) and o.status == "answered")

    assert changed_fields(record, msgspec.structs.replace(record, version=99)) == []
    other = msgspec.structs.replace(record, status="missed", start=record.start + 0.0004,
                                    end=record.end + 1, extensions_rang=("999",))
    assert changed_fields(record, other) == ["status", "end", "extensions_rang"]


def test_a_call_whose_first_events_are_gone_is_partial():
    """A source that starts in the middle of a call (its Newchannel gone with the topic's
    retention) marks it partial; the calls that start within the source are not."""
    envs = envelopes()
    first = EXPECTED["p01_in_answered_101"]["linkedid"]
    cut = next(i for i, e in enumerate(envs) if e.get("Linkedid") == first and e.name == "Hangup")
    partial = Partial()
    for e in envs[cut:]:
        partial.see(e)
    assert first in partial.calls
    whole = Partial()
    for e in envs:
        whole.see(e)
    assert whole.calls == set()


# -- end to end -----------------------------------------------------------------------------------

def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PBXPIPE, *args], capture_output=True, text=True, timeout=180, env=env)


def sql(env: dict[str, str], *statements: str) -> list:
    code = ("import sys, json; from store.clickhouse import ClickHouseStore as S; "
            f"s = S.connect({env['PBXPIPE_CLICKHOUSE_DSN']!r}); out = []\n"
            "for q in sys.argv[1:]:\n"
            "    out.append(s.query(q) if q.startswith('SELECT') else "
            "s.command(q, settings={'mutations_sync': 2}))\n"
            "print(json.dumps(out, default=str))")
    done = subprocess.run([sys.executable, "-c", code, *statements], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "PBXPIPE_LOG_FORMAT": "json",
           "PBXPIPE_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'ch'}",
           "PBXPIPE_OBJECT_STORE": f"dir://{tmp_path / 'objects'}", "PBXPIPE_PBX_ID": "acme-pjsip",
           "PBXPIPE_PBX_PROFILE": str(PJSIP / "pjsip_profile.toml")}
    done = run(env, "replay", str(CAPTURE))
    assert done.returncode == 0, done.stderr
    return env


def rederive(env: dict[str, str], *args: str) -> dict:
    done = run(env, "rederive", "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


SNAPSHOT = ("SELECT c.call_id AS call_id, status, direction, first_answered_by, last_answered_by, "
            "toString(start) AS start, built_from, version, l.legs AS legs FROM calls AS c FINAL "
            "LEFT JOIN (SELECT call_id, arraySort(groupArray(concat(leg_id, '/', outcome))) AS legs "
            "FROM call_legs FINAL GROUP BY call_id) AS l ON l.call_id = c.call_id ORDER BY call_id")


@pytest.mark.integration
def test_an_enrich_bug_is_repaired_by_rederive_apply(env):
    """Stored calls spoilt as an enrich bug would (statuses, a direction, an answerer, a start
    moved to the previous day, a leg lost, a call never stored): the dry run counts the calls
    changing per field and group and writes nothing; --apply restores every call as the events
    say, as versions that win, the moved row gone; a second --apply changes nothing."""
    before = sql(env, SNAPSHOT)[0]
    ids = {s: f"acme-pjsip:{EXPECTED[s]['linkedid']}" for s in (
        "p01_in_answered_101", "p02_in_noanswer_102", "p10_out_mobile_answered_101",
        "p06_ringgroup_102_answers", "p21_blind_transfer_ami_104_to_105", "p33_burst_internal_105_to_104")}
    spoil = "INSERT INTO calls SELECT * REPLACE (version + 1 AS version, {}) FROM (SELECT * FROM calls FINAL WHERE call_id = '{}')"
    sql(env,
        spoil.format("'missed' AS status", ids["p01_in_answered_101"]),
        spoil.format("'answered' AS status", ids["p02_in_noanswer_102"]),
        spoil.format("'internal' AS direction", ids["p10_out_mobile_answered_101"]),
        spoil.format("'101' AS last_answered_by", ids["p06_ringgroup_102_answers"]),
        spoil.format("start - toIntervalDay(1) AS start", ids["p21_blind_transfer_ami_104_to_105"]),
        f"ALTER TABLE call_legs DELETE WHERE call_id = '{ids['p06_ringgroup_102_answers']}' "
        "AND extension = '101'",
        f"ALTER TABLE calls DELETE WHERE call_id = '{ids['p33_burst_internal_105_to_104']}'")
    spoilt = sql(env, SNAPSHOT)[0]

    dry = rederive(env, "--capture", str(CAPTURE))
    assert (dry["calls"], dry["changed"], dry["new"], dry["unchanged"]) == (24, 5, 1, 18)
    assert dry["fields"]["status"] == 2 and dry["fields"]["direction"] == 1
    assert dry["fields"]["last_answered_by"] == 1 and dry["fields"]["start"] == 1
    assert dry["groups"] == {"status": 2, "direction": 1, "parties": 1, "times": 1}
    assert dry["legs"] == 1 and dry["twice"] == 1 and dry["written"] == 0
    assert sql(env, SNAPSHOT)[0] == spoilt  # a dry run writes nothing but the shadow

    applied = rederive(env, "--capture", str(CAPTURE), "--apply")
    assert applied["written"] == 6
    after = sql(env, SNAPSHOT)[0]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "version"} for r in rows]  # noqa: E731
    assert strip(after) == strip(before)
    rewritten = {r["call_id"]: r["version"] for r in after
                 if r["call_id"] in set(ids.values()) - {ids["p33_burst_internal_105_to_104"]}}
    assert all(v >> REDERIVE_REVISION_SHIFT == 1 for v in rewritten.values())
    rows = sql(env, "SELECT call_id, count() AS n FROM calls FINAL GROUP BY call_id HAVING n > 1")[0]
    assert rows == []

    again = rederive(env, "--capture", str(CAPTURE), "--apply")
    assert (again["changed"], again["new"], again["written"]) == (0, 0, 0)
    assert sql(env, SNAPSHOT)[0] == after


@pytest.mark.integration
def test_a_period_and_a_call_the_events_no_longer_hold(env, tmp_path):
    """--since/--until bound the calls compared; a stored call in the period that the source
    does not hold is reported, not touched; a capture starting mid-call leaves that call out."""
    raw = CAPTURE.read_bytes()
    first = EXPECTED["p01_in_answered_101"]["linkedid"].encode()
    # cut just before p01's Hangup: the capture starts in the middle of the first call
    cut = raw.index(b"Event: Hangup", raw.index(b"Linkedid: " + first))
    late = tmp_path / "late.log"
    late.write_bytes(raw[cut:])
    got = rederive(env, "--capture", str(late), "--since", "2026-12-07T22:48:00",
                   "--until", "2026-12-07T22:49:00")
    assert got["partial"] >= 1
    assert got["changed"] == 0 and got["new"] == 0
    assert f"acme-pjsip:{EXPECTED['p01_in_answered_101']['linkedid']}" in got["gone_first"]
    assert got["calls"] == len([s for s in EXPECTED.values() if s["start"] < 1796683740]) - got["gone"]


@pytest.mark.integration
def test_bad_requests_are_one_line_errors(env, tmp_path):
    """No source, both sources, a capture that is not there: `pbxpipe: error: …`, exit 1."""
    for args, says in (([], "name the raw events"),
                       (["--capture", str(tmp_path / "none.log")], "cannot read capture"),
                       (["--capture", str(CAPTURE), "--from-kafka"], "--capture or --from-kafka")):
        done = run(env, "rederive", *args)
        assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith(
            "pbxpipe: error: " + says), done.stderr


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    yield b
    b.stop()


@pytest.mark.integration
def test_from_the_raw_topic(broker, env, tmp_path):
    """With the capture ingested into the raw topic, rederive --from-kafka finds nothing to
    change and reconcile --from-kafka (the Cdr events in the topic) finds every call."""
    kafka = {**env, "PBXPIPE_KAFKA_BOOTSTRAP": broker.bootstrap, "PBXPIPE_KAFKA_IDEMPOTENCE": "false",
             "PBXPIPE_KAFKA_PARTITIONS": "3", "PBXPIPE_KAFKA_SPOOL_DIR": str(tmp_path / "spool"),
             "HOME": os.environ.get("HOME", "/tmp")}
    done = run(kafka, "ingest", "--capture", str(CAPTURE))
    assert done.returncode == 0, done.stderr
    got = rederive(kafka, "--from-kafka")
    assert (got["calls"], got["unchanged"], got["partial"], got["rejected"]) == (24, 24, 0, [])
    done = run(kafka, "reconcile", "--from-kafka", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["asterisk_calls"], report["exact"]) == (24, 24)
