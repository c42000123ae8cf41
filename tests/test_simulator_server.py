"""The simulator's AMI server, spoken to with a raw asyncio client on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from simulator import Simulator, SimulatorConfig, render, serve

pytestmark = pytest.mark.integration

LOGIN = b"Action: Login\r\nActionID: l1\r\nUsername: pbxpipe\r\nSecret: pbxpipe\r\n\r\n"


class Client:
    """A bare AMI client: reads frames (blank-line separated), writes actions."""

    opened: list[Client] = []

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        Client.opened.append(self)

    @classmethod
    async def connect(cls, sim: Simulator) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        return cls(reader, writer)

    async def send(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    async def frame(self, timeout: float = 5.0) -> dict[str, str]:
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = raw.decode("utf-8")[:-4].split("\r\n")
        assert all(": " in line for line in lines), raw
        return dict(line.split(": ", 1) for line in lines)

    async def until(self, pred: Callable[[dict[str, str]], bool], timeout: float = 5.0) -> dict[str, str]:
        while True:
            f = await self.frame(timeout)
            if pred(f):
                return f

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def run(config: SimulatorConfig, body: Callable[[Simulator], Awaitable[None]]) -> None:
    async def main() -> None:
        sim = await serve(config)
        try:
            await asyncio.wait_for(body(sim), 15)
        finally:
            while Client.opened:
                await Client.opened.pop().close()
            await sim.close()

    asyncio.run(main())


def test_banner_login_ping_and_unknown_action() -> None:
    """Banner first; Login succeeds with FullyBooted; Ping answers Pong with a Timestamp; an
    unknown action is an error; ActionID is echoed."""

    async def body(sim: Simulator) -> None:
        c = await Client.connect(sim)
        assert await asyncio.wait_for(c.reader.readline(), 5) == b"Asterisk Call Manager/11.0.0\r\n"
        await c.send(b"Action: Ping\r\nActionID: early\r\n\r\n")
        assert await c.frame() == {"Response": "Error", "ActionID": "early", "Message": "Permission denied"}
        await c.send(LOGIN)
        assert await c.frame() == {"Response": "Success", "ActionID": "l1", "Message": "Authentication accepted"}
        assert (await c.frame())["Event"] == "FullyBooted"
        await c.send(b"Action: Ping\r\nActionID: p1\r\n\r\n")
        pong = await c.until(lambda f: f.get("ActionID") == "p1")
        assert list(pong) == ["Response", "ActionID", "Ping", "Timestamp"]
        assert pong["Ping"] == "Pong" and float(pong["Timestamp"]) > 1e9
        await c.send(b"Action: NoSuchThing\r\nActionID: x\r\n\r\n")
        err = await c.until(lambda f: f.get("ActionID") == "x")
        assert err == {"Response": "Error", "ActionID": "x", "Message": "Invalid/unknown command"}
        await c.send(b"Action: Logoff\r\n\r\n")
        assert (await c.until(lambda f: "Response" in f))["Response"] == "Goodbye"
        assert await asyncio.wait_for(c.reader.read(), 5) == b""
        await c.close()

    run(SimulatorConfig(total_calls=2, seed=1, speed=50, calls_per_second=5), body)


def test_wrong_secret_is_refused_and_the_connection_closed() -> None:
    """As Asterisk: Response Error / Authentication failed, then the server hangs up."""

    async def body(sim: Simulator) -> None:
        c = await Client.connect(sim)
        await c.reader.readline()
        await c.send(b"Action: Login\r\nActionID: l2\r\nUsername: pbxpipe\r\nSecret: nope\r\n\r\n")
        assert await c.frame() == {"Response": "Error", "ActionID": "l2", "Message": "Authentication failed"}
        assert await asyncio.wait_for(c.reader.read(), 5) == b""
        await c.close()

    run(SimulatorConfig(total_calls=1), body)


def test_twenty_calls_filtered_stream_and_manifest(tmp_path: Path) -> None:
    """20 calls at high speed: a ``!Event: VarSet`` filter keeps VarSet out, every other event
    arrives as render_capture writes it (same seed, same calls), and the manifest has one
    record per call, equal to the rendered calls' records."""
    manifest = tmp_path / "manifest.jsonl"
    config = SimulatorConfig(total_calls=20, seed=3, speed=3000, calls_per_second=100,
                             talk_time="uniform:5:120", manifest_path=str(manifest), start_time=1.8e9)
    received: list[bytes] = []

    async def body(sim: Simulator) -> None:
        c = await Client.connect(sim)
        await c.reader.readline()
        await c.send(LOGIN + b"Action: Filter\r\nActionID: f\r\nOperation: Add\r\nFilter: !Event: VarSet\r\n\r\n")
        await sim.done.wait()
        await c.send(b"Action: Logoff\r\n\r\n")
        data = await asyncio.wait_for(c.reader.read(), 5)
        received.extend(data.split(b"\r\n\r\n"))
        await c.close()

    run(config, body)
    events = [f for f in received if f.startswith(b"Event: ") and not f.startswith(b"Event: FullyBooted")]
    assert events and not [f for f in events if f.startswith(b"Event: VarSet")]
    rendered = render(config)
    offline = [f for f in rendered.capture.split(b"\r\n\r\n")
               if f.startswith(b"Event: ") and not f.startswith((b"Event: VarSet", b"Event: FullyBooted"))]
    assert events == offline
    records = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 20
    assert records == rendered.calls


def test_the_manifest_has_the_callbacks_the_server_played(tmp_path: Path) -> None:
    """Missed calls called back within the run: the server's manifest holds each callback's
    exact record, equal to what render gives for the same config."""
    manifest = tmp_path / "manifest.jsonl"
    config = SimulatorConfig(total_calls=40, seed=5, speed=3000, calls_per_second=100, start_time=1.8e9,
                             mix={"in_no_answer": 1, "in_answered": 1, "out_mobile": 1},
                             callback_probability=0.9, redial_probability=0.1, callback_delay="fixed:30",
                             redial_delay="fixed:30", manifest_path=str(manifest), wait_for_client=False)

    async def body(sim: Simulator) -> None:
        await sim.done.wait()

    run(config, body)
    records = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    assert records == render(config).calls
    follow_ups = [r for r in records if r["follow_up"]]
    assert len(follow_ups) >= 5 and {"callback", "redial"} <= {r["follow_up"] for r in follow_ups}


def test_include_filter_and_event_mask() -> None:
    """With an include filter only matching events pass; EventMask off stops them."""

    async def body(sim: Simulator) -> None:
        c = await Client.connect(sim)
        await c.reader.readline()
        await c.send(LOGIN + b"Action: Filter\r\nFilter: Event: (Newchannel|DialBegin)\r\n\r\n")
        names = []
        while len(names) < 30:
            f = await c.frame()
            if "Event" in f and f["Event"] != "FullyBooted":
                names.append(f["Event"])
        assert set(names) == {"Newchannel", "DialBegin"}
        await c.send(b"Action: Events\r\nActionID: e\r\nEventMask: off\r\n\r\n")
        assert (await c.until(lambda f: f.get("ActionID") == "e"))["Events"] == "Off"
        await c.send(b"Action: Ping\r\nActionID: p\r\n\r\n")
        await c.until(lambda f: f.get("ActionID") == "p")
        await c.send(b"Action: Logoff\r\n\r\n")
        rest = await asyncio.wait_for(c.reader.read(), 5)
        assert b"Event: " not in rest
        await c.close()

    run(SimulatorConfig(total_calls=30, seed=2, speed=2000, calls_per_second=100), body)


def test_core_show_channels_lists_the_channels_up_and_the_clock_runs_at_speed() -> None:
    """CoreShowChannels: Success/EventList start, one CoreShowChannel per channel up (with the
    ActionID), then CoreShowChannelsComplete with ListItems. Timestamps follow the virtual clock
    start_time + elapsed × speed."""
    start = 1.8e9

    async def body(sim: Simulator) -> None:
        c = await Client.connect(sim)
        await c.reader.readline()
        await c.send(LOGIN)
        first = await c.until(lambda f: f.get("Event") == "Newchannel")
        assert float(first["Timestamp"]) == pytest.approx(start, abs=2.0)
        await asyncio.sleep(0.3)
        await c.send(b"Action: CoreShowChannels\r\nActionID: cs\r\n\r\n")
        resp = await c.until(lambda f: f.get("ActionID") == "cs")
        assert resp == {"Response": "Success", "ActionID": "cs", "EventList": "start",
                        "Message": "Channels will follow"}
        items = []
        while True:
            f = await c.until(lambda f: f.get("ActionID") == "cs")
            if f["Event"] == "CoreShowChannelsComplete":
                break
            items.append(f)
        assert f["EventList"] == "Complete" and int(f["ListItems"]) == len(items) >= 1
        for item in items:
            assert item["Event"] == "CoreShowChannel"
            assert item["Channel"].startswith(("PJSIP/", "Local/"))
            assert item["Linkedid"] and item["Uniqueid"] and "Duration" in item and "BridgeId" in item
        await c.send(b"Action: Ping\r\nActionID: t1\r\n\r\n")
        t1 = float((await c.until(lambda f: f.get("ActionID") == "t1"))["Timestamp"])
        await asyncio.sleep(0.5)
        await c.send(b"Action: Ping\r\nActionID: t2\r\n\r\n")
        t2 = float((await c.until(lambda f: f.get("ActionID") == "t2"))["Timestamp"])
        assert t2 - t1 == pytest.approx(0.5 * 20, rel=0.4)
        await c.close()

    run(SimulatorConfig(total_calls=3, seed=1, speed=20, calls_per_second=10, talk_time="fixed:600",
                        ring_time="fixed:2", start_time=start, mix={"in_answered": 1}), body)


def test_a_slow_client_is_dropped_without_stalling_the_others() -> None:
    """A client that never reads is disconnected once its queue is full; a reading client still
    gets every event and the day finishes."""
    config = SimulatorConfig(total_calls=400, seed=6, speed=5000, calls_per_second=500, client_queue=2000,
                             max_concurrency=400)

    async def body(sim: Simulator) -> None:
        fast = await Client.connect(sim)
        await fast.reader.readline()
        await fast.send(LOGIN)  # the first login starts the day: this client sees all of it
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", sim.port))
        slow = Client(*await asyncio.open_connection(sock=sock))
        await slow.send(LOGIN)
        chunks = []

        async def drain() -> None:
            while chunk := await fast.reader.read(1 << 16):
                chunks.append(chunk)
                if sim.done.is_set() and b"ActionID: bye" in chunk:
                    break

        reading = asyncio.ensure_future(drain())
        await sim.done.wait()
        await fast.send(b"Action: Ping\r\nActionID: bye\r\n\r\n")
        await asyncio.wait_for(reading, 10)
        got = b"".join(chunks).count(b"\r\nTimestamp: ") - 1  # the Ping response has one too
        assert got == sim.events_sent
        # the slow client was cut off: what it can still read ends with EOF, short of everything
        assert sim.clients_dropped == 1
        tail = await asyncio.wait_for(slow.reader.read(), 10)
        assert tail.count(b"\r\nTimestamp: ") < got
        await slow.close()
        await fast.close()

    run(config, body)
