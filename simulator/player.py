"""A fast AMI load player: every call rendered first, then placed at a steady rate on the wall clock.

The simulator (``server.py``) builds each call while it plays and tops out near 17 calls/s here.
The player renders the same seeded stream before the clock starts (``prerender``), then only
stamps and writes bytes: calls start at ``calls_per_second``, each event goes out at its scheduled
offset, all events due within a tick (5 ms) in one write per client. The AMI side — banner, Login,
Events, Filter (as Asterisk applies them), Ping, Logoff, dropping a client that falls too far
behind — is the simulator's own session code (``Simulator`` with the playing loop replaced);
CoreShowChannels lists no channels.

Times: each ``Timestamp`` is rewritten to the moment its event is written, so a record's ``end``
is the real wall-clock hangup; a Cdr's ``StartTime``/``AnswerTime``/``EndTime`` move by one whole
number of seconds for the whole run, which keeps their order within a call. The manifest holds
each call's expected record as rendered (virtual times: ``virtual_start`` maps to ``wall_start``
in the status file). The status file (JSON) says ``ready`` once listening and ``finished`` with
the figures at the end, among them how far the player itself fell behind its schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import calendar
import contextlib
import dataclasses
import gc
import json
import os
import statistics
import sys
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

import structlog

from contracts.errors import ConfigError
from simulator.ami import render_frame
from simulator.schedule import Emitted
from simulator.server import Client, Simulator, SimulatorConfig, call_stream

log = structlog.get_logger("simulator.player")

_STAMP = b"\r\nTimestamp: "
_CDR_TIMES = (b"\r\nStartTime: ", b"\r\nAnswerTime: ", b"\r\nEndTime: ")
LATE_S = 0.1  # an event written later than this after its due time counts as late


@dataclass(slots=True)
class Prerendered:
    """The whole run as bytes and offsets: frame ``k`` is ``buf[bounds[k]:bounds[k + 1]]``."""

    buf: bytearray  # every frame back to back, exactly as render_frame writes it
    bounds: array  # type: ignore[type-arg]  # 'Q': frame starts, and the end of the last
    stamp_at: array  # type: ignore[type-arg]  # 'Q': where each frame's Timestamp value starts
    stamp_end: array  # type: ignore[type-arg]  # 'Q': and ends
    due: array  # type: ignore[type-arg]  # 'd': real seconds after the clock starts, ascending
    cdr: dict[int, tuple[tuple[int, int, int], ...]]  # frame -> (value start, end, virtual epoch s)
    finished_at: array  # type: ignore[type-arg]  # 'Q': the frame that completes each call, in order
    manifest: bytearray  # each call's expected record as a JSON line, same order
    manifest_bounds: array  # type: ignore[type-arg]  # 'Q': call n is manifest[b[n]:b[n + 1]]
    virtual_start: float  # the virtual epoch of due 0
    speed: float

    @property
    def events(self) -> int:
        return len(self.due)

    @property
    def calls(self) -> int:
        return len(self.manifest_bounds) - 1


def prerender(config: SimulatorConfig) -> Prerendered:
    """Render every call of ``config`` (``total_calls`` > 0) with where its times sit.

    Only bytes and arrays outlive the rendering: a small object kept per call or per Cdr among
    the millions freed would pin their memory arenas (gigabytes of RSS for the whole run)."""
    config.validate()
    if config.total_calls <= 0:
        raise ConfigError("player: needs total_calls > 0")
    start = config.start_time or float(int(time.time()))
    buf = bytearray()
    bounds, stamp_at, stamp_end = array("Q", [0]), array("Q"), array("Q")
    due = array("d")
    cdr_slots = array("Q")  # frame, value start, value end, virtual epoch: four per time
    finished_at = array("Q")
    manifest, manifest_bounds = bytearray(), array("Q", [0])
    parsed: dict[bytes, int] = {}
    collecting = gc.isenabled()
    gc.disable()  # millions of small acyclic tuples, as in render()
    try:
        for item in call_stream(config, start):
            if not isinstance(item, Emitted):
                finished_at.append(len(due) - 1)
                manifest += json.dumps(item.call.expected, ensure_ascii=False).encode() + b"\n"
                manifest_bounds.append(len(manifest))
                continue
            frame = render_frame(item.headers)
            base = len(buf)
            at = frame.find(_STAMP)
            if at < 0:
                raise ValueError(f"player: a {item.headers[0][1]} event without Timestamp")
            at += len(_STAMP)
            stamp_at.append(base + at)
            stamp_end.append(base + frame.index(b"\r\n", at))
            if item.headers[0][1] == "Cdr":
                for key in _CDR_TIMES:
                    i = frame.find(key)
                    if i < 0:
                        continue
                    i += len(key)
                    j = frame.index(b"\r\n", i)
                    if j > i:  # AnswerTime is empty for a call nobody answered
                        value = frame[i:j]
                        epoch = parsed.get(value)
                        if epoch is None:
                            epoch = parsed[value] = calendar.timegm(
                                time.strptime(value.decode(), "%Y-%m-%d %H:%M:%S"))
                        cdr_slots.extend((len(due), base + i, base + j, epoch))
            buf += frame
            bounds.append(len(buf))
            due.append((item.ts - start) / config.speed)
    finally:
        if collecting:
            gc.enable()
    cdr: dict[int, tuple[tuple[int, int, int], ...]] = {}
    for n in range(0, len(cdr_slots), 4):
        k, a, b, epoch = cdr_slots[n:n + 4]
        cdr[k] = (*cdr.get(k, ()), (a, b, epoch))
    return Prerendered(buf, bounds, stamp_at, stamp_end, due, cdr, finished_at, manifest,
                       manifest_bounds, start, config.speed)


def _privilege(text: str) -> str:
    """The ``Privilege`` value: the second line of every event this player sends."""
    line = text.split("\r\n", 2)[1]
    return line.partition(": ")[2]


@dataclass(slots=True)
class _Selection:
    """The frames one set of event filters lets through, decided once per frame: the sorted
    indices of those kept, computed up to ``upto`` (ranges never asked for are skipped)."""

    filters: Client  # a detached copy of a client's filter state
    kept: array = field(default_factory=lambda: array("Q"))  # type: ignore[type-arg]
    upto: int = 0

    def fill(self, pre: Prerendered, start: int, end: int) -> None:
        self.upto = max(self.upto, start)
        if end <= self.upto:
            return
        buf, bounds, wants, kept = pre.buf, pre.bounds, self.filters.wants, self.kept
        for k in range(self.upto, end):
            text = buf[bounds[k]:bounds[k + 1] - 2].decode("utf-8")  # frame_text: no final blank line
            if wants(_privilege(text), text):
                kept.append(k)
        self.upto = end

    def between(self, start: int, end: int) -> array:  # type: ignore[type-arg]
        kept = self.kept
        return kept[bisect.bisect_left(kept, start):bisect.bisect_left(kept, end)]


def _signature(c: Client) -> tuple[Any, ...]:
    return (c.classes, tuple(rx.pattern for rx in c.includes), tuple(rx.pattern for rx in c.excludes))


class Player(Simulator):
    """A running player: ``port``, ``done``, ``stats`` (set when finished), ``close()``."""

    def __init__(self, config: SimulatorConfig, pre: Prerendered, *, tick_s: float = 0.005,
                 settle_s: float = 0.3, status_path: str = "") -> None:
        super().__init__(config)
        self.pre = pre
        self.tick_s = tick_s
        self.settle_s = settle_s  # after the first Login: time for the client's Filter actions
        self.status_path = status_path
        self.stats: dict[str, Any] = {}
        self._selections: dict[tuple[Any, ...], _Selection] = {}
        self._view = memoryview(pre.buf)
        self._cdr_text: dict[int, bytes] = {}

    def now(self) -> float:
        """The wall clock (Ping's Timestamp): every time the player sends is real."""
        return time.time()

    async def start(self) -> None:
        await super().start()
        self._status({"state": "ready", "port": self.port, "calls": self.pre.calls,
                      "events": self.pre.events})

    def _status(self, data: dict[str, Any]) -> None:
        if not self.status_path:
            return
        tmp = f"{self.status_path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, self.status_path)

    def _selection(self, c: Client) -> _Selection:
        sig = _signature(c)
        sel = self._selections.get(sig)
        if sel is None:
            detached = dataclasses.replace(c, authenticated=True, events=True,
                                           includes=list(c.includes), excludes=list(c.excludes))
            sel = self._selections[sig] = _Selection(detached)
        return sel

    def _receivers(self) -> list[Client]:
        return [c for c in self._clients if c.authenticated and c.events and not c.closed]

    # ---------------------------------------------------------------- the clock

    async def _player(self) -> None:
        try:
            await self._play()
        except Exception as e:  # the status file and the log say so; waiters are released
            log.exception("player_failed")
            self._status({"state": "failed", "error": f"{type(e).__name__}: {e}"})
            raise
        finally:
            self.done.set()

    async def _play(self) -> None:
        pre = self.pre
        await self._go.wait()
        if self.config.wait_for_client:
            await asyncio.sleep(self.settle_s)
        # the filters of the clients logged in by now are applied before the clock starts
        for c in self._receivers():
            await asyncio.to_thread(self._selection(c).fill, pre, 0, pre.events)
        loop = asyncio.get_running_loop()
        due, n = pre.due, pre.events
        cpu0 = time.process_time()
        wall0, base = time.time(), loop.time()
        shift = round(wall0 - pre.virtual_start)  # Cdr times: whole seconds, order kept
        self._status({"state": "playing", "port": self.port, "wall_start": wall0})
        lags: list[float] = []
        late = writes = sent = 0
        prev_wall = 0.0
        i = fin = 0
        warned = False
        while i < n:
            elapsed = loop.time() - base
            j = bisect.bisect_right(due, elapsed, i)
            if j > i:
                wall = time.time()
                lag = elapsed - due[i]
                lags.append(lag)
                if lag > LATE_S:
                    late += bisect.bisect_left(due, elapsed - LATE_S, i, j) - i
                    if not warned:
                        warned = True
                        log.warning("player_behind_schedule", lag_s=round(lag, 3), frame=i)
                for c in self._receivers():
                    sel = self._selection(c)
                    sel.fill(pre, i, j)
                    chosen = sel.between(i, j)
                    if chosen:
                        self._send(c, self._chunk(chosen, wall, due[j - 1], prev_wall, shift))
                        writes += 1
                        sent += len(chosen)
                self.events_sent += j - i
                prev_wall = wall
                fin = self._finish_calls(fin, j)
                i = j
            if i < n:
                now = loop.time() - base
                await asyncio.sleep(max(due[i], now + self.tick_s) - now)
        played = loop.time() - base
        if self._manifest is not None:
            self._manifest.flush()
        self.stats = {
            "state": "finished", "port": self.port, "calls": pre.calls, "events": n,
            "frames_sent": sent, "writes": writes, "wall_start": wall0,
            "virtual_start": pre.virtual_start, "cdr_shift_s": shift, "played_s": round(played, 3),
            "scheduled_s": round(due[-1] if n else 0.0, 3), "cpu_s": round(time.process_time() - cpu0, 3),
            "lag_p50_s": round(statistics.median(lags), 4) if lags else 0.0,
            "lag_p99_s": round(sorted(lags)[int(0.99 * (len(lags) - 1))], 4) if lags else 0.0,
            "lag_max_s": round(max(lags), 4) if lags else 0.0,
            "late_events": late, "kept_up": late == 0, "clients_dropped": self.clients_dropped,
        }
        self._status(self.stats)
        log.info("player_finished", **{k: v for k, v in self.stats.items() if k != "state"})

    def _chunk(self, chosen: array, wall: float, last_due: float, floor: float,  # type: ignore[type-arg]
               shift: int) -> bytes:
        """The chosen frames as one write, each Timestamp the moment of writing: ``wall`` for the
        last event due, earlier ones by their scheduled gap, never before the previous write."""
        pre, view = self.pre, self._view
        bounds, stamp_at, stamp_end, due, cdr = pre.bounds, pre.stamp_at, pre.stamp_end, pre.due, pre.cdr
        parts: list[Any] = []
        add = parts.append
        for k in chosen:
            stamp = wall - (last_due - due[k])
            stamp = max(stamp, floor)
            add(view[bounds[k]:stamp_at[k]])
            add(b"%.6f" % stamp)
            pos = stamp_end[k]
            slots = cdr.get(k)
            if slots:
                for a, b, epoch in slots:
                    add(view[pos:a])
                    add(self._cdr_time(epoch + shift))
                    pos = b
            add(view[pos:bounds[k + 1]])
        return b"".join(parts)

    def _cdr_time(self, epoch: int) -> bytes:
        text = self._cdr_text.get(epoch)
        if text is None:
            text = self._cdr_text[epoch] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)).encode()
        return text

    def _finish_calls(self, fin: int, sent_upto: int) -> int:
        """Calls whose last frame is written: their records to the manifest, one write."""
        pre = self.pre
        end = bisect.bisect_left(pre.finished_at, sent_upto, fin)
        if end > fin:
            self.calls_finished += end - fin
            if self._manifest is not None:
                b = pre.manifest_bounds
                self._manifest.write(pre.manifest[b[fin]:b[end]].decode("utf-8"))
        return end


async def serve_player(config: SimulatorConfig, pre: Prerendered | None = None, **kw: Any) -> Player:
    """Render (unless given), then listen; the caller owns the player and must ``await close()``."""
    player = Player(config, pre if pre is not None else prerender(config), **kw)
    await player.start()
    return player


def run_player(config: SimulatorConfig, *, linger_s: float = 1.0, **kw: Any) -> None:
    """Blocking: render, serve, play; keep serving ``linger_s`` after the last event (or until
    interrupted), then close."""

    async def main() -> None:
        t = time.perf_counter()
        pre = prerender(config)
        log.info("player_rendered", calls=pre.calls, events=pre.events, bytes=len(pre.buf),
                 seconds=round(time.perf_counter() - t, 1))
        gc.collect()
        gc.freeze()  # what is left is kept for the run: no collection walks it mid-play
        player = await serve_player(config, pre, **kw)
        try:
            await player.done.wait()
            await asyncio.sleep(linger_s)
        finally:
            await player.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    from contracts.logs import configure_logging
    from simulator.scenarios import parse_mix

    p = argparse.ArgumentParser(prog="python -m simulator.player", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5038)
    p.add_argument("--username", default="pbxpipe")
    p.add_argument("--secret", default="pbxpipe")
    p.add_argument("--calls", type=int, required=True, help="calls to place")
    p.add_argument("--rate", type=float, default=500.0, help="calls started per second")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mix", default="", help="kind=weight,… (default: a business PBX)")
    p.add_argument("--talk-time", default="uniform:1:8")
    p.add_argument("--ring-time", default="uniform:2:15")
    p.add_argument("--concurrency", type=int, default=1_000_000, help="at most this many calls up at once")
    p.add_argument("--manifest", default="", help="JSON Lines of each placed call's expected record")
    p.add_argument("--status", default="", help="JSON file: ready (port), then the run's figures")
    p.add_argument("--tick-ms", type=float, default=5.0, help="events due within a tick go out in one write")
    p.add_argument("--linger", type=float, default=1.0, help="keep serving this long after the last event")
    p.add_argument("--log-format", default=os.environ.get("PBXPIPE_LOG_FORMAT", "auto"))
    a = p.parse_args(argv)
    configure_logging(a.log_format)
    try:
        config = SimulatorConfig(
            host=a.host, port=a.port, username=a.username, secret=a.secret, total_calls=a.calls,
            calls_per_second=a.rate, seed=a.seed, mix=parse_mix(a.mix) if a.mix else {},
            talk_time=a.talk_time, ring_time=a.ring_time, max_concurrency=a.concurrency,
            load_curve="flat", manifest_path=a.manifest)
        run_player(config, linger_s=a.linger, tick_s=a.tick_ms / 1000, status_path=a.status)
    except (ConfigError, ValueError) as e:
        print(f"player: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
