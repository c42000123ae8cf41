"""The operations endpoint: /healthz, /readyz from a callback, and /metrics that promtool accepts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from pbxpipe.ops import all_of, metric_is, start_ops_server
from prometheus_client import CollectorRegistry, Gauge
from tests.net import free_port

PBXPIPE = [sys.executable, "-c", "from pbxpipe.cli import main; main()"]
ENV = {"PATH": "/usr/bin:/bin:/usr/local/bin", "PBXPIPE_LOG_FORMAT": "json"}


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool missing: `make test` installs it (Debian package prometheus)"
    return path


def get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()



def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_health_is_liveness_and_readiness_comes_from_the_callback():
    """/healthz is always 200; /readyz is 200 or 503 with the callback's reason; unknown paths 404."""
    state = {"ready": False}
    server = start_ops_server(0, lambda: (state["ready"], "ok" if state["ready"] else "AMI down"),
                              host="127.0.0.1", registry=CollectorRegistry())
    try:
        assert get(server.port, "/healthz")[0] == 200
        assert get(server.port, "/readyz")[::2] == (503, "AMI down\n")
        state["ready"] = True
        assert get(server.port, "/readyz")[::2] == (200, "ok\n")
        assert get(server.port, "/nope")[0] == 404
    finally:
        server.close()


def test_a_failing_readiness_check_answers_503_not_an_error():
    """A callback that raises makes the process not ready; the endpoint itself keeps working."""

    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    server = start_ops_server(0, broken, host="127.0.0.1", registry=CollectorRegistry())
    try:
        status, _, body = get(server.port, "/readyz")
        assert status == 503 and "boom" in body
        assert get(server.port, "/healthz")[0] == 200
    finally:
        server.close()


def test_readiness_checks_read_the_metrics_the_stages_keep():
    """metric_is() is ready while the sample has the value; all_of() names every failing check."""
    registry = CollectorRegistry()
    connected = Gauge("x_connected", "", ["pbx"], registry=registry)
    ami = metric_is("x_connected", {"pbx": "a"}, 1, "AMI of a down", registry=registry)
    other = metric_is("x_connected", {"pbx": "b"}, 1, "AMI of b down", registry=registry)
    assert ami() == (False, "AMI of a down")  # no sample yet: not ready
    connected.labels("a").set(1)
    assert ami() == (True, "ok")
    assert all_of(ami, other)() == (False, "AMI of b down")
    connected.labels("b").set(1)
    assert all_of(ami, other)() == (True, "ok")


def test_metrics_serves_the_prometheus_text_format():
    """/metrics is the text exposition of the given registry."""
    registry = CollectorRegistry()
    Gauge("x_things", "Things.", registry=registry).set(3)
    server = start_ops_server(0, lambda: (True, "ok"), host="127.0.0.1", registry=registry)
    try:
        status, ctype, body = get(server.port, "/metrics")
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        assert "x_things 3.0" in body
    finally:
        server.close()


@pytest.mark.integration
def test_a_running_pipeline_exposes_metrics_promtool_accepts_and_follows_the_pbx(tmp_path):
    """`pbxpipe run --metrics-port`: ready once logged in to AMI; /metrics passes `promtool check
    metrics` and carries the pipeline's metrics (the PBX's business hours too); losing the PBX
    makes it unready, and the reconnection is counted as a gap."""
    ami, ops = free_port(), free_port()
    sim_cmd = [*PBXPIPE, "simulate", "--port", str(ami), "--calls", "0", "--rate", "20",
               "--speed", "100", "--seed", "3", "--talk", "uniform:1:20", "--secret", "opsS3cret"]
    sim = subprocess.Popen(sim_cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = subprocess.Popen(
        [*PBXPIPE, "run", "--ami-port", str(ami), "--ami-secret", "opsS3cret", "--clickhouse",
         f"chdb:///{tmp_path / 'ch'}", "--metrics-port", str(ops)],
        env={**ENV, "PBXPIPE_AMI_RECONNECT_MAX_S": "0.5", "PBXPIPE_PBX_TIMEZONE": "Asia/Tokyo",
             "PBXPIPE_BUSINESS_HOURS": "Mon-Sun 00:00-24:00"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: get(ops, "/readyz")[0] == 200, what="/readyz 200")
        wait_for(lambda: 'pbxpipe_store_rows_written_total{table="calls"}' in get(ops, "/metrics")[2],
                 what="calls written")
        text = get(ops, "/metrics")[2]
        lint = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True,
                              text=True, timeout=30)
        assert lint.returncode == 0, lint.stdout + lint.stderr
        for name in ("pbxpipe_ingest_events_total", "pbxpipe_ingest_ami_connected",
                     "pbxpipe_enrich_open_calls", "pbxpipe_enrich_calls_total",
                     "pbxpipe_store_insert_duration_seconds_bucket", "pbxpipe_store_batch_rows_bucket",
                     'pbxpipe_ops_ready{component="run"} 1.0', "pbxpipe_build_info",
                     'pbxpipe_ingest_pbx_open{pbx="pbx1"} 1.0',  # open all week
                     "process_start_time_seconds"):
            assert name in text, name
        assert get(ops, "/healthz")[0] == 200

        sim.kill()
        sim.wait()
        wait_for(lambda: get(ops, "/readyz")[0] == 503, what="/readyz 503 without the PBX")
        assert "not logged in" in get(ops, "/readyz")[2]
        sim = subprocess.Popen(sim_cmd, env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        wait_for(lambda: get(ops, "/readyz")[0] == 200, what="/readyz 200 after reconnecting")
        assert 'pbxpipe_ingest_gaps_total{kind="reconnect",pbx="pbx1"} 1.0' in get(ops, "/metrics")[2]
    finally:
        sim.kill()
        run.terminate()
        try:
            _, err = run.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            run.kill()
            _, err = run.communicate()
        sim.wait()
    assert "opsS3cret" not in err
