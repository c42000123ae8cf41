"""Retention, holds, export and erasure: pure rules, and their effect on chDB and a local store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from conftest import CAPTURE, load_capture_envelopes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.errors import RetentionError
from contracts.profile import load_profile
from contracts.records import CallRecord
from enrich.calls import CallBuilder
from retention import jobs
from retention.erasure import Hold, number_key, split_held
from retention.export import export_calls, export_due
from retention.policies import (
    lifecycle_rules,
    make_policy,
    months_due_for_export,
    ttl_days_expression,
)
from retention.recordings import object_key, plan_uploads, spool_relpath, wav_duration
from retention.uploader import RECORDINGS_TABLE
from retention.recordings import StoredRecording
from store.clickhouse import ClickHouseStore
from store.objects import LocalObjectStore
from store.schema import batch_token

DAY = 86400.0
DEFAULT = make_policy("", 365, 365)

# -- pure ------------------------------------------------------------------------------------


def test_recording_detected_from_cdr_userfield_and_variable_once() -> None:
    """The VarSet's full path and the Cdr userfield's bare name are one recording; a custom
    userfield pattern is honoured."""
    profile = load_profile(CAPTURE.parent / "asterisk_profile.toml")
    builder = CallBuilder(profile, pbx_id="acme")
    out = []
    for env in load_capture_envelopes():
        builder.feed(env)
    out = [o for o in builder.flush() if isinstance(o, CallRecord) and o.recordings]
    assert sorted(r.recordings for r in out) == [
        ("/var/spool/asterisk/monitor/in-1795539359.189.wav",),
        ("/var/spool/asterisk/monitor/out-1795539329.163.wav",),
    ]
    # without the variable, the userfield alone names the file
    envs = [e for e in load_capture_envelopes() if e.get("Variable") != "MIXMONITOR_FILENAME"]
    b2 = CallBuilder(profile, pbx_id="acme", recording_patterns=[r"rec:(?P<file>\S+)"])
    for env in envs:
        b2.feed(env)
    names = sorted(r.recordings for r in b2.flush() if isinstance(r, CallRecord) and r.recordings)
    assert names == [("in-1795539359.189.wav",), ("out-1795539329.163.wav",)]


def test_wav_duration_from_the_real_recordings() -> None:
    """The header's data size / byte rate: 15 s and 40 s, the CDRs' billsec of those calls."""
    assert wav_duration((CAPTURE / "recordings" / "in-1795539359.189.wav").read_bytes()[:65536]) == 15.0
    assert wav_duration((CAPTURE / "recordings" / "out-1795539329.163.wav").read_bytes()[:65536]) == 40.0
    assert wav_duration(b"not a wav") is None


def test_keys_are_deterministic_tenant_first_and_stay_in_the_spool() -> None:
    k = object_key("acme", 1795539359.8, "acme:1795539359.188", "/var/spool/asterisk/monitor/a b.wav")
    assert k == "rec/acme/2026/11/24/1795539359.188/a_b.wav"
    assert spool_relpath("/var/spool/asterisk/monitor/2026/x.wav", "/var/spool/asterisk/monitor") == "2026/x.wav"
    assert spool_relpath("/etc/passwd", "/var/spool/asterisk/monitor") is None
    assert spool_relpath("../x.wav", "/var/spool/asterisk/monitor") is None


def test_policies_clamp_recordings_and_build_ttl_and_rules() -> None:
    p = make_policy("beta", 90, 400)
    assert p.recording_days == 90  # never longer than the call's
    with pytest.raises(RetentionError):
        make_policy("x'; DROP TABLE calls; --", 30)
    policies = {"beta": p, "acme": make_policy("acme", 365, 30)}
    assert ttl_days_expression(policies, DEFAULT) == "multiIf(pbx_id = 'beta', 90, 365)"
    assert ttl_days_expression(policies, DEFAULT, recordings=True) == (
        "multiIf(pbx_id = 'acme', 30, pbx_id = 'beta', 90, 365)")
    rules = lifecycle_rules({"gamma"}, policies, DEFAULT)
    assert [(r.prefix, r.days) for r in rules] == [
        ("rec/acme/", 30), ("rec/beta/", 90), ("rec/gamma/", 365)]


def test_months_due_for_export() -> None:
    """A month is due when its first calls expire within the horizon and it was not exported."""
    now = datetime(2026, 11, 24, tzinfo=UTC)
    present = [("acme", "2025-11"), ("acme", "2025-12"), ("acme", "2026-05"), ("beta", "2025-12")]
    due = months_due_for_export(present, {("acme", "2025-11")}, {}, DEFAULT, now, 30)
    assert due == [("acme", "2025-12"), ("beta", "2025-12")]


def test_number_matching_and_holds_win() -> None:
    assert number_key("+48 601 234 567") == number_key("0601234567") == "601234567"
    rows = [
        {"call_id": "a:1", "pbx_id": "a", "caller": "+48601234567", "called": "101", "parties": []},
        {"call_id": "b:2", "pbx_id": "b", "caller": "0601234567", "called": "102", "parties": []},
        {"call_id": "a:3", "pbx_id": "a", "caller": "103", "called": "0601234567", "parties": []},
    ]
    erase, held = split_held(rows, [Hold(hold_id="h1", kind="customer", value="b"),
                                    Hold(hold_id="h2", kind="call", value="a:3")])
    assert erase == ["a:1"] and held == {"b:2": ["h1"], "a:3": ["h2"]}


def test_unanswered_calls_plan_no_upload() -> None:
    rec = _call(1, 10 * DAY, answered=False, recordings=("/var/spool/asterisk/monitor/r.wav",))
    assert plan_uploads(rec, "/var/spool/asterisk/monitor") == ([], ["/var/spool/asterisk/monitor/r.wav"])


# -- against chDB ------------------------------------------------------------------------------


def _call(n: int, age_s: float, *, pbx: str = "acme", caller: str = "+48601000000",
          called: str = "101", answered: bool = True, recordings: tuple[str, ...] = (),
          now: float | None = None) -> CallRecord:
    start = round((now or time.time()) - age_s, 3)
    return CallRecord(
        call_id=f"{pbx}:{n}", pbx_id=pbx, linkedid=str(n), direction="inbound", caller=caller,
        caller_name="", called=called, answered=answered, first_answered_by="101" if answered else None,
        last_answered_by="101" if answered else None, status="answered" if answered else "missed",
        start=start, answer=start + 1 if answered else None, end=start + 10, duration_s=10.0,
        wait_s=1.0 if answered else None, talk_s=9.0 if answered else 0.0, hangup_cause=16,
        hangup_cause_text="Normal Clearing", hangup_by="caller", extensions_rang=("101",), queue="",
        transferred=False, forwarded=False, recordings=recordings, disposition="ANSWERED",
        incomplete=False, version=1,
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseStore]:
    s = ClickHouseStore.connect(f"chdb://{tmp_path_factory.mktemp('chdb-retention')}")
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def clean(store: ClickHouseStore) -> ClickHouseStore:
    for t in ("calls", "call_legs", "quarantine", "recordings", "retention_policies",
              "legal_holds", "held_rows", "exports", "erasure_audit"):
        store.command(f"TRUNCATE TABLE {t}")
    return store


def _write(store: ClickHouseStore, calls: list[CallRecord]) -> None:
    store.write_calls(calls, batch_token("calls", calls) + str(time.time_ns()))


def _expire(store: ClickHouseStore) -> None:
    for t in ("calls", "held_rows", "recordings"):
        store.command(f"ALTER TABLE {t} MATERIALIZE TTL", settings={"mutations_sync": 2}) if t != "held_rows" else None
        store.command(f"OPTIMIZE TABLE {t} FINAL")


def _ids(store: ClickHouseStore, table: str = "calls") -> set[str]:
    return {r["call_id"] for r in store.query(f"SELECT call_id FROM {table}")}


@pytest.mark.integration
def test_ttl_removes_backdated_calls_and_keeps_the_window(clean: ClickHouseStore) -> None:
    """Rows older than 365 days go when TTL is materialised; rows inside the window stay."""
    now = time.time()
    _write(clean, [_call(1, 400 * DAY, now=now), _call(2, 366 * DAY, now=now),
                   _call(3, 364 * DAY, now=now), _call(4, 1 * DAY, now=now)])
    _expire(clean)
    assert _ids(clean) == {"acme:3", "acme:4"}


@pytest.mark.integration
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(days=st.integers(2, 400), ages=st.lists(st.floats(0, 800), min_size=1, max_size=12))
def test_retention_never_deletes_inside_its_window(
    clean: ClickHouseStore, tmp_path_factory: pytest.TempPathFactory, days: int, ages: list[float]
) -> None:
    """Whatever the customer's policy and the calls' ages, expiry removes exactly the calls
    older than the policy: never one inside the window."""
    for t in ("calls", "retention_policies", "legal_holds", "held_rows"):
        clean.command(f"TRUNCATE TABLE {t}")
    now = time.time()
    ages = [a for a in ages if abs(a - days) > 0.01]  # not within 15 minutes of the boundary
    calls = [_call(i, a * DAY, pbx="cust", now=now) for i, a in enumerate(ages)]
    # the policy first: ClickHouse applies the TTL in force to every insert, too
    jobs.set_policy(clean, make_policy("cust", days), now)
    jobs.apply(clean, LocalObjectStore(tmp_path_factory.mktemp("objects")), DEFAULT, now)
    _write(clean, calls)
    _expire(clean)
    assert _ids(clean) == {c.call_id for c, a in zip(calls, ages, strict=True) if a < days}


@pytest.mark.integration
def test_held_calls_survive_expiry_until_released(clean: ClickHouseStore, tmp_path: Path) -> None:
    """A number on hold: its calls are copied aside (rows and recordings) and outlive the TTL;
    releasing the hold removes the copies."""
    objects = LocalObjectStore(tmp_path)
    now = time.time()
    old = _call(1, 400 * DAY, caller="+48601234567", now=now)
    # written while a longer policy was in force (ClickHouse drops expired rows on insert too)
    jobs.set_policy(clean, make_policy("acme", 1000), now)
    jobs.apply(clean, objects, DEFAULT, now)
    _write(clean, [old, _call(2, 400 * DAY, caller="+48700000000", now=now)])
    row = StoredRecording(call_id=old.call_id, pbx_id="acme", start=old.start, source="a.wav",
                          key="rec/acme/a.wav", size_bytes=3, duration_s=None, sha256="x",
                          content_type="audio/wav", uploaded_at=now, version=1)
    import io

    objects.put(row.key, io.BytesIO(b"abc"), 3, content_type="audio/wav", metadata={})
    clean.write_structs(RECORDINGS_TABLE, [row], "t1")
    hold, copied = jobs.place_hold(clean, objects, "number", "0601234567", "case 7", "tester", now)
    assert copied == 2  # the call and its recording row
    assert objects.get(f"held/{hold.hold_id}/rec/acme/a.wav") == b"abc"
    jobs.set_policy(clean, make_policy("acme", 365), now + 1)  # back to a year: both expire
    jobs.apply(clean, objects, DEFAULT, now)
    _expire(clean)
    assert _ids(clean) == set()
    assert _ids(clean, "held_rows") == {"acme:1"}
    jobs.release_hold(clean, objects, hold.hold_id, now)
    assert _ids(clean, "held_rows") == set()
    assert list(objects.scan("held/")) == []
    assert jobs.active_holds(clean) == []


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_reads_back_equal_to_the_table(clean: ClickHouseStore, tmp_path: Path, fmt: str) -> None:
    """Every row in the range, nothing else, field for field; the manifest's checksum matches."""
    now = time.time()
    calls = [_call(i, i * 3600.0, pbx="acme" if i % 3 else "beta", now=now) for i in range(1, 50)]
    _write(clean, calls)
    since, until = now - 30.5 * 3600, now - 2.5 * 3600
    manifest = export_calls(clean, since=since, until=until, customer="acme", fmt=fmt,
                            dest=str(tmp_path), tz="Europe/Warsaw")
    path = tmp_path / f"calls.{fmt}"
    strings = pcsv.ConvertOptions(column_types={"caller": pa.string(), "called": pa.string()})
    table = pq.read_table(path) if fmt == "parquet" else pcsv.read_csv(path, convert_options=strings)
    want = sorted((c for c in calls if c.pbx_id == "acme" and since <= c.start < until),
                  key=lambda c: c.start)
    got = table.to_pylist()
    assert manifest["rows"] == len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert g["call_id"] == w.call_id and g["caller"] == w.caller
        assert g["start"].timestamp() == pytest.approx(w.start, abs=0.001)
        assert g["talk_s"] == w.talk_s
    from store.objects import sha256_file

    assert manifest["files"][0]["sha256"] == sha256_file(path)[0]
    assert (tmp_path / "manifest.json").exists()


@pytest.mark.integration
def test_export_due_is_idempotent_and_recorded(clean: ClickHouseStore, tmp_path: Path) -> None:
    now = time.time()
    _write(clean, [_call(1, 350 * DAY, now=now), _call(2, 5 * DAY, now=now)])
    first = export_due(clean, dest=str(tmp_path), fmt="parquet", within_days=30, default=DEFAULT, now=now)
    assert [d["rows"] for d in first] == [1]
    assert export_due(clean, dest=str(tmp_path), fmt="parquet", within_days=30, default=DEFAULT, now=now) == []


@pytest.mark.integration
def test_erasure_removes_everything_of_one_number_and_nothing_else(clean: ClickHouseStore,
                                                                   tmp_path: Path) -> None:
    """Calls, legs, recording rows and objects of +48601234567 (in any spelling) go; other
    numbers' stay; a held call is kept and reported; one audit entry says who and how many."""
    import io

    objects = LocalObjectStore(tmp_path)
    now = time.time()
    target = [_call(1, DAY, caller="+48601234567", now=now),
              _call(2, DAY, caller="101", called="0601234567", now=now),
              _call(3, DAY, caller="0048601234567", pbx="held", now=now)]
    others = [_call(4, DAY, caller="+48601234568", now=now), _call(5, DAY, caller="601", now=now)]
    _write(clean, target + others)
    recs = []
    for c in target + others:
        key = f"rec/{c.pbx_id}/{c.linkedid}.wav"
        objects.put(key, io.BytesIO(b"x"), 1, content_type="audio/wav", metadata={})
        recs.append(StoredRecording(call_id=c.call_id, pbx_id=c.pbx_id, start=c.start, source="s",
                                    key=key, size_bytes=1, duration_s=None, sha256="x",
                                    content_type="audio/wav", uploaded_at=now, version=1))
    clean.write_structs(RECORDINGS_TABLE, recs, "recs")
    jobs.place_hold(clean, objects, "customer", "held", "", "tester", now)

    dry = jobs.erase_number(clean, objects, "0601 234 567", actor="dpo", now=now, dry_run=True)
    assert dry["calls"] == 2 and _ids(clean) == {f"{c.call_id}" for c in target + others}

    out = jobs.erase_number(clean, objects, "0601 234 567", actor="dpo", now=now)
    assert out["calls"] == 2 and out["recordings"] == 2 and list(out["held"]) == ["held:3"]
    assert _ids(clean) == {"held:3", "acme:4", "acme:5"}
    assert _ids(clean, "recordings") == {"held:3", "acme:4", "acme:5"}
    assert sorted(o.key for o in objects.scan("rec/")) == ["rec/acme/4.wav", "rec/acme/5.wav",
                                                           "rec/held/3.wav"]
    audit = clean.query("SELECT actor, dry_run, calls, held_calls, number_sha256 FROM erasure_audit "
                        "ORDER BY at, dry_run DESC")
    assert [(a["actor"], a["dry_run"], a["calls"]) for a in audit] == [("dpo", True, 2), ("dpo", False, 2)]
    assert audit[1]["held_calls"] == ["held:3"] and "601234567" not in audit[1]["number_sha256"]


@pytest.mark.integration
def test_apply_sets_local_lifecycle_and_expires_old_objects(clean: ClickHouseStore, tmp_path: Path) -> None:
    """The embedded store keeps the rules and enforces them itself; held copies are untouched."""
    import io
    import os

    objects = LocalObjectStore(tmp_path)
    now = time.time()
    jobs.set_policy(clean, make_policy("acme", 365, 30), now)
    for key in ("rec/acme/old.wav", "rec/acme/new.wav", "held/h/rec/acme/old.wav"):
        objects.put(key, io.BytesIO(b"x"), 1, content_type="audio/wav", metadata={})
    old = now - 40 * DAY
    for key in ("rec/acme/old.wav", "held/h/rec/acme/old.wav"):
        os.utime(tmp_path / key, (old, old))
    out: dict[str, Any] = jobs.apply(clean, objects, DEFAULT, now)
    assert [(r.prefix, r.days) for r in objects.lifecycle()] == [("rec/acme/", 30)]
    assert out["objects_expired"] == 1
    assert sorted(o.key for o in objects.scan("")) == ["held/h/rec/acme/old.wav", "rec/acme/new.wav"]
