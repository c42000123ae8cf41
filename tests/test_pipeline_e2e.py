"""End to end: simulator -> AMI over TCP -> ingest -> enrich -> chDB -> `pbxpipe calls --format json`.

Every process is the real command, as an operator runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests.net import free_port, wait_listening

pytestmark = pytest.mark.integration

PBXPIPE = [sys.executable, "-c", "from pbxpipe.cli import main; main()"]
ENV = {"PATH": "/usr/bin:/bin", "PBXPIPE_LOG_FORMAT": "json"}
FIELDS = ("direction", "caller", "called", "answered", "first_answered_by", "last_answered_by",
          "status")




def pbxpipe(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PBXPIPE, *args], capture_output=True, text=True, timeout=timeout,
                          env=ENV)


def test_simulated_calls_arrive_in_the_call_history(tmp_path):
    """Each call the simulator placed is in ClickHouse once, as the simulator expects it."""
    port, manifest, dsn = free_port(), tmp_path / "placed.jsonl", f"chdb:///{tmp_path / 'ch'}"
    sim = subprocess.Popen(
        [*PBXPIPE, "simulate", "--port", str(port), "--calls", "60", "--rate", "30",
         "--speed", "200", "--seed", "11", "--talk", "uniform:5:120", "--manifest", str(manifest),
         "--secret", "s3cret"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        run = pbxpipe("run", "--ami-port", str(port), "--ami-user", "pbxpipe", "--ami-secret",
                      "s3cret", "--clickhouse", dsn, "--idle-exit", "2")
        assert run.returncode == 0, run.stderr[-2000:]
        assert "s3cret" not in run.stderr
        sim.wait(timeout=30)
    finally:
        sim.kill()
        sim.wait()
    placed = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(placed) == 60
    shown = pbxpipe("calls", "--clickhouse", dsn, "--format", "json", "--limit", "1000")
    assert shown.returncode == 0, shown.stderr
    stored = {r["call_id"]: r for r in json.loads(shown.stdout)}
    assert sorted(stored) == sorted(f"pbx1:{p['linkedid']}" for p in placed)
    kinds = set()
    for p in placed:
        got = stored[f"pbx1:{p['linkedid']}"]
        kinds.add(p["kind"])
        for f in FIELDS:
            assert got[f] == p[f], (p["kind"], f, got[f], p[f])
        for f in ("start", "end", "duration_s", "wait_s", "talk_s"):
            if p[f] is None:
                assert got[f] is None, (p["kind"], f)
            else:
                assert got[f] == pytest.approx(p[f], abs=1.0), (p["kind"], f)
        assert not got["incomplete"]
    assert len(kinds) >= 10  # the mix really exercised many kinds of call


def test_wrong_secret_is_one_clear_line_and_exit_2(tmp_path):
    port = free_port()
    sim = subprocess.Popen([*PBXPIPE, "simulate", "--port", str(port), "--calls", "1"],
                           env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        run = pbxpipe("run", "--ami-port", str(port), "--ami-secret", "wrong",
                      "--clickhouse", f"chdb:///{tmp_path}", timeout=60)
    finally:
        sim.kill()
        sim.wait()
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("pbxpipe: error:") and "wrong" not in last


def test_unreachable_pbx_gives_up_as_configured(tmp_path):
    run = pbxpipe("run", "--ami-port", str(free_port()), "--ami-max-retries", "0",
                  "--clickhouse", f"chdb:///{tmp_path}", timeout=60)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith("pbxpipe: error:")


def test_bad_configuration_is_a_clear_error(tmp_path):
    bad = subprocess.run([*PBXPIPE, "calls"], capture_output=True, text=True, timeout=60,
                         env={**ENV, "PBXPIPE_BATCH_ROWS": "many"})
    assert bad.returncode == 1 and "PBXPIPE_" in bad.stderr and "Traceback" not in bad.stderr
    profile = tmp_path / "p.toml"
    profile.write_text('pbx_id = "x"\n[[channels]]\npattern = "("\nrole = "trunk"\n')
    run = pbxpipe("replay", "--pbx-profile", str(profile), "--clickhouse",
                  f"chdb:///{tmp_path / 'ch'}", __file__)
    assert run.returncode == 1 and "invalid PBX profile" in run.stderr
