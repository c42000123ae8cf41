"""A fake Asterisk 22 on 127.0.0.1: the AMI protocol, and the simulated PBX's calls played on it.

``serve(config)`` starts the TCP server and the player; ``run_simulator(config)`` is the blocking
entry for the CLI; ``render_capture(config)`` writes the same calls as a raw AMI byte stream with
no socket (benchmarks, replay tests). A virtual clock, ``start_time + real_elapsed × speed``,
drives every ``Timestamp`` and every in-call delay. Each client has a bounded queue of frames: a
client that falls that far behind is disconnected, as Asterisk does on a write timeout, and never
stalls the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import structlog

from contracts.errors import ConfigError
from simulator.ami import BANNER, Headers, frame_text, fully_booted, render_frame
from simulator.scenarios import DEFAULT_MIX, CallGenerator, Distribution
from simulator.schedule import Emitted, Finished, LoadCurve, arrivals, parse_curve, play

log = structlog.get_logger("simulator")

RENDER_START = 1_767_600_000.0  # 2026-01-05 08:00:00 UTC, a Monday: render_capture's default day


class SimulatorConfig(msgspec.Struct, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port (see ``Simulator.port``)
    username: str = "pbxpipe"
    secret: str = "pbxpipe"
    calls_per_second: float = 2.0  # real time, on average over the run (over a day when forever)
    max_concurrency: int = 50
    total_calls: int = 0  # 0: forever
    seed: int = 0
    mix: dict[str, float] = {}  # call kind → weight; empty: DEFAULT_MIX
    talk_time: str = "exp:90"  # exp:<mean> | uniform:<lo>:<hi> | fixed:<s>
    ring_time: str = "uniform:2:15"
    speed: float = 1.0  # virtual seconds per real second
    start_time: float = 0.0  # virtual epoch of the first call; 0: now (render_capture: RENDER_START)
    # the day's shape: how busy each local hour of the virtual day is (see schedule.parse_curve)
    load_curve: str = "office"  # office | flat | 24 comma-separated weights, hours 00..23
    timezone: str = "Europe/Warsaw"  # the PBX's local time, for the load curve
    # who calls: a book of customers, a few of them calling (and being called) again and again
    customers: int = 120  # 0: every number is a one-off
    customer_skew: float = 0.5  # Zipf exponent of their popularity; 0: all alike
    unknown_callers: float = 0.1  # share of inbound calls from numbers not in the book
    book_destinations: float = 0.85  # share of national/mobile/international calls out to customers
    # after a missed inbound call: an employee calls back, or the customer calls again
    callback_probability: float = 0.6
    redial_probability: float = 0.15
    callback_delay: str = "exp:1800"  # virtual seconds after the missed call ended (at most 4 h)
    redial_delay: str = "exp:600"
    manifest_path: str = ""  # JSON Lines of each call's expected record, written as calls complete
    client_queue: int = 20_000  # frames a client may lag behind before it is disconnected
    wait_for_client: bool = True  # start the day when the first client has logged in

    def validate(self) -> None:
        """Raise ConfigError on a setting the simulator cannot run with."""
        if self.calls_per_second <= 0 or self.speed <= 0:
            raise ConfigError("simulator: calls_per_second and speed must be > 0")
        if self.customers < 0 or self.customer_skew < 0:
            raise ConfigError("simulator: customers and customer_skew must be >= 0")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"simulator: unknown time zone {self.timezone!r}") from None
        try:
            parse_curve(self.load_curve)
            Distribution.parse(self.talk_time)
            Distribution.parse(self.ring_time)
            CallGenerator(mix=self.mix or DEFAULT_MIX, customers=0, unknown_callers=self.unknown_callers,
                          book_destinations=self.book_destinations,
                          callback_probability=self.callback_probability,
                          redial_probability=self.redial_probability, callback_delay=self.callback_delay,
                          redial_delay=self.redial_delay)
        except ValueError as e:
            raise ConfigError(f"simulator: {e}") from None


def _generator(config: SimulatorConfig) -> CallGenerator:
    return CallGenerator(
        seed=config.seed, mix=config.mix or DEFAULT_MIX, talk_time=config.talk_time, ring_time=config.ring_time,
        customers=config.customers, customer_skew=config.customer_skew, unknown_callers=config.unknown_callers,
        book_destinations=config.book_destinations, callback_probability=config.callback_probability,
        redial_probability=config.redial_probability, callback_delay=config.callback_delay,
        redial_delay=config.redial_delay)


def load_curve(config: SimulatorConfig, start_time: float) -> LoadCurve:
    """The configured curve in the PBX's time zone, at its UTC offset on the day that starts at
    ``start_time`` (a run that crosses a DST change keeps that offset)."""
    offset = datetime.fromtimestamp(start_time, ZoneInfo(config.timezone)).utcoffset()
    return LoadCurve(parse_curve(config.load_curve), offset.total_seconds() if offset else 0.0)


def call_stream(config: SimulatorConfig, start_time: float) -> Iterator[Emitted | Finished]:
    """Every event of the configured calls in timestamp order, each call's end right after its
    last event (the server plays it, ``render`` and the load player render it)."""
    times = arrivals(load_curve(config, start_time), start=start_time, rate=config.calls_per_second / config.speed,
                     total=config.total_calls, rng=random.Random(f"arrivals:{config.seed}"))
    return play(_generator(config), times, max_concurrency=config.max_concurrency)


# ---------------------------------------------------------------------------- offline


@dataclass(frozen=True, slots=True)
class Rendered:
    capture: bytes
    calls: list[dict[str, Any]]  # each call's expected record, in completion order
    events: int


def render(config: SimulatorConfig) -> Rendered:
    """The configured calls as Asterisk would have sent them to one logged-in client."""
    config.validate()
    if config.total_calls <= 0:
        raise ConfigError("simulator: render_capture needs total_calls > 0")
    start = config.start_time or RENDER_START
    parts = [BANNER, render_frame((("Response", "Success"), ("Message", "Authentication accepted"))),
             render_frame(fully_booted())]
    calls: list[dict[str, Any]] = []
    n = 0
    # millions of small acyclic tuples: the cyclic collector would only cost a quarter of the time
    collecting = gc.isenabled()
    gc.disable()
    try:
        for item in call_stream(config, start):
            if isinstance(item, Emitted):
                parts.append(render_frame(item.headers))
                n += 1
            else:
                calls.append(item.call.expected)
    finally:
        if collecting:
            gc.enable()
    return Rendered(b"".join(parts), calls, n)


def render_capture(config: SimulatorConfig) -> bytes:
    """Banner, Login response and every event of ``total_calls`` calls, as raw AMI bytes."""
    return render(config).capture


# ---------------------------------------------------------------------------- AMI sessions


def _response(fields: list[tuple[str, str]], action_id: str | None) -> bytes:
    head = fields[:1]
    if action_id is not None:
        head.append(("ActionID", action_id))
    return render_frame(head + fields[1:])


@dataclass(slots=True)
class _Channel:
    headers: list[tuple[str, str]]
    created: float
    app: str = ""
    appdata: str = ""
    bridge: str = ""


_CHANNEL_EVENTS = frozenset({"Newchannel", "Newstate", "Newexten", "NewCallerid", "NewConnectedLine",
                             "NewAccountCode", "VarSet", "BridgeEnter", "BridgeLeave", "Hangup"})


class _Channels:
    """The channels currently up, as CoreShowChannels lists them, kept from the events played."""

    def __init__(self) -> None:
        self.by_id: dict[str, _Channel] = {}

    def update(self, ts: float, headers: Headers) -> None:
        name = headers[0][1]
        if name not in _CHANNEL_EVENTS:
            return
        keys = [k for k, _ in headers]
        try:
            i = keys.index("Channel")
        except ValueError:
            return
        block = list(headers[i:i + 14])
        uid = block[12][1]
        if name == "Hangup":
            self.by_id.pop(uid, None)
            return
        ch = self.by_id.get(uid)
        if ch is None:
            if name != "Newchannel":
                return
            ch = self.by_id[uid] = _Channel(block, ts)
        ch.headers = block
        if name == "Newexten":
            ch.app, ch.appdata = headers[-2][1], headers[-1][1]
        elif name == "BridgeEnter":
            ch.bridge = headers[3][1]
        elif name == "BridgeLeave":
            ch.bridge = ""

    def listing(self, now: float, action_id: str | None) -> list[bytes]:
        out = []
        for ch in self.by_id.values():
            secs = max(0, int(now - ch.created))
            fields = [("Event", "CoreShowChannel")]
            if action_id is not None:
                fields.append(("ActionID", action_id))
            fields += ch.headers
            fields += [("Application", ch.app), ("ApplicationData", ch.appdata),
                       ("Duration", f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"),
                       ("BridgeId", ch.bridge)]
            out.append(render_frame(fields))
        return out


_CLASS_RE = re.compile(r"[a-z]+")


@dataclass(eq=False)
class Client:
    """One AMI connection: its queue of frames to write, login, and the events it asked for."""

    writer: asyncio.StreamWriter
    queue: asyncio.Queue[bytes | None]
    peer: str
    authenticated: bool = False
    events: bool = True
    classes: frozenset[str] | None = None  # None: every class
    includes: list[re.Pattern[str]] = field(default_factory=list)
    excludes: list[re.Pattern[str]] = field(default_factory=list)
    closed: bool = False

    def wants(self, privilege: str, text: str) -> bool:
        if not (self.authenticated and self.events):
            return False
        if self.classes is not None and not (self.classes & set(_CLASS_RE.findall(privilege))):
            return False
        if self.includes and not any(rx.search(text) for rx in self.includes):
            return False
        return not any(rx.search(text) for rx in self.excludes)


class Simulator:
    """A running simulator: ``port``, ``done`` (set when every call has finished), ``close()``."""

    def __init__(self, config: SimulatorConfig) -> None:
        config.validate()
        self.config = config
        self.done = asyncio.Event()
        self.port = 0
        self.calls_finished = 0
        self.events_sent = 0
        self.clients_dropped = 0  # too slow: their queue filled up
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[Client] = set()  # sessions that may receive events
        self._conns: set[Client] = set()  # every open connection
        self._tasks: set[asyncio.Task[None]] = set()
        self._go = asyncio.Event()
        self._channels = _Channels()
        self._start_time = config.start_time or time.time()
        self._t0: float | None = None
        self._manifest: IO[str] | None = None

    # ---------------------------------------------------------------- clock

    def now(self) -> float:
        """The virtual clock: ``start_time + real_elapsed × speed`` (frozen before the day starts)."""
        if self._t0 is None:
            return self._start_time
        return self._start_time + (asyncio.get_running_loop().time() - self._t0) * self.config.speed

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self.config.manifest_path:
            path = Path(self.config.manifest_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._manifest = path.open("w", encoding="utf-8")  # noqa: ASYNC230 - once, a local file
        self._server = await asyncio.start_server(self._serve_client, self.config.host, self.config.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._spawn(self._player())
        if not self.config.wait_for_client:
            self._go.set()
        log.info("simulator_started", host=self.config.host, port=self.port, seed=self.config.seed,
                 total_calls=self.config.total_calls, speed=self.config.speed, load_curve=self.config.load_curve,
                 customers=self.config.customers)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for c in list(self._conns):
            self._drop(c)
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        if self._manifest is not None:
            self._manifest.close()
            self._manifest = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---------------------------------------------------------------- the player

    async def _player(self) -> None:
        await self._go.wait()
        loop = asyncio.get_running_loop()
        if not self.config.start_time:
            self._start_time = time.time()
        self._t0 = loop.time()
        speed = self.config.speed
        start = self._start_time
        burst = 0
        for item in call_stream(self.config, start):
            if isinstance(item, Finished):
                self.calls_finished += 1
                if self._manifest is not None:
                    self._manifest.write(json.dumps(item.call.expected, ensure_ascii=False) + "\n")
                    self._manifest.flush()
                continue
            delay = self._t0 + (item.ts - start) / speed - loop.time()
            if delay > 0.002:
                burst = 0
                await asyncio.sleep(delay)
            else:
                burst += 1
                if burst >= 200:  # let the writers run when many events are due at once
                    burst = 0
                    await asyncio.sleep(0)
            self._channels.update(item.ts, item.headers)
            self._broadcast(item.headers)
        self.done.set()
        log.info("simulator_day_finished", calls=self.calls_finished, events=self.events_sent)

    def _broadcast(self, headers: Headers) -> None:
        self.events_sent += 1
        if not self._clients:
            return
        text = frame_text(headers)
        frame = text.encode("utf-8") + b"\r\n"
        privilege = headers[1][1]
        for c in list(self._clients):
            if c.wants(privilege, text):
                self._send(c, frame)

    def _send(self, c: Client, frame: bytes) -> None:
        if c.closed:
            return
        try:
            c.queue.put_nowait(frame)
        except asyncio.QueueFull:
            log.warning("client_disconnected_slow", peer=c.peer, queued=c.queue.qsize())
            self.clients_dropped += 1
            self._drop(c)

    def _drop(self, c: Client) -> None:
        if c.closed:
            return
        c.closed = True
        self._clients.discard(c)
        c.writer.close()

    # ---------------------------------------------------------------- sessions

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = "{}:{}".format(*writer.get_extra_info("peername")[:2])
        c = Client(writer, asyncio.Queue(maxsize=max(1, self.config.client_queue)), peer)
        self._clients.add(c)
        self._conns.add(c)
        writer_task = self._spawn(self._write_loop(c))
        self._send(c, BANNER)
        try:
            while not c.closed:
                action = await _read_action(reader)
                if action is None:
                    break
                self._handle(c, action)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            if not c.closed:
                # flush what is queued (a Logoff's Goodbye), then close
                with contextlib.suppress(asyncio.QueueFull):
                    c.queue.put_nowait(None)
                self._clients.discard(c)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(writer_task, timeout=5)
            self._drop(c)
            self._conns.discard(c)

    async def _write_loop(self, c: Client) -> None:
        try:
            while True:
                frame = await c.queue.get()
                if frame is None:
                    break
                chunk = [frame]
                while len(chunk) < 512 and not c.queue.empty():
                    nxt = c.queue.get_nowait()
                    if nxt is None:
                        c.writer.write(b"".join(chunk))
                        await c.writer.drain()
                        return
                    chunk.append(nxt)
                c.writer.write(b"".join(chunk))
                await c.writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            c.closed = True
            self._clients.discard(c)
            c.writer.close()

    def _handle(self, c: Client, action: dict[str, str]) -> None:
        name = action.get("action", "").lower()
        aid = action.get("actionid")
        if not c.authenticated and name not in ("login", "logoff", "challenge"):
            self._send(c, _response([("Response", "Error"), ("Message", "Permission denied")], aid))
            return
        if name == "login":
            if action.get("username") == self.config.username and action.get("secret") == self.config.secret:
                c.authenticated = True
                if action.get("events", "on").lower() == "off":
                    c.events = False
                self._send(c, _response([("Response", "Success"), ("Message", "Authentication accepted")], aid))
                if c.events:
                    self._send(c, render_frame(fully_booted()))
                log.info("client_logged_in", peer=c.peer)
                self._go.set()
            else:
                self._send(c, _response([("Response", "Error"), ("Message", "Authentication failed")], aid))
                log.warning("client_login_failed", peer=c.peer, username=action.get("username", ""))
                self._close_after_flush(c)
        elif name == "logoff":
            self._send(c, _response([("Response", "Goodbye"), ("Message", "Thanks for all the fish.")], aid))
            self._close_after_flush(c)
        elif name == "ping":
            self._send(c, _response([("Response", "Success"), ("Ping", "Pong"), ("Timestamp", f"{self.now():.6f}")],
                                    aid))
        elif name == "events":
            mask = action.get("eventmask", "on").strip().lower()
            if mask in ("on", "all", "yes", "true"):
                c.events, c.classes = True, None
            elif mask in ("off", "no", "false", "none"):
                c.events = False
            else:
                c.events, c.classes = True, frozenset(_CLASS_RE.findall(mask))
            self._send(c, _response([("Response", "Success"), ("Events", "On" if c.events else "Off")], aid))
        elif name == "filter":
            self._filter(c, action, aid)
        elif name == "coreshowchannels":
            self._send(c, _response([("Response", "Success"), ("EventList", "start"),
                                     ("Message", "Channels will follow")], aid))
            frames = self._channels.listing(self.now(), aid)
            for f in frames:
                self._send(c, f)
            done = [("Event", "CoreShowChannelsComplete")]
            if aid is not None:
                done.append(("ActionID", aid))
            done += [("EventList", "Complete"), ("ListItems", str(len(frames)))]
            self._send(c, render_frame(done))
        else:
            self._send(c, _response([("Response", "Error"), ("Message", "Invalid/unknown command")], aid))

    def _filter(self, c: Client, action: dict[str, str], aid: str | None) -> None:
        """Asterisk's event filters: a regex searched in the event text; ``!`` excludes; when any
        include filter exists only events matching one of them pass."""
        operation = action.get("operation", "Add").lower()
        expr = action.get("filter", "")
        if operation != "add" or not expr:
            self._send(c, _response([("Response", "Error"), ("Message", "Unknown operation")], aid))
            return
        exclude = expr.startswith("!")
        try:
            rx = re.compile(expr[1:] if exclude else expr)
        except re.error:
            self._send(c, _response([("Response", "Error"), ("Message", "Filter Not Added")], aid))
            return
        (c.excludes if exclude else c.includes).append(rx)
        self._send(c, _response([("Response", "Success"), ("Message", "Filter Added Successfully")], aid))

    def _close_after_flush(self, c: Client) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            c.queue.put_nowait(None)
        self._clients.discard(c)
        c.authenticated = False


async def _read_action(reader: asyncio.StreamReader) -> dict[str, str] | None:
    """One action: ``Key: value`` lines up to a blank line; keys lower-cased, first one wins."""
    out: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if not line:
            return None
        text = line.decode("utf-8", errors="replace").rstrip("\r\n")
        if not text:
            if out:
                return out
            continue
        key, sep, value = text.partition(":")
        if sep:
            out.setdefault(key.strip().lower(), value.strip())


async def serve(config: SimulatorConfig) -> Simulator:
    """Start the simulator; the caller owns it and must ``await sim.close()``."""
    sim = Simulator(config)
    await sim.start()
    return sim


def run_simulator(config: SimulatorConfig) -> None:
    """Blocking: serve until every call has finished (``total_calls`` > 0) or until interrupted."""

    async def main() -> None:
        sim = await serve(config)
        try:
            await sim.done.wait()
            await asyncio.sleep(0.5)  # let clients read the last events
        finally:
            await sim.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
