"""`pbxpipe reconcile` end to end on the PJSIP capture: replayed into chDB, compared with the
PBX's own CDR and CEL files (100%), then with calls removed and altered in the store (the
expected report), the missing ones written from the CDR, and the figures handed to `pbxpipe
every` for Prometheus (subprocesses: one chDB directory each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES

from contracts import metrics
from pbxpipe.ops import JOB_METRICS_FILE, read_job_metrics, write_job_metrics

pytestmark = pytest.mark.integration

PJSIP = FIXTURES / "asterisk-pjsip"
PBXPIPE = [sys.executable, "-c", "from pbxpipe.cli import main; main()"]
PYTHON = [sys.executable, "-c"]
CDR = ["--cdr", str(PJSIP / "cdr" / "Master.csv")]
CEL = ["--cel", str(PJSIP / "cel" / "Master.csv")]
EXPECTED = json.loads((PJSIP / "expected_calls.json").read_text())


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("reconcile")
    env = {"PATH": "/usr/bin:/bin", "PBXPIPE_LOG_FORMAT": "json",
           "PBXPIPE_CLICKHOUSE_DSN": f"chdb://{tmp / 'ch'}",
           "PBXPIPE_OBJECT_STORE": f"dir://{tmp / 'objects'}", "PBXPIPE_PBX_ID": "acme-pjsip",
           "PBXPIPE_PBX_PROFILE": str(PJSIP / "pjsip_profile.toml")}
    done = subprocess.run([*PBXPIPE, "replay", str(PJSIP / "ami_raw.log")], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PBXPIPE, *args], capture_output=True, text=True, timeout=120, env=env)


def sql(env: dict[str, str], *statements: str) -> None:
    code = ("import sys; from store.clickhouse import ClickHouseStore as S; "
            f"s = S.connect({env['PBXPIPE_CLICKHOUSE_DSN']!r}); "
            "[s.command(q, settings={'mutations_sync': 2}) for q in sys.argv[1:]]")
    done = subprocess.run([*PYTHON, code, *statements], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stderr


def report(env: dict[str, str], *args: str) -> dict:
    done = run(env, "reconcile", *CDR, "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def lid(scenario: str) -> str:
    return EXPECTED[scenario]["linkedid"]


def test_the_replayed_capture_is_complete_against_its_cdr_and_cel(env):
    """Every call in the PBX's Master.csv and CEL is stored exactly once: 100%, exit 0, a human
    summary; the run is kept in reconcile_runs."""
    done = run(env, "reconcile", *CDR, *CEL, "--check")
    assert done.returncode == 0, done.stderr
    assert "24 in the PBX's records, 24 stored" in done.stdout
    assert "completeness 100.00%: 24 exact, 0 missing, 0 phantoms, 0 differing" in done.stdout
    logged = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [e["completeness"] for e in logged if e["event"] == "calls_reconciled"] == [1.0]


def test_removed_and_altered_calls_are_reported_then_rebuilt(env):
    """Two calls deleted from the store are missing, one with another status and answerer
    differs field by field; --check fails naming the figures; --write-missing writes the
    missing calls from the CDR (built_from cdr) and the next run finds them exact."""
    p01, p17, p06 = (f"acme-pjsip:{lid(s)}" for s in (
        "p01_in_answered_101", "p17_internal_answered_101_to_103", "p06_ringgroup_102_answers"))
    sql(env, f"ALTER TABLE calls DELETE WHERE call_id IN ('{p01}', '{p17}')",
        "INSERT INTO calls SELECT * REPLACE (version + 1 AS version, 'missed' AS status, "
        f"NULL AS first_answered_by) FROM calls FINAL WHERE call_id = '{p06}'")
    got = report(env, *CEL)
    assert sorted(f["call_id"] for f in got["missing"]) == sorted([p01, p17])
    assert [(f["call_id"], [(d["field"], d["stored"], d["asterisk"]) for d in f["differences"]])
            for f in got["differing"]] == [(p06, [("first_answered_by", None, "102"),
                                                  ("status", "missed", "answered")])]
    assert (got["exact"], got["phantoms"], got["completeness"]) == (21, [], 21 / 24)
    checked = run(env, "reconcile", *CDR, "--check")
    assert checked.returncode == 1
    assert checked.stderr.strip().splitlines()[-1].startswith(
        "pbxpipe: error: acme-pjsip: completeness 87.50% (threshold 99.90%)")
    rebuilt = report(env, *CEL, "--write-missing")
    assert sorted(rebuilt["rebuilt"]) == sorted([p01, p17])
    again = report(env, *CEL)
    assert again["missing"] == [] and again["exact"] == 23 and again["from_cdr"] == 2
    sql(env, "INSERT INTO calls SELECT * REPLACE (version + 1 AS version, 'answered' AS status, "
             f"'102' AS first_answered_by) FROM calls FINAL WHERE call_id = '{p06}'")
    assert report(env)["completeness"] == 1.0


def test_a_phantom_and_the_period_given(env):
    """A stored call the PBX never had is a phantom within the period given; outside it, not
    judged."""
    p31 = f"acme-pjsip:{lid('p31_burst_in_101')}"
    ghost = "acme-pjsip:1796683800.999"
    sql(env, "INSERT INTO calls SELECT * REPLACE ('1796683800.999' AS linkedid, "
             f"'{ghost}' AS call_id) FROM (SELECT * FROM calls FINAL WHERE call_id = '{p31}')")
    try:
        got = report(env, "--since", "2026-12-07T22:48:00", "--until", "2026-12-07T23:00:00")
        assert [f["call_id"] for f in got["phantoms"]] == [ghost]
        assert report(env, "--since", "2026-12-07T22:48:00",
                      "--until", "2026-12-07T22:50:00")["phantoms"] == []
    finally:
        sql(env, f"ALTER TABLE calls DELETE WHERE call_id = '{ghost}'")


def test_bad_sources_are_one_line_errors(env, tmp_path):
    """A CDR file that is not there, no source at all, or a period that ends before it starts:
    `pbxpipe: error: …`, exit 1, no traceback."""
    for args, says in (
        (["--cdr", str(tmp_path / "none.csv")], "cannot read CDR file"),
        ([], "no CDR rows read"),
        ([*CDR, "--since", "2026-12-08", "--until", "2026-12-07"], "an empty period"),
    ):
        done = run(env, "reconcile", *args)
        assert done.returncode == 1, args
        assert done.stderr.strip().splitlines()[-1].startswith("pbxpipe: error: " + says), done.stderr
        assert "Traceback" not in done.stderr


def test_unreadable_rows_are_reported_and_the_rest_compared(env, tmp_path):
    """A broken line in the CDR file is counted in the report, with where and why, and logged
    once; the other rows are compared as usual."""
    lines = (PJSIP / "cdr" / "Master.csv").read_text().splitlines()
    broken = tmp_path / "Master.csv"
    broken.write_text("\n".join([*lines, '"half a row",', '"another","half"']) + "\n")
    done = run(env, "reconcile", "--cdr", str(broken), "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert [r["where"] for r in got["rejected"]] == ["Master.csv:37", "Master.csv:38"]
    assert got["completeness"] == 1.0
    logged = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert len([e for e in logged if e["event"] == "source_row_rejected"]) == 1


def test_every_hands_the_completeness_to_the_scheduler(env):
    """Under `pbxpipe every` the job's completeness gauges reach the scheduler's registry: its
    job_finished line counts the samples taken."""
    done = run(env, "every", "--runs", "1", "--job", "reconcile", "0.1", "--", "reconcile", *CDR)
    assert done.returncode == 0, done.stderr
    finished = [json.loads(line) for line in done.stderr.splitlines()
                if line.startswith("{") and '"job_finished"' in line]
    assert [(e["result"], e["gauges"] >= 10) for e in finished] == [("success", True)]


def test_job_gauges_written_by_a_job_are_read_back(tmp_path):
    """What a job writes (JOB_GAUGES only) the scheduler reads back into the same gauges."""
    path = tmp_path / "job.prom"
    metrics.RECONCILE_COMPLETENESS.labels("pbx-handoff").set(0.98)
    metrics.RECONCILE_CALLS.labels("pbx-handoff", "missing").set(7)
    write_job_metrics({JOB_METRICS_FILE: str(path)})
    text = path.read_text()
    assert "pbxpipe_reconcile_completeness_ratio" in text and "pbxpipe_store_" not in text
    metrics.RECONCILE_COMPLETENESS.labels("pbx-handoff").set(0)
    metrics.RECONCILE_CALLS.labels("pbx-handoff", "missing").set(0)
    assert read_job_metrics(str(path)) >= 2
    assert metrics.REGISTRY.get_sample_value("pbxpipe_reconcile_completeness_ratio",
                                             {"pbx": "pbx-handoff"}) == 0.98
    assert metrics.REGISTRY.get_sample_value("pbxpipe_reconcile_calls",
                                             {"pbx": "pbx-handoff", "outcome": "missing"}) == 7
    assert read_job_metrics(str(tmp_path / "absent.prom")) == 0
