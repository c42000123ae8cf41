"""`pbxpipe every`: one-shot jobs on a schedule, their results counted for the retention alerts."""

from __future__ import annotations

import json
import subprocess
import sys

PBXPIPE = [sys.executable, "-c", "from pbxpipe.cli import main; main()"]
ENV = {"PATH": "/usr/bin:/bin", "PBXPIPE_LOG_FORMAT": "json"}


def every(*args: str) -> list[dict]:
    run = subprocess.run([*PBXPIPE, "every", *args], capture_output=True, text=True, timeout=60,
                         env=ENV)
    assert run.returncode == 0, run.stderr
    return [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]


def test_each_run_is_logged_with_its_result():
    """The command runs the given pbxpipe command --runs times; each run logs job_finished with
    the job label and success (exit 0) or failure (any other exit)."""
    ok = [e for e in every("--runs", "2", "--job", "probe", "0.05", "--", "--help")
          if e["event"] == "job_finished"]
    assert [(e["job"], e["result"], e["exit"]) for e in ok] == [("probe", "success", 0)] * 2
    bad = [e for e in every("--runs", "1", "0.05", "--", "no-such-command")
           if e["event"] == "job_finished"]
    assert [(e["job"], e["result"], e["level"]) for e in bad] == [("no_such_command", "failure", "error")]
