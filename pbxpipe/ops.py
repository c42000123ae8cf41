"""The operations endpoint every pbxpipe process serves: /metrics, /healthz and /readyz.

* ``/metrics`` — Prometheus text exposition of ``contracts.metrics.REGISTRY`` (plus the
  ``process_*`` metrics of this process);
* ``/healthz`` — 200 while the process is alive and its HTTP thread answers (liveness);
* ``/readyz`` — 200 or 503 from a readiness callback ``() -> (ready, reason)``, e.g. "AMI logged
  in" or "ClickHouse reachable" (readiness: take it out of rotation, do not restart it).

Commands call :func:`start_ops` once their settings are loaded and set ``server.readiness`` when
they know what "ready" means; :func:`metric_is` builds readiness checks from the metrics the
stages already maintain, so no stage needs a reference to the server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from typing import Any

import structlog
from prometheus_client import ProcessCollector, generate_latest
from prometheus_client.registry import CollectorRegistry

from contracts import metrics
from contracts.config import Settings
from contracts.logs import register_secrets, secret_values

Readiness = Callable[[], tuple[bool, str]]
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest() writes

log = structlog.get_logger("pbxpipe.ops")
_process_collector_lock = threading.Lock()
_process_collectors: set[int] = set()


def not_ready_yet() -> tuple[bool, str]:
    return False, "starting"


def always_ready() -> tuple[bool, str]:
    return True, "ok"


class OpsServer:
    """A small threaded HTTP server in a daemon thread; ``readiness`` may be replaced any time."""

    def __init__(self, port: int, readiness: Readiness = not_ready_yet, *,
                 host: str = "0.0.0.0", registry: CollectorRegistry = metrics.REGISTRY,
                 component: str = "pbxpipe") -> None:
        self.readiness = readiness
        self.registry = registry
        self.component = component
        self._ready_gauge = metrics.OPS_READY.labels(component) if registry is metrics.REGISTRY else None
        handler = type("Handler", (_Handler,), {"ops": self})
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="ops-http",
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def check(self) -> tuple[bool, str]:
        """The readiness callback's answer; a callback that raises means not ready."""
        try:
            ready, reason = self.readiness()
        except Exception as e:  # a broken check must not take the endpoint down
            ready, reason = False, f"readiness check failed: {type(e).__name__}: {e}"
        if self._ready_gauge is not None:
            self._ready_gauge.set(1 if ready else 0)
        return bool(ready), str(reason)


class _Handler(BaseHTTPRequestHandler):
    ops: OpsServer
    server_version = "pbxpipe-ops"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self.ops.check()  # keeps pbxpipe_ops_ready current at every scrape
            self._send(200, generate_latest(self.ops.registry), TEXT_FORMAT)
        elif path == "/healthz":
            self._send(200, b"ok\n")
        elif path == "/readyz":
            ready, reason = self.ops.check()
            self._send(200 if ready else 503, (reason + "\n").encode())
        else:
            self._send(404, b"not found: try /metrics, /healthz, /readyz\n")

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass


def start_ops_server(port: int, readiness: Readiness = not_ready_yet, *, host: str = "0.0.0.0",
                     registry: CollectorRegistry = metrics.REGISTRY,
                     component: str = "pbxpipe") -> OpsServer:
    """Serve /metrics, /healthz and /readyz on ``port`` (0: any free port, see ``.port``)."""
    if registry is metrics.REGISTRY:
        _add_process_collector(registry)
    return OpsServer(port, readiness, host=host, registry=registry, component=component).start()


def start_ops(settings: Settings, component: str,
              readiness: Readiness = not_ready_yet) -> OpsServer | None:
    """What every command calls once its settings are loaded: hides the secrets of ``settings``
    from the logs, labels the process in ``pbxpipe_build_info``, and serves the endpoint when
    ``metrics_port`` is set (else returns None). Set ``.readiness`` later if it is not known yet.
    """
    register_secrets(secret_values(settings))
    metrics.BUILD_INFO.labels(_version(), component).set(1)
    if component in ("ingest", "run") and settings.kafka_bootstrap:  # the spool's alert needs it
        metrics.INGEST_SPOOL_CAPACITY.labels(settings.pbx_id).set(settings.kafka_spool_max_bytes)
    if not settings.metrics_port:
        return None
    server = start_ops_server(settings.metrics_port, readiness, component=component)
    log.info("ops_endpoint_started", port=server.port, component=component)
    return server


def metric_is(name: str, labels: Mapping[str, str], value: float, reason: str,
              registry: CollectorRegistry = metrics.REGISTRY) -> Readiness:
    """A readiness check: ready while the sample ``name{labels}`` equals ``value``.

    ``metric_is("pbxpipe_ingest_ami_connected", {"pbx": "pbx1"}, 1, "AMI not logged in")``
    """

    def check() -> tuple[bool, str]:
        current = registry.get_sample_value(name, dict(labels))
        if current == value:
            return True, "ok"
        return False, reason

    return check


def all_of(*checks: Readiness) -> Readiness:
    """Ready when every check is; the reason names each failing one."""

    def check() -> tuple[bool, str]:
        failing = [reason for ready, reason in (c() for c in checks) if not ready]
        return (False, "; ".join(failing)) if failing else (True, "ok")

    return check


def ami_ready(pbx_id: str) -> Readiness:
    """Ready while logged in to the PBX's AMI (the ingest listener keeps the gauge)."""
    return metric_is("pbxpipe_ingest_ami_connected", {"pbx": pbx_id}, 1,
                     f"AMI of {pbx_id} not logged in")


def store_ready() -> Readiness:
    """Ready unless the store stage paused fetching because ClickHouse is down."""

    def check() -> tuple[bool, str]:
        paused = metrics.REGISTRY.get_sample_value("pbxpipe_store_fetch_paused")
        return (False, "ClickHouse unreachable, fetching paused") if paused else (True, "ok")

    return check


def _add_process_collector(registry: CollectorRegistry) -> None:
    with _process_collector_lock:
        if id(registry) in _process_collectors:
            return
        ProcessCollector(registry=registry)
        _process_collectors.add(id(registry))


def _version() -> str:
    try:
        return metadata.version("pbx-pipeline")
    except metadata.PackageNotFoundError:
        return "unknown"


JOB_METRICS_FILE = "PBXPIPE_JOB_METRICS_FILE"
"""Set by `pbxpipe every` for the job it runs: where the job leaves its gauges
(``contracts.metrics.JOB_GAUGES``) for the scheduler to serve; a one-shot job exits before any
scrape."""


def write_job_metrics(environ: Mapping[str, str] | None = None) -> None:
    """A job's last step: its gauges, written where `pbxpipe every` reads them (if it runs it)."""
    import os

    from prometheus_client import write_to_textfile

    path = (os.environ if environ is None else environ).get(JOB_METRICS_FILE)
    if path:
        names = [f.name for g in metrics.JOB_GAUGES for f in g.describe()]
        write_to_textfile(path, metrics.REGISTRY.restricted_registry(names))


def read_job_metrics(path: str) -> int:
    """What `pbxpipe every` does after each run: the job's gauges set on its own registry, so its
    /metrics shows them until the next run. Returns the samples taken."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return 0
    gauges = {f.name: g for g in metrics.JOB_GAUGES for f in g.describe()}
    n = 0
    for family in text_string_to_metric_families(text):
        gauge = gauges.get(family.name)
        if gauge is None:
            continue
        for sample in family.samples:
            (gauge.labels(**sample.labels) if sample.labels else gauge).set(sample.value)
            n += 1
    return n


def settings_table() -> str:
    """The operator's guide's settings table (docs/operations.md), from Settings and the comments
    in contracts/config.py: ``python -c "from pbxpipe.ops import settings_table as t; print(t())"``.
    """
    import inspect
    import re

    from contracts.config import Settings, env_name

    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for line in inspect.getsource(Settings).splitlines():
        m = re.match(r"\s{4}(\w+): [^=]+= (.+?)(?:\s+#\s*(.*))?$", line)
        if m and m.group(1) in Settings.__struct_fields__:
            default = repr(getattr(Settings(), m.group(1)))
            note = (m.group(3) or "").replace("|", "\\|")
            lines.append(f"| `{env_name(m.group(1))}` | `{default}` | {note} |")
    return "\n".join(lines)
