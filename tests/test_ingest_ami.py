"""The live AMI listener against a small AMI server started by the test on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from contracts.config import Settings
from contracts.metrics import REGISTRY
from contracts.envelope import Envelope
from contracts.errors import AmiAuthError, AmiConnectError
from contracts.records import Quarantined
from ingest.ami import DEFAULT_FILTERS, AmiListener
from ingest.framing import AmiFramer

pytestmark = pytest.mark.integration

RAW = (Path(__file__).parent / "fixtures" / "asterisk" / "ami_raw.log").read_bytes()
SECRET = "s3cret-Żółć"
PUSHED = 200
ODD_SIZES = (1, 2, 3, 5, 7, 11, 13, 97, 1009, 4099)


def capture_frames(n: int) -> tuple[bytes, list]:
    """The first n frames of the capture: their exact bytes (no banner) and their headers."""
    body = RAW[RAW.index(b"\r\n") + 2 :]
    end = 0
    for _ in range(n):
        end = body.index(b"\r\n\r\n", end) + 4
    return body[:end], AmiFramer().feed(body[:end])


def reply(action_id: str, response: str = "Success", **headers: str) -> bytes:
    lines = [f"Response: {response}", f"ActionID: {action_id}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class FakeAmi:
    """Enough of Asterisk's AMI: banner, Login, Filter, Ping; then pushes bytes."""

    def __init__(
        self,
        *,
        push: bytes = b"",
        answer_ping: bool = True,
        close_first_connection: bool = False,
    ) -> None:
        self.push = push
        self.answer_ping = answer_ping
        self.close_first_connection = close_first_connection
        self.connections = 0
        self.actions: list[dict[str, str]] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> FakeAmi:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection = self.connections
        self._writers.add(writer)
        writer.write(b"Asterisk Call Manager/11.0.0\r\n")
        filters = 0
        try:
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                action = dict(
                    line.split(": ", 1) for line in raw.decode().split("\r\n") if ": " in line
                )
                self.actions.append(action)
                name, action_id = action["Action"].lower(), action.get("ActionID", "")
                if name == "login":
                    if action.get("Secret") != SECRET:
                        writer.write(reply(action_id, "Error", Message="Authentication failed"))
                        await writer.drain()
                        return
                    writer.write(reply(action_id, Message="Authentication accepted"))
                elif name == "filter":
                    writer.write(reply(action_id, Message="Filter Added Successfully"))
                    filters += 1
                    if filters == len(DEFAULT_FILTERS):
                        await writer.drain()
                        if connection == 1 and self.close_first_connection:
                            return
                        await self._push(writer)
                elif name == "ping":
                    if self.answer_ping:
                        writer.write(reply(action_id, Ping="Pong", Timestamp="1795539177.0"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _push(self, writer: asyncio.StreamWriter) -> None:
        """The pushed bytes in odd-sized writes, each flushed, so reads split anywhere."""
        i = 0
        for size in itertools.cycle(ODD_SIZES):
            if i >= len(self.push):
                break
            writer.write(self.push[i : i + size])
            await writer.drain()
            await asyncio.sleep(0)
            i += size


def make_settings(port: int, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        pbx_id="pbx-test", ami_host="127.0.0.1", ami_port=port, ami_user="pbxpipe",
        ami_secret=SECRET, ami_ping_interval_s=30.0, ami_ping_timeout_s=2.0,
        ami_reconnect_max_s=0.05, ami_max_retries=-1,
    )
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.005)


async def stopped(listener: AmiListener, task: Awaitable[None]) -> None:
    await listener.stop()
    await asyncio.wait_for(task, 5)


def test_listener_streams_the_capture_as_numbered_envelopes() -> None:
    """Login, the default filters, then 200 captured frames pushed in odd-sized pieces arrive
    as envelopes identical to the framed capture, seq 1..N over responses and events, one
    epoch, recv_time from the injected clock."""
    data, frames = capture_frames(PUSHED)
    ticks = itertools.count(1000)
    before = {(name, type): metric(name, type) for name, type in COUNTED}

    async def scenario() -> tuple[list[Envelope], list[Quarantined], FakeAmi]:
        envs: list[Envelope] = []
        bad: list[Quarantined] = []
        async with FakeAmi(push=data) as server:
            listener = AmiListener(
                make_settings(server.port), envs.append, bad.append,
                clock=lambda: float(next(ticks)),
            )
            task = asyncio.create_task(listener.run())
            await until(lambda: len(envs) >= 1 + len(DEFAULT_FILTERS) + PUSHED)
            await stopped(listener, task)
            assert listener.epoch == 1
            assert listener.banner == "Asterisk Call Manager/11.0.0"
        return envs, bad, server

    envs, bad, server = asyncio.run(scenario())
    assert bad == []
    login, *filters = server.actions[: 1 + len(DEFAULT_FILTERS)]
    assert (login["Action"], login["Username"], login["Secret"]) == ("Login", "pbxpipe", SECRET)
    assert [f["Filter"] for f in filters] == list(DEFAULT_FILTERS)
    assert all(f["Operation"] == "Add" for f in filters)
    replies = envs[: 1 + len(DEFAULT_FILTERS)]
    assert [e.get("ActionID") for e in replies] == [a["ActionID"] for a in [login, *filters]]
    assert [e.headers for e in envs[len(replies) :]] == frames
    assert [e.seq for e in envs] == list(range(1, len(envs) + 1))
    assert {(e.pbx_id, e.epoch) for e in envs} == {("pbx-test", 1)}
    times = [e.recv_time for e in envs]
    assert times == sorted(times) and times[0] >= 1000.0
    assert len(set(times)) < len(times)  # frames completed by one read share its time
    newchannels = sum(1 for f in frames if f[0] == ("Event", "Newchannel"))
    assert metric("pbxpipe_ingest_events_total", "Newchannel") - before[
        ("pbxpipe_ingest_events_total", "Newchannel")
    ] == newchannels
    assert metric("pbxpipe_ingest_received_bytes_total") - before[
        ("pbxpipe_ingest_received_bytes_total", None)
    ] >= len(data)
    assert metric("pbxpipe_ingest_ami_connected") == 0  # after stop()


COUNTED = [
    ("pbxpipe_ingest_events_total", "Newchannel"),
    ("pbxpipe_ingest_received_bytes_total", None),
]


def metric(name: str, type: str | None = None) -> float:
    labels = {"pbx": "pbx-test"} | ({"type": type} if type else {})
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_wrong_password_fails_fast_with_one_line_and_no_secret() -> None:
    """A refused login raises AmiAuthError at once (no retry), one line, the secret unsaid."""

    async def scenario() -> tuple[AmiAuthError, int, list[dict]]:
        async with FakeAmi() as server:
            settings = make_settings(server.port, ami_secret="wrong-secret")
            listener = AmiListener(settings, lambda e: None, lambda q: None)
            with capture_logs() as logs, pytest.raises(AmiAuthError) as caught:
                await asyncio.wait_for(listener.run(), 5)
            return caught.value, server.connections, logs

    t0 = time.monotonic()
    err, connections, logs = asyncio.run(scenario())
    assert time.monotonic() - t0 < 3
    assert connections == 1
    message = str(err)
    assert "\n" not in message and "refused" in message and "pbxpipe" in message
    assert "wrong-secret" not in message
    assert "wrong-secret" not in repr(logs)
    assert any(entry["event"] == "ami_login_failed" for entry in logs)


def test_unreachable_pbx_gives_up_after_max_retries() -> None:
    """Nothing listening and ami_max_retries=1: one retry, then AmiConnectError."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there

    async def scenario() -> AmiConnectError:
        listener = AmiListener(
            make_settings(port, ami_max_retries=1), lambda e: None, lambda q: None
        )
        with pytest.raises(AmiConnectError) as caught:
            await asyncio.wait_for(listener.run(), 5)
        assert listener.epoch == 0
        return caught.value

    err = asyncio.run(scenario())
    assert "2 failed attempt" in str(err) and "\n" not in str(err)


def test_a_closed_connection_is_reopened_with_the_next_epoch() -> None:
    """The PBX closes the connection: the listener logs in again, epoch 2, seq from 1."""

    async def scenario() -> tuple[list[Envelope], int]:
        envs: list[Envelope] = []
        async with FakeAmi(close_first_connection=True) as server:
            listener = AmiListener(make_settings(server.port), envs.append, lambda q: None)
            task = asyncio.create_task(listener.run())
            await until(lambda: any(e.epoch == 2 for e in envs))
            await stopped(listener, task)
            return envs, server.connections

    envs, connections = asyncio.run(scenario())
    assert connections == 2
    assert [(e.epoch, e.seq) for e in envs if e.epoch == 1] == [(1, 1), (1, 2), (1, 3)]
    assert envs[3].epoch == 2 and envs[3].seq == 1


def test_a_silent_pbx_is_dropped_when_ping_goes_unanswered() -> None:
    """No Pong within ami_ping_timeout_s: the connection is dropped and reopened."""

    async def scenario() -> tuple[int, int]:
        async with FakeAmi(answer_ping=False) as server:
            settings = make_settings(
                server.port, ami_ping_interval_s=0.05, ami_ping_timeout_s=0.1
            )
            listener = AmiListener(settings, lambda e: None, lambda q: None)
            task = asyncio.create_task(listener.run())
            await until(lambda: listener.epoch >= 2)
            await stopped(listener, task)
            pings = sum(1 for a in server.actions if a["Action"] == "Ping")
            return server.connections, pings

    connections, pings = asyncio.run(scenario())
    assert connections >= 2 and pings >= 1


def test_bad_frames_are_quarantined_and_not_numbered() -> None:
    """An undecodable frame goes to on_quarantine; the envelopes' seq has no gap for it."""
    push = b"Event: Bad\r\nCallerIDName: \xff\r\n\r\nEvent: Hangup\r\nUniqueid: 1.1\r\n\r\n"

    async def scenario() -> tuple[list[Envelope], list[Quarantined]]:
        envs: list[Envelope] = []
        bad: list[Quarantined] = []
        async with FakeAmi(push=push) as server:
            listener = AmiListener(make_settings(server.port), envs.append, bad.append)
            task = asyncio.create_task(listener.run())
            await until(lambda: len(envs) >= 4)
            await stopped(listener, task)
        return envs, bad

    envs, bad = asyncio.run(scenario())
    assert [e.seq for e in envs] == [1, 2, 3, 4] and envs[3].name == "Hangup"
    assert [(q.pbx_id, q.reason) for q in bad] == [("pbx-test", "invalid_utf8")]
    assert bad[0].raw == "Event: Bad\r\nCallerIDName: \\xff"


def test_a_failing_callback_stops_the_listener_with_its_error() -> None:
    """A consumer bug is not swallowed and not retried forever: run() re-raises it."""

    def explode(envelope: Envelope) -> None:
        raise RuntimeError("consumer bug")

    async def scenario() -> None:
        async with FakeAmi() as server:
            listener = AmiListener(make_settings(server.port), explode, lambda q: None)
            with pytest.raises(RuntimeError, match="consumer bug"):
                await asyncio.wait_for(listener.run(), 5)

    asyncio.run(scenario())
