"""Reconciliation's pure core on both real Asterisk 22 captures: Asterisk's own records (CDR from
cdr_csv, cdr_custom csv and json, and the AMI Cdr events; with and without CEL) folded into calls
agree with the calls the pipeline builds from the same PBX's events, and with
expected_calls.json; removed, altered, phantom and doubled calls are reported as such."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import pytest
from conftest import FIXTURES

from contracts.envelope import Envelope
from contracts.profile import PbxProfile, load_profile
from contracts.records import CallRecord
from enrich.calls import CallBuilder
from ingest.capture import read_capture
from reconcile.asterisk import (
    AsteriskCall,
    CdrRow,
    CelEvent,
    Span,
    asterisk_calls,
    rebuilt_record,
)
from reconcile.compare import compare, differences, period_of
from reconcile.readers import ami_cdr_rows, parse_fields, read_cdr, read_cel

UTC = ZoneInfo("UTC")
CEL_FULL_FIELDS = (
    "eventtype,eventenum,usereventname,eventtime,eventtime(double),name,num,ani,rdnis,dnid,"
    "exten,context,channame,appname,appdata,amaflags,accountcode,uniqueid,linkedid,peer,"
    "peeraccount,userfield,eventextra")


@dataclass(frozen=True)
class Capture:
    name: str
    dir: Path
    profile: PbxProfile

    @property
    def expected(self) -> dict[str, dict]:
        return json.loads((self.dir / "expected_calls.json").read_text())

    def cdr_custom_fields(self) -> str:
        conf = (self.dir / "config" / "cdr_custom.conf").read_text()
        return conf.split("fields = ", 1)[1].splitlines()[0]

    def envelopes(self) -> list[Envelope]:
        return [e for e in read_capture(self.dir / "ami_raw.log", self.profile.pbx_id)
                if isinstance(e, Envelope)]


CAPTURES = {
    "local": Capture("local", FIXTURES / "asterisk", load_profile(FIXTURES / "asterisk_profile.toml")),
    "pjsip": Capture("pjsip", FIXTURES / "asterisk-pjsip",
                     load_profile(FIXTURES / "asterisk-pjsip" / "pjsip_profile.toml")),
}
SOURCES = [("local", "cdr_csv"), ("local", "ami"), ("pjsip", "cdr_csv"), ("pjsip", "cdr_custom"),
           ("pjsip", "cdr_json"), ("pjsip", "ami")]


def cdr_rows(capture: Capture, source: str) -> list[CdrRow]:
    if source == "cdr_csv":
        rows, bad = read_cdr(capture.dir / "cdr" / "Master.csv", UTC)
    elif source == "cdr_custom":
        rows, bad = read_cdr(capture.dir / "cdr" / "cdr_full.csv", UTC, capture.cdr_custom_fields())
    elif source == "cdr_json":
        rows, bad = read_cdr(capture.dir / "cdr" / "cdr_full.json", UTC)
    else:
        rows, bad = ami_cdr_rows(((str(e.seq), e, "") for e in capture.envelopes()), UTC)
    assert bad == []
    return rows


def cel_events(capture: Capture) -> list[CelEvent]:
    events, bad = read_cel(capture.dir / "cel" / "cel_full.csv", UTC, CEL_FULL_FIELDS)
    assert bad == []
    return events


_stored: dict[str, list[CallRecord]] = {}


def stored(capture: Capture) -> list[CallRecord]:
    """What the pipeline stores for the capture: its events through the call builder."""
    if capture.name not in _stored:
        builder = CallBuilder(capture.profile, grace_s=2.0)
        out = []
        for env in capture.envelopes():
            out += builder.feed(env)
            out += builder.advance(env.recv_time)
        out += builder.flush()
        _stored[capture.name] = [r for r in out if isinstance(r, CallRecord)]
    return _stored[capture.name]


def reconciled(capture: Capture, calls: list[AsteriskCall], records: list[CallRecord], **kw):
    since, until = period_of(calls)
    return compare(calls, records, pbx_id=capture.profile.pbx_id, since=since, until=until,
                   tolerance_s=1.0, **kw)


@pytest.mark.parametrize("with_cel", [False, True], ids=["cdr", "cdr+cel"])
@pytest.mark.parametrize(("capture", "source"), SOURCES)
def test_every_call_of_both_captures_is_stored_exactly(capture, source, with_cel):
    """Asterisk's records of each capture, read from each of its CDR sources, with or without
    CEL, agree with the calls the pipeline builds from its events: completeness 100%, nothing
    missing, no phantom, no difference."""
    cap = CAPTURES[capture]
    calls, not_calls = asterisk_calls(cdr_rows(cap, source), cel_events(cap) if with_cel else [],
                                      cap.profile)
    report = reconciled(cap, calls, stored(cap))
    assert not_calls == []
    assert (report.missing, report.phantoms, report.differing, report.duplicates) == ([], [], [], [])
    assert report.asterisk_calls == report.exact == len(cap.expected)
    assert report.completeness == 1.0
    assert report.with_cel == (len(cap.expected) if with_cel else 0)


@pytest.mark.parametrize("capture", CAPTURES)
def test_asterisk_calls_follow_the_captures_expected_calls(capture):
    """Folded from Master.csv and CEL alone, each call has expected_calls.json's direction,
    parties, status and times (the truth derived from the same records)."""
    cap = CAPTURES[capture]
    calls = {c.linkedid: c for c in asterisk_calls(cdr_rows(cap, "cdr_csv"), cel_events(cap),
                                                   cap.profile)[0]}
    for name, want in cap.expected.items():
        got = calls[want["linkedid"]]
        for f in ("direction", "caller", "called", "answered", "first_answered_by",
                  "last_answered_by", "status"):
            assert getattr(got, f) == want[f], (name, f)
        assert got.disposition == want["asterisk_last_disposition"], name
        for f in ("start", "end"):
            span = getattr(got, f)
            assert span.lo - 1 <= want[f] <= span.hi + 1, (name, f)
        if want["wait_s"] is not None:
            assert got.answer is not None
            assert got.answer.lo - 1 <= want["start"] + want["wait_s"] <= got.answer.hi + 1, name


def test_calls_removed_from_the_store_are_reported_missing():
    """Two calls the store lost are missing, by call id; completeness is the share kept."""
    cap = CAPTURES["pjsip"]
    calls, _ = asterisk_calls(cdr_rows(cap, "cdr_csv"), [], cap.profile)
    lost = {"acme-pjsip:1796683714.0", "acme-pjsip:1796683842.63"}
    report = reconciled(cap, calls, [r for r in stored(cap) if r.call_id not in lost])
    assert {f.call_id for f in report.missing} == lost
    assert report.exact == 22 and report.completeness == pytest.approx(22 / 24)
    assert report.phantoms == report.differing == []


def test_altered_calls_are_reported_field_by_field():
    """A stored call whose status, answerer, caller, dialled number or times disagree with
    Asterisk's records is reported with each field: stored value, Asterisk's value."""
    cap = CAPTURES["local"]
    calls, _ = asterisk_calls(cdr_rows(cap, "cdr_csv"), cel_events(cap), cap.profile)
    records = {r.linkedid: r for r in stored(cap)}
    edits = {
        "1795539184.4": {"status": "no_answer"},  # s02: missed
        "1795539399.213": {"last_answered_by": "101"},  # s09: attended transfer to 103
        "1795539191.16": {"caller": "102", "called": "0221112233"},  # s12
        "1795539204.31": {"start": records["1795539204.31"].start + 5},  # s24
        "1795539219.58": {"answer": None, "answered": False},  # s05 queue
    }
    altered = [msgspec.structs.replace(r, **edits[r.linkedid]) if r.linkedid in edits else r
               for r in records.values()]
    report = reconciled(cap, calls, altered)
    found = {f.linkedid: {d.field: (d.stored, d.asterisk) for d in f.differences}
             for f in report.differing}
    assert set(found) == set(edits)
    assert found["1795539184.4"] == {"status": ("no_answer", "missed")}
    assert found["1795539399.213"] == {"last_answered_by": ("101", "103")}
    assert found["1795539191.16"]["caller"][1] == "101"
    assert found["1795539191.16"]["called"] == ("0221112233", records["1795539191.16"].called)
    assert set(found["1795539204.31"]) == {"start"}
    assert set(found["1795539219.58"]) == {"answered", "answer"}
    assert report.exact == 26 - len(edits) and report.missing == report.phantoms == []


def test_a_stored_call_the_pbx_has_no_record_of_is_a_phantom():
    """A stored call inside the period whose Linkedid is in none of Asterisk's rows is a phantom;
    one outside the period is not judged."""
    cap = CAPTURES["pjsip"]
    calls, _ = asterisk_calls(cdr_rows(cap, "cdr_csv"), [], cap.profile)
    base = stored(cap)[0]
    ghost = msgspec.structs.replace(base, call_id="acme-pjsip:1796683800.999",
                                    linkedid="1796683800.999", start=1796683800.5)
    later = msgspec.structs.replace(ghost, call_id="acme-pjsip:1796690000.1", linkedid="1796690000.1",
                                    start=1796690000.0)
    report = reconciled(cap, calls, [*stored(cap), ghost, later])
    assert [f.call_id for f in report.phantoms] == ["acme-pjsip:1796683800.999"]
    assert report.completeness == 1.0 and report.stored_calls == 25


def test_a_call_stored_twice_is_not_stored_exactly():
    """The same call under two sorting keys (its start moved to another day) is reported twice
    stored and does not count as exact."""
    cap = CAPTURES["pjsip"]
    calls, _ = asterisk_calls(cdr_rows(cap, "cdr_csv"), [], cap.profile)
    first = stored(cap)[0]
    report = reconciled(cap, calls, [*stored(cap), msgspec.structs.replace(first, version=1)])
    assert report.duplicates == [first.call_id]
    assert report.exact == 23 and report.differing == []


def test_a_time_written_to_the_second_is_the_whole_second():
    """Master.csv truncates times: 09 means [09, 10). A stored time 0.9 s after it agrees; one
    2.5 s after it does not with a 1 s tolerance; cdr_custom's exact times are held to the
    tolerance alone."""
    call = asterisk_calls(cdr_rows(CAPTURES["pjsip"], "cdr_csv"), [], CAPTURES["pjsip"].profile)[0][0]
    record = next(r for r in stored(CAPTURES["pjsip"]) if r.linkedid == call.linkedid)
    assert call.start.hi - call.start.lo == 1.0
    assert differences(call, msgspec.structs.replace(record, start=call.start.lo + 0.9), 0.0) == []
    late = differences(call, msgspec.structs.replace(record, start=call.start.lo + 2.5), 1.0)
    assert [d.field for d in late] == ["start"]
    exact = asterisk_calls(cdr_rows(CAPTURES["pjsip"], "cdr_custom"), [], CAPTURES["pjsip"].profile)[0][0]
    assert exact.start.lo == exact.start.hi
    assert [d.field for d in differences(exact, msgspec.structs.replace(
        record, start=exact.start.lo + 1.2), 1.0)] == ["start"]


def test_without_cel_a_queue_answer_is_only_a_lower_bound():
    """The queue answered the caller before the agent did (Answer() then Queue): the row's
    answer time is the caller's, so without CEL the agent answered no earlier than it and no
    later than the end; with CEL, at the agent channel's ANSWER."""
    cap = CAPTURES["pjsip"]
    lid = cap.expected["p08_queue_answered_104"]["linkedid"]
    plain = {c.linkedid: c for c in asterisk_calls(cdr_rows(cap, "cdr_csv"), [], cap.profile)[0]}[lid]
    with_cel = {c.linkedid: c for c in asterisk_calls(cdr_rows(cap, "cdr_csv"), cel_events(cap),
                                                      cap.profile)[0]}[lid]
    assert plain.answer == Span(plain.start.lo, plain.end.hi)
    assert with_cel.answer is not None and with_cel.answer.hi - with_cel.answer.lo == 0
    assert with_cel.answer.lo == pytest.approx(cap.expected["p08_queue_answered_104"]["start"] + 4.022, abs=0.01)


def _row(**kw) -> CdrRow:
    base = dict(linkedid="1.0", uniqueid="1.0", channel="PJSIP/trunk-00000001", dstchannel="",
                src="+48601234567", clid='"Jan" <+48601234567>', dst="101", lastapp="Dial",
                lastdata="", start=100.0, answer=None, end=130.0, resolution=0.0,
                disposition="NO ANSWER", sequence=1)
    base.update(kw)
    return CdrRow(**base)


def test_a_pickup_is_answered_by_the_phone_that_picked_up():
    """A ringing phone whose row says ANSWERED but that CEL never saw answer (it was picked up)
    did not answer; the phone that ran Pickup() did, at its CEL ANSWER."""
    from contracts.profile import DEFAULT_PROFILE

    rows = [
        _row(dstchannel="PJSIP/101-00000002", disposition="ANSWERED", answer=105.0),
        _row(uniqueid="1.3", channel="PJSIP/102-00000003", src="102", dst="*8", lastapp="Pickup",
             start=103.0, answer=105.0, disposition="ANSWERED", sequence=2),
    ]
    cel = [CelEvent(eventtype="ANSWER", time=105.2, resolution=0.0, channel="PJSIP/102-00000003",
                    uniqueid="1.3", linkedid="1.0"),
           CelEvent(eventtype="APP_START", time=103.5, resolution=0.0, channel="PJSIP/102-00000003",
                    uniqueid="1.3", linkedid="1.0", appname="Pickup"),
           CelEvent(eventtype="CHAN_START", time=100.0, resolution=0.0,
                    channel="PJSIP/trunk-00000001", uniqueid="1.0", linkedid="1.0",
                    exten="+48221234567")]
    [call], _ = asterisk_calls(rows, cel, DEFAULT_PROFILE)
    assert (call.first_answered_by, call.last_answered_by, call.status) == ("102", "102", "answered")
    assert call.answer == Span(105.2, 105.2) and call.called == "+48221234567"
    [no_cel], _ = asterisk_calls(rows, [], DEFAULT_PROFILE)
    assert (no_cel.first_answered_by, no_cel.last_answered_by) == ("101", "102")


def test_a_linkedid_without_a_trunk_or_phone_is_not_a_call():
    """Rows whose channels the profile calls neither trunk nor device (an Originate that never
    reached the dialplan) are named, not compared."""
    from contracts.profile import DEFAULT_PROFILE

    calls, not_calls = asterisk_calls([_row(linkedid="9.0", uniqueid="9.0", channel="Local/x@y-1;1")],
                                      [], DEFAULT_PROFILE)
    assert calls == [] and not_calls == ["9.0"]


def test_rebuilt_records_reconcile_exactly():
    """A call written from the CDR rows (the store had lost it) is flagged built_from cdr,
    version 0, and the next reconciliation finds it exact."""
    cap = CAPTURES["local"]
    calls, _ = asterisk_calls(cdr_rows(cap, "cdr_csv"), cel_events(cap), cap.profile)
    lost = {cap.expected[s]["linkedid"] for s in ("s05_queue_answered_104", "s16_out_mobile_0601_recorded",
                                                  "s25_internal_busy_102_to_105")}
    kept = [r for r in stored(cap) if r.linkedid not in lost]
    rebuilt = [rebuilt_record(c, "acme") for c in calls if c.linkedid in lost]
    assert all(r.built_from == "cdr" and r.version == 0 for r in rebuilt)
    rec = next(r for r in rebuilt if r.linkedid == cap.expected["s16_out_mobile_0601_recorded"]["linkedid"])
    assert rec.recordings == () and rec.called == "0601234567" and rec.talk_s > 0
    report = reconciled(cap, calls, kept + rebuilt)
    assert report.exact == 26 and report.from_cdr == 3 and report.missing == []


def test_recordings_named_by_a_userfield_are_kept_on_the_rebuilt_call():
    """The CDR userfield that names the call's recording (rec:<file>) gives the rebuilt call
    its recording, as the pipeline reads it."""
    cap = CAPTURES["pjsip"]
    calls, _ = asterisk_calls(cdr_rows(cap, "cdr_csv"), [], cap.profile,
                              recording_patterns=[r"^rec:(?P<file>\S+)$"])
    lid = cap.expected["p30_out_recorded_105"]["linkedid"]
    call = next(c for c in calls if c.linkedid == lid)
    assert call.recordings == ("out-1796684002.116.wav",)


def test_cdr_events_without_the_linkedid_mapping_find_their_call():
    """Without cdr_manager's [mappings] a Cdr event names no Linkedid: its call is the one whose
    channel has the row's UniqueID; the calls come out the same."""
    cap = CAPTURES["local"]
    stripped = [Envelope(e.pbx_id, e.epoch, e.seq, e.recv_time,
                         tuple(h for h in e.headers if h[0] != "LinkedID"))
                if e.name == "Cdr" else e for e in cap.envelopes()]
    rows, bad = ami_cdr_rows(((str(e.seq), e, "") for e in stripped), UTC)
    assert bad == [] and len(rows) == 106
    assert asterisk_calls(rows, [], cap.profile)[0] == asterisk_calls(cdr_rows(cap, "ami"), [], cap.profile)[0]


def test_rows_that_cannot_be_read_are_kept_with_their_reason(tmp_path):
    """A row with the wrong number of columns, a time that is no time, or no Linkedid is kept
    with where and why; the rows around it are read."""
    good = (FIXTURES / "asterisk-pjsip" / "cdr" / "Master.csv").read_text().splitlines()
    bad_time = good[1].replace('"2026-12-07 22:48:42"', '"yesterday"', 1)
    no_linkedid = good[2].replace(',"1796683726.8",7', ',"",7')
    path = tmp_path / "Master.csv"
    path.write_text("\n".join([good[0], '"only","three","columns"', bad_time, no_linkedid,
                               *good[3:]]) + "\n")
    rows, rejected = read_cdr(path, UTC)
    assert len(rows) == len(good) - 2
    assert [(r.where, r.reason) for r in rejected] == [
        ("Master.csv:2", "3 columns, the layout has 21"),
        ("Master.csv:3", "not a time: 'yesterday'"),
        ("Master.csv:4", "no linkedid"),
    ]
    assert "only" in rejected[0].raw


def test_a_fields_line_names_the_columns():
    """cdr_custom's fields line, as written in cdr_custom.conf: (double) columns are told apart
    from the text ones, user variables keep their names; a broken line is an error."""
    assert parse_fields("start,start(double),scenario(uservar), end") == [
        "start", "start#double", "scenario", "end"]
    from contracts.errors import InputError

    with pytest.raises(InputError):
        parse_fields("start,,end")
    with pytest.raises(InputError):
        parse_fields("start(double")


def test_cel_master_csv_of_the_sample_mapping_is_read_by_default():
    """cel_custom's sample [mappings] Master.csv needs no fields line, and gives the same calls
    as the advanced csv (its times to the second)."""
    cap = CAPTURES["pjsip"]
    sample, bad = read_cel(cap.dir / "cel" / "Master.csv", UTC)
    assert bad == [] and len(sample) == len(cel_events(cap))
    a = asterisk_calls(cdr_rows(cap, "cdr_csv"), sample, cap.profile)[0]
    b = asterisk_calls(cdr_rows(cap, "cdr_csv"), cel_events(cap), cap.profile)[0]
    assert [(c.called, c.first_answered_by, c.status) for c in a] == [
        (c.called, c.first_answered_by, c.status) for c in b]
