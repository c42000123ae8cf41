"""The call builder against the real Asterisk 22 capture: one record per call, as expected."""

from __future__ import annotations

import json

import pytest
from conftest import CAPTURE

from contracts.envelope import Envelope
from contracts.profile import PbxProfile
from contracts.records import CallLeg, CallRecord, Output
from enrich.calls import CallBuilder

EXACT = ("direction", "caller", "called", "answered", "first_answered_by", "last_answered_by", "status")
TIMES = ("start", "end", "duration_s", "wait_s", "talk_s")
SCENARIOS = sorted(json.loads((CAPTURE / "expected_calls.json").read_text()))


def replay(envelopes: list[Envelope], profile: PbxProfile) -> list[Output]:
    builder = CallBuilder(profile, grace_s=2.0)
    out: list[Output] = []
    for env in envelopes:
        out += builder.feed(env)
        out += builder.advance(env.recv_time)
    return out + builder.flush()


@pytest.fixture(scope="module")
def records(capture_envelopes, capture_profile) -> dict[str, CallRecord]:
    out = replay(capture_envelopes, capture_profile)
    return {r.linkedid: r for r in out if isinstance(r, CallRecord)}


@pytest.fixture(scope="module")
def legs(capture_envelopes, capture_profile) -> dict[str, list[CallLeg]]:
    by_call: dict[str, list[CallLeg]] = {}
    for r in replay(capture_envelopes, capture_profile):
        if isinstance(r, CallLeg):
            by_call.setdefault(r.linkedid, []).append(r)
    return by_call


def test_one_record_per_captured_call(records, expected_calls):
    """Every scenario of the capture gives exactly one record, and nothing else does."""
    assert sorted(records) == sorted(x["linkedid"] for x in expected_calls.values())


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_call_matches_expected(scenario, records, expected_calls):
    """Each call's fields equal expected_calls.json; times within 1 s."""
    want = expected_calls[scenario]
    got = records[want["linkedid"]]
    for f in EXACT:
        assert getattr(got, f) == want[f], f
    for f in TIMES:
        if want[f] is None:
            assert getattr(got, f) is None, f
        else:
            assert getattr(got, f) == pytest.approx(want[f], abs=1.0), f
    assert got.disposition == want["asterisk_last_disposition"]
    assert got.call_id == f"acme:{want['linkedid']}"
    assert not got.incomplete


def by_name(records, expected_calls, scenario) -> CallRecord:
    return records[expected_calls[scenario]["linkedid"]]


def test_queue_call_records_queue_and_both_member_legs(records, legs, expected_calls):
    """The answered queue call names its queue; the member who lost the race is a CANCEL leg."""
    lid = expected_calls["s05_queue_answered_104"]["linkedid"]
    assert records[lid].queue == "support"
    assert records[lid].extensions_rang == ("104", "105")
    outcome = {leg.extension: (leg.outcome, leg.answered) for leg in legs[lid]}
    assert outcome == {"104": ("ANSWER", True), "105": ("CANCEL", False)}


def test_queue_timeout_has_a_leg_per_ring_round(legs, expected_calls):
    """s28: two members rang twice; app_queue's doubled DialEnd does not double the legs."""
    lid = expected_calls["s28_queue_timeout"]["linkedid"]
    assert sorted((leg.extension, leg.outcome) for leg in legs[lid]) == [
        ("104", "NOANSWER"), ("104", "NOANSWER"), ("105", "NOANSWER"), ("105", "NOANSWER"),
    ]
    assert all(leg.ring_s == pytest.approx(15, abs=1) or leg.ring_s == pytest.approx(3, abs=1)
               for leg in legs[lid])


def test_transfers_and_forwards_are_flagged(records, expected_calls):
    """Redirect (no transfer event) and attended transfer are transfers; CFU is a forward."""
    assert by_name(records, expected_calls, "s07_blind_transfer_redirect_101_to_102").transferred
    assert by_name(records, expected_calls, "s09_attended_transfer_101_to_103").transferred
    cfu = by_name(records, expected_calls, "s10_forward_cfu_102_to_103")
    assert cfu.forwarded and not cfu.transferred
    plain = by_name(records, expected_calls, "s01_in_answered_101")
    assert not plain.forwarded and not plain.transferred
    ring_group = by_name(records, expected_calls, "s04_in_ringgroup_102_answers")
    assert not ring_group.forwarded and ring_group.extensions_rang == ("101", "102", "103")


def test_recordings_and_hangup_details(records, expected_calls):
    """MixMonitor file names come from MIXMONITOR_FILENAME; causes and who hung up are kept."""
    rec = by_name(records, expected_calls, "s16_out_mobile_0601_recorded")
    assert rec.recordings == ("/var/spool/asterisk/monitor/out-1795539329.163.wav",)
    assert by_name(records, expected_calls, "s26_in_recorded_line_105").recordings == (
        "/var/spool/asterisk/monitor/in-1795539359.189.wav",
    )
    busy = by_name(records, expected_calls, "s03_in_busy_103")
    assert (busy.hangup_cause, busy.hangup_cause_text) == (17, "User busy")
    assert by_name(records, expected_calls, "s23_in_caller_hangs_while_ringing").hangup_by == "caller"
    assert by_name(records, expected_calls, "s24_internal_101_to_103").hangup_by == "callee"
    assert by_name(records, expected_calls, "s01_in_answered_101").caller_name == "Jan Nowak"


def test_outbound_answered_by_far_end_is_external(records, expected_calls, legs):
    lid = expected_calls["s12_out_national_0048_remote_hangs"]["linkedid"]
    assert [(leg.kind, leg.extension, leg.outcome) for leg in legs[lid]] == [
        ("trunk", "external", "ANSWER")
    ]
