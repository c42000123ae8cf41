"""`pbxpipe every`: run a one-shot pbxpipe job on a schedule, observable by Prometheus.

One-shot commands (``retention apply``, ``retention export-due``) exit before Prometheus scrapes
them, so this long-running process runs each as a child and keeps, on its /metrics,
``pbxpipe_retention_job_runs_total{job,result}`` and
``pbxpipe_retention_job_last_success_timestamp_seconds{job}`` — what the "job not run" alert reads —
and the gauges the job itself set (``contracts.metrics.JOB_GAUGES``: reconcile's completeness),
handed over in a file (``pbxpipe.ops.JOB_METRICS_FILE``) after each run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Annotated, Optional

import structlog
import typer

from contracts import metrics
from pbxpipe.app import command_settings

PBXPIPE = [sys.executable, "-c", "from pbxpipe.cli import main; main()"]


def every(
    interval_s: Annotated[float, typer.Argument(help="Seconds between the starts of two runs.")],
    command: Annotated[list[str], typer.Argument(help="The pbxpipe command to run, after `--`.")],
    job: Annotated[str, typer.Option(help="Job label on the metrics, e.g. apply, export_due.")] = "",
    runs: Annotated[int, typer.Option(help="Stop after this many runs (0: forever).")] = 0,
    timeout_s: Annotated[float, typer.Option(help="Kill a run that takes longer than this.")] = 3600.0,
    metrics_port: Annotated[Optional[int], typer.Option(help="Serve /metrics, /healthz, /readyz here [PBXPIPE_METRICS_PORT].")] = None,
    log_format: Annotated[Optional[str], typer.Option(help="auto | json | console [PBXPIPE_LOG_FORMAT].")] = None,
) -> None:
    """Run `pbxpipe COMMAND…` now and every INTERVAL_S seconds, counting results for Prometheus.

    Example: ``pbxpipe every 86400 --job apply -- retention apply``.
    """
    from pbxpipe.ops import JOB_METRICS_FILE, read_job_metrics, start_ops

    settings = command_settings(metrics_port=metrics_port, log_format=log_format)
    if command and command[0] == "--":  # click keeps the separator once options stop
        command = command[1:]
    job = job or "_".join(command[:2]).replace("-", "_")
    log = structlog.get_logger("pbxpipe.every").bind(job=job)
    last_ok = {"at": 0.0}

    def ready() -> tuple[bool, str]:  # ready once the job has succeeded within two intervals
        if time.time() - last_ok["at"] <= 2 * interval_s:
            return True, "ok"
        return False, f"job {job} has not succeeded in the last {2 * interval_s:g} s"

    start_ops(settings, "jobs", ready)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    job_metrics = tempfile.NamedTemporaryFile(prefix=f"pbxpipe-{job}-", suffix=".prom",
                                              delete=False)
    job_metrics.close()
    env = {**os.environ, JOB_METRICS_FILE: job_metrics.name}
    n = 0
    while not stop.is_set():
        started = time.time()
        try:
            child = subprocess.run([*PBXPIPE, *command], timeout=timeout_s,
                                   stdin=subprocess.DEVNULL, env=env)
            code: int | str = child.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        gauges = read_job_metrics(job_metrics.name)  # the job's own (reconcile's completeness)
        result = "success" if code == 0 else "failure"
        metrics.RETENTION_JOB_RUNS.labels(job, result).inc()
        if code == 0:
            last_ok["at"] = time.time()
            metrics.RETENTION_JOB_SUCCESS.labels(job).set(last_ok["at"])
        (log.info if code == 0 else log.error)("job_finished", result=result, exit=code,
                                               seconds=round(time.time() - started, 3),
                                               gauges=gauges)
        n += 1
        if runs and n >= runs:
            break
        stop.wait(max(0.0, started + interval_s - time.time()))
    os.unlink(job_metrics.name)


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_interspersed_args": False})(every)
