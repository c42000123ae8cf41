"""The load player: pre-rendered calls played on the wall clock to the real AMI listener."""

from __future__ import annotations

import asyncio
import calendar
import json
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from contracts.config import Settings
from contracts.envelope import Envelope
from contracts.profile import DEFAULT_PROFILE
from contracts.records import CallRecord
from enrich.calls import CallBuilder
from ingest.ami import AmiListener
from simulator import SimulatorConfig, render
from simulator.player import Player, prerender, serve_player

pytestmark = pytest.mark.integration

SHORT_KINDS = ("in_answered", "in_recorded", "in_forward_unconditional", "in_queue_answered",
               "in_busy", "in_unavailable", "out_national", "out_mobile", "out_international",
               "out_busy", "out_congestion", "out_blocked", "internal_answered", "internal_busy")
FIELDS = ("direction", "caller", "called", "answered", "first_answered_by", "last_answered_by",
          "status", "transferred", "forwarded", "queue")


def short_calls(n: int, rate: float, **kw: object) -> SimulatorConfig:
    """Calls of at most ~4 s, so a test plays them in real time quickly."""
    return SimulatorConfig(total_calls=n, calls_per_second=rate, seed=7, max_concurrency=10_000,
                           mix=dict.fromkeys(SHORT_KINDS, 1.0), talk_time="uniform:0.3:1",
                           ring_time="uniform:0.2:0.6", load_curve="flat", callback_probability=0,
                           redial_probability=0, secret="pl4yer", **kw)  # type: ignore[arg-type]


def test_prerendered_frames_are_the_simulators_stream() -> None:
    """Pre-rendering gives the very bytes render_capture writes after the login, one frame
    per event with its Timestamp located, due times ascending, and the same call records."""
    config = short_calls(25, 50.0, start_time=1.8e9)
    pre = prerender(config)
    rendered = render(config)
    body = rendered.capture.split(b"Event: FullyBooted", 1)[1]
    assert bytes(pre.buf) == body[body.index(b"\r\n\r\n") + 4:]
    assert pre.events == rendered.events and pre.calls == 25
    assert [json.loads(line) for line in pre.manifest.decode().splitlines()] == rendered.calls
    assert list(pre.due) == sorted(pre.due) and pre.due[0] >= 0
    for k in range(pre.events):
        stamp = bytes(pre.buf[pre.stamp_at[k]:pre.stamp_end[k]])
        assert float(stamp) == pytest.approx(pre.virtual_start + pre.due[k], abs=1e-6)
    assert pre.cdr and all(len(slots) >= 2 for slots in pre.cdr.values())  # Start and End at least


def test_calls_through_the_real_listener_give_the_manifests_records(tmp_path: Path) -> None:
    """40 calls at 40 calls/s to the real AmiListener with its filters: the enriched records
    equal the manifest's (times moved to the wall clock), every Timestamp is the moment the
    event was written (never after it arrived, and a record's end is its last Hangup's arrival),
    Cdr times are real too, the filtered event types never arrive, and the events go out in
    few large writes."""
    manifest = tmp_path / "placed.jsonl"
    config = short_calls(40, 40.0, manifest_path=str(manifest))
    envelopes: list[Envelope] = []
    quarantined: list[object] = []

    async def main() -> Player:
        player = await serve_player(config, tick_s=0.005, settle_s=0.2)
        settings = Settings(ami_port=player.port, ami_secret="pl4yer", ami_max_retries=0)
        listener = AmiListener(settings, envelopes.append, quarantined.append)
        reading = asyncio.create_task(listener.run())
        try:
            await asyncio.wait_for(player.done.wait(), 15)
            await asyncio.sleep(0.2)  # the last write reaches the reader
        finally:
            await listener.stop()
            await reading
            await player.close()
        return player

    player = asyncio.run(main())
    stats = player.stats
    assert not quarantined and stats["calls"] == 40 and stats["clients_dropped"] == 0
    events = [e for e in envelopes if e.is_event and e.name != "FullyBooted"]
    assert len(events) == stats["frames_sent"]
    assert stats["writes"] * 4 < stats["frames_sent"]
    names = {e.name for e in events}
    assert not names & {"Newexten", "DeviceStateChange", "NewAccountCode", "QueueMemberStatus"}
    assert all(dict(e.headers)["Variable"] == "MIXMONITOR_FILENAME"
               for e in events if e.name == "VarSet")
    stamps = [float(dict(e.headers)["Timestamp"]) for e in events]
    assert stamps == sorted(stamps)
    assert all(e.recv_time - s >= -0.001 for e, s in zip(events, stamps, strict=True))
    assert stamps[0] >= stats["wall_start"] - 0.001
    shift = stats["cdr_shift_s"]
    assert abs(shift - (stats["wall_start"] - stats["virtual_start"])) <= 0.5
    cdr_ends = [calendar.timegm(time.strptime(e.get("EndTime") or "", "%Y-%m-%d %H:%M:%S"))
                for e in events if e.name == "Cdr"]
    assert cdr_ends == [player.pre.cdr[k][-1][2] + shift for k in sorted(player.pre.cdr)]

    builder = CallBuilder(DEFAULT_PROFILE, pbx_id="pbx1", grace_s=0.1)
    outputs = [o for e in envelopes for o in builder.feed(e)] + builder.flush()
    records = {r.linkedid: r for r in outputs if isinstance(r, CallRecord)}
    placed = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    assert len(placed) == 40
    assert sorted(records) == sorted(p["linkedid"] for p in placed)
    offset = stats["wall_start"] - stats["virtual_start"]
    last_hangup = {e.get("Linkedid"): e.recv_time for e in events if e.name == "Hangup"}
    for p in placed:
        got = records[p["linkedid"]]
        for f in FIELDS:
            assert getattr(got, f) == (tuple(p[f]) if isinstance(p[f], list) else p[f]), (p["kind"], f)
        assert not got.incomplete
        assert got.end == pytest.approx(p["end"] + offset, abs=0.25), p["kind"]
        assert got.duration_s == pytest.approx(p["duration_s"], abs=0.25), p["kind"]
        assert -0.001 <= last_hangup[p["linkedid"]] - got.end < 1.0  # end: rounded to ms


def test_a_player_that_falls_behind_says_so() -> None:
    """The event loop blocked for 0.4 s mid-run: the player counts the late events, logs it
    once, and its figures say it did not keep up."""
    config = short_calls(30, 30.0, wait_for_client=False)

    async def main() -> Player:
        player = Player(config, prerender(config), tick_s=0.005)
        await player.start()
        asyncio.get_running_loop().call_later(0.3, time.sleep, 0.4)
        try:
            await asyncio.wait_for(player.done.wait(), 15)
        finally:
            await player.close()
        return player

    with capture_logs() as logs:
        player = asyncio.run(main())
    assert player.stats["late_events"] > 0 and not player.stats["kept_up"]
    assert player.stats["lag_max_s"] >= 0.3
    assert [entry["event"] for entry in logs].count("player_behind_schedule") == 1
