"""The commands end to end on the real capture: replay uploads the two real recordings, links
work, erasure removes a number's calls and recordings (subprocesses: one chDB directory each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CAPTURE, FIXTURES

pytestmark = pytest.mark.integration

PBXPIPE = [sys.executable, "-c", "from pbxpipe.cli import main; main()"]


def test_replay_uploads_recordings_then_erase_removes_them(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PBXPIPE_LOG_FORMAT": "json",
           "PBXPIPE_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'ch'}",
           "PBXPIPE_OBJECT_STORE": f"dir://{tmp_path / 'objects'}",
           "PBXPIPE_RECORDINGS_SPOOL": str(CAPTURE / "recordings"),
           "PBXPIPE_RECORDINGS_STABLE_S": "0.1"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*PBXPIPE, *args], capture_output=True, text=True, timeout=120, env=env)

    done = run("replay", str(CAPTURE / "ami_raw.log"), "--pbx-profile",
               str(FIXTURES / "asterisk_profile.toml"))
    assert done.returncode == 0, done.stderr
    wavs = sorted(p.name for p in (tmp_path / "objects").rglob("*.wav"))
    assert wavs == ["in-1795539359.189.wav", "out-1795539329.163.wav"]
    url = run("recordings", "url", "acme:1795539329.162")
    assert url.returncode == 0, url.stderr
    assert url.stdout.strip().startswith("file://") and url.stdout.strip().endswith("out-1795539329.163.wav")

    status = run("retention", "status")
    assert json.loads(status.stdout)["customers"][0]["calls"] == 26

    erased = run("erase", "--number", "+48 601 234 567")
    assert erased.returncode == 0, erased.stderr
    assert "erased 12 calls" in erased.stdout and "1 recordings" in erased.stdout
    assert sorted(p.name for p in (tmp_path / "objects").rglob("*.wav")) == ["in-1795539359.189.wav"]
    gone = run("recordings", "url", "acme:1795539329.162")
    assert gone.returncode == 1 and "no recording" in gone.stderr
    calls = json.loads(run("calls", "--format", "json").stdout)
    assert len(calls) == 14 and not any("601234567" in c["caller"] + c["called"] for c in calls)
