"""The live AMI listener: one Asterisk, one TCP connection at a time, frames -> envelopes.

panoramisk does the request side (Action objects, ActionID matching of Login, Filter and Ping
responses); reading is ours: every byte goes through :class:`ingest.framing.AmiFramer`, and
every frame — events and responses — is numbered by ``(epoch, seq)`` and handed on as an
:class:`Envelope`, or (``on_frames``, for Kafka) unparsed, as the exact bytes received.
Connection, login, keep-alive and reconnection are driven here rather than by
``panoramisk.Manager``, whose fixed reconnect timer and timeout-less ping do not fit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from panoramisk.ami_protocol import AMIProtocol  # type: ignore[import-untyped]
from panoramisk.message import Message  # type: ignore[import-untyped]

from contracts.config import Settings
from contracts.envelope import Envelope
from contracts.errors import AmiAuthError, AmiConnectError, FrameError
from contracts.hours import parse_business_hours
from contracts.logs import LogOnce
from contracts.metrics import (
    AMI_CONNECTED,
    AMI_RECONNECTS,
    INGEST_BYTES,
    INGEST_EVENTS,
    INGEST_FILTERED,
    INGEST_GAPS,
    INGEST_PBX_OPEN,
    INGEST_QUARANTINED,
    event_type_label,
)
from contracts.records import Quarantined
from ingest.framing import AmiFramer, Frame, quarantined, split_frames

NEEDED_EVENTS: tuple[str, ...] = (
    "Newchannel", "Newstate", "NewCallerid", "NewConnectedLine", "Hangup", "HangupRequest",
    "SoftHangupRequest", "DialBegin", "DialState", "DialEnd", "BridgeCreate", "BridgeEnter",
    "BridgeLeave", "BridgeDestroy", "BridgeMerge", "LocalBridge", "LocalOptimizationBegin",
    "LocalOptimizationEnd", "Cdr", "QueueCallerJoin", "QueueCallerLeave", "QueueCallerAbandon",
    "AgentCalled", "AgentConnect", "AgentComplete", "AgentRingNoAnswer", "BlindTransfer",
    "AttendedTransfer", "MixMonitorStart", "MixMonitorStop", "Hold", "Unhold", "FullyBooted",
)
"""The events enrich uses (plus ``VarSet`` of ``MIXMONITOR_FILENAME``, see below)."""

# Asterisk's legacy event filters: a POSIX extended regex (regcomp REG_EXTENDED|REG_NOSUB)
# searched in the whole event text, which starts "Event: <name>\r\nPrivilege: ...". With any
# include filter installed only matching events are sent. Both patterns avoid every construct
# on which POSIX ERE and Python's ``re`` disagree (no \r, \s, (?:), classes like [[:space:]]),
# so a simulator using ``re.search`` filters exactly as Asterisk does. The name must end at a
# non-alphanumeric character: "Hangup" must not let "HangupHandlerPush" through.
EVENT_FILTER = "^Event: (" + "|".join(NEEDED_EVENTS) + ")([^A-Za-z0-9]|$)"
"""Include the needed event types, by name."""
MIXMONITOR_FILTER = "[^A-Za-z]Variable: MIXMONITOR_FILENAME([^A-Za-z0-9_]|$)"
"""Include ``VarSet`` of ``MIXMONITOR_FILENAME`` only (the recording's file name)."""
DEFAULT_FILTERS: tuple[str, ...] = (EVENT_FILTER, MIXMONITOR_FILTER)
_USED_FRAMES = frozenset((*NEEDED_EVENTS, "VarSet", "Response"))

LOGIN_TIMEOUT_MIN_S = 3.0
"""Asterisk sleeps 1 s before refusing a login: a shorter deadline would turn a wrong password
into a timeout, retried forever, instead of an AmiAuthError."""

BACKOFF_BASE_S = 0.5
"""First reconnect delay; doubles per consecutive failure up to ``ami_reconnect_max_s``."""

_SECRET_RE = re.compile(r"(?i)(secret: )[^\r\n]*")


class _RedactSecret(logging.Filter):
    """panoramisk logs an action it failed to send, Login's Secret included: mask it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "ecret" in message:
            record.msg, record.args = _SECRET_RE.sub(r"\1***", message), None
        return True


_PANORAMISK_LOG = logging.getLogger("ingest.ami.panoramisk")
_PANORAMISK_LOG.addFilter(_RedactSecret())


class _ConnectionLost(Exception):
    pass


class _AmiProtocol(AMIProtocol):  # type: ignore[misc]  # panoramisk is untyped
    """panoramisk's protocol with our reader: bytes -> AmiFramer -> envelopes."""

    def __init__(self, listener: AmiListener, epoch: int) -> None:
        self._listener = listener
        self._epoch = epoch
        self._seq = 0
        self._framer = AmiFramer(listener.settings.max_frame_bytes)
        self.frames = 0
        self.logged_in = False
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.encoding = "utf-8"  # of what we send; what we read is the framer's business
        self.log = _PANORAMISK_LOG

    @property
    def banner(self) -> str | None:
        return self._framer.banner

    def data_received(self, data: bytes) -> None:
        listener = self._listener
        now = listener.clock()
        listener._bytes.inc(len(data))
        if listener.on_frames is not None:
            self._raw_received(data, now)
            return
        items = self._framer.feed(data)
        if not items:
            return
        pbx, epoch, seq = listener.pbx_id, self._epoch, self._seq
        on_envelope = listener.on_envelope
        assert on_envelope is not None  # one of on_envelope and on_frames is set
        kinds: dict[str, int] = {}
        try:
            for item in items:
                if isinstance(item, FrameError):
                    listener._quarantine(item, now)
                    continue
                seq += 1
                on_envelope(Envelope(pbx, epoch, seq, now, item))
                kind = item[0][1] if item[0][0] == "Event" else "Response"
                kinds[kind] = kinds.get(kind, 0) + 1
                if self.responses:  # an action of ours awaits its reply
                    self._match_response(item)
        except Exception as e:  # noqa: BLE001  # a consumer bug: stop reading, surface it from run()
            listener._fail(e)
            self.close()
        finally:
            self.frames += seq - self._seq
            self._seq = seq
            listener._count(kinds)

    def _raw_received(self, data: bytes, now: float) -> None:
        """Frames as bytes to ``on_frames``; only replies to our actions are parsed here."""
        listener = self._listener
        frames, errors = self._framer.feed_raw(data)
        try:
            for err in errors:
                listener._quarantine(err, now)
            if not frames:
                return
            seq0 = self._seq + 1
            self._seq += len(frames)
            self.frames += len(frames)
            listener.on_frames(self._epoch, seq0, frames, now)  # type: ignore[misc]
            if self.responses:  # an action of ours awaits its reply
                for raw in frames:
                    if raw.startswith(b"Response: "):
                        for _, item in split_frames(raw, [len(raw)]):
                            if not isinstance(item, FrameError):
                                self._match_response(item)
        except Exception as e:  # noqa: BLE001  # a consumer bug: stop reading, surface it from run()
            listener._fail(e)
            self.close()

    def _match_response(self, frame: Frame) -> None:
        """Hand a reply to panoramisk's ActionID matching (resolves the Action's future)."""
        for key, value in frame:
            if key == "ActionID":
                if value in self.responses:
                    break
                return
        else:
            return
        headers: dict[str, Any] = {}
        for key, value in frame:
            if key in headers:  # repeated header: a list, as panoramisk's own parser does
                previous = headers[key]
                headers[key] = [*previous, value] if isinstance(previous, list) else [
                    previous, value,
                ]
            else:
                headers[key] = value
        self.handle_message(Message(headers))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.responses: dict[str, Any] = {}
        now = self._listener.clock()
        try:
            for err in self._framer.close():  # a frame cut by the disconnect is kept, not lost
                self._listener._quarantine(err, now)
        except Exception as e:  # noqa: BLE001  # a consumer bug: surface it from run()
            self._listener._fail(e)
        if not self.lost.done():
            self.lost.set_result(exc)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    async def request(self, action: dict[str, str], timeout: float) -> Message:
        """Send an action and wait for its response, the connection's loss or the deadline."""
        future = self.send(action)
        done, _ = await asyncio.wait(
            (future, self.lost), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if future in done:
            return future.result()
        if self.lost in done:
            raise _ConnectionLost(f"connection lost waiting for {action['Action']}")
        raise TimeoutError(f"no response to {action['Action']} within {timeout:g} s")


class AmiListener:
    """Reads one PBX's AMI until stopped: login, event filters, keep-alive, reconnection.

    ``on_envelope`` (or ``on_frames``) and ``on_quarantine`` are called synchronously from the
    socket reader and must be cheap (a ``put_nowait`` on a bounded queue): Asterisk drops a
    manager client that stops reading for ~100 ms. An exception raised by a callback stops the
    listener and is re-raised by :meth:`run`.

    With ``on_frames(epoch, seq0, frames, recv_time)`` instead of ``on_envelope``, frames are
    not parsed: each read's complete frames come as their exact bytes, numbered ``seq0``…;
    their per-type counts are then the caller's to report (:meth:`count_kinds`).
    """

    def __init__(
        self,
        settings: Settings,
        on_envelope: Callable[[Envelope], None] | None,
        on_quarantine: Callable[[Quarantined], None],
        *,
        on_frames: Callable[[int, int, list[bytes], float], None] | None = None,
        event_filters: Sequence[str] = DEFAULT_FILTERS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.pbx_id = settings.pbx_id
        if (on_envelope is None) == (on_frames is None):
            raise TypeError("AmiListener takes one of on_envelope and on_frames")
        self.on_envelope = on_envelope
        self.on_frames = on_frames
        self.on_quarantine = on_quarantine
        self.event_filters = tuple(event_filters)
        self.clock = clock
        self.epoch = 0
        self.banner: str | None = None
        self._log = structlog.get_logger("ingest.ami").bind(pbx=settings.pbx_id)
        self._once = LogOnce(self._log)
        self._protocol: _AmiProtocol | None = None
        self._stopping = asyncio.Event()
        self._error: BaseException | None = None
        self._bytes = INGEST_BYTES.labels(self.pbx_id)
        self._connected = AMI_CONNECTED.labels(self.pbx_id)
        self._reconnects = AMI_RECONNECTS.labels(self.pbx_id)
        self._gaps = INGEST_GAPS.labels(self.pbx_id, "reconnect")
        # told at each scrape, in the PBX's own zone (PromQL knows only UTC)
        hours = parse_business_hours(settings.business_hours, settings.pbx_timezone)
        INGEST_PBX_OPEN.labels(self.pbx_id).set_function(
            lambda: float(hours.open_at(datetime.fromtimestamp(clock(), UTC))))
        self._sessions = 0  # logged-in sessions: each after the first follows a gap
        self._events: dict[str, Any] = {}

    async def run(self) -> None:
        """Stream until :meth:`stop` or cancellation; raises AmiAuthError or AmiConnectError."""
        s = self.settings
        failures = 0
        while not self._stopping.is_set():
            if self.epoch or failures:
                self._reconnects.inc()
            try:
                await self._session()
                reason = "connection closed by the PBX"
            except (OSError, TimeoutError, _ConnectionLost) as e:
                reason = _describe(e)
            finally:
                self._connected.set(0)
                protocol, self._protocol = self._protocol, None
                if protocol is not None:
                    protocol.close()
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            if self._stopping.is_set():
                self._log.info("ami_stopped", epoch=self.epoch)
                break
            if protocol is not None and protocol.logged_in:
                self._log.warning("ami_disconnected", epoch=self.epoch, reason=reason,
                                  frames=protocol.frames)
                failures = 1  # a session that worked: start counting afresh
            else:
                failures += 1
            if 0 <= s.ami_max_retries < failures:
                self._log.error("ami_gave_up", host=s.ami_host, port=s.ami_port,
                                failures=failures, reason=reason)
                raise AmiConnectError(
                    f"AMI at {s.ami_host}:{s.ami_port} unreachable after {failures} failed "
                    f"attempt(s) (ami_max_retries={s.ami_max_retries}): {reason}"
                )
            delay = self._backoff(failures)
            self._log.warning("ami_reconnect_scheduled", reason=reason, failures=failures,
                              delay_s=round(delay, 3))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def stop(self) -> None:
        """Stop reading for good: :meth:`run` returns once the connection is closed."""
        self._stopping.set()
        protocol = self._protocol
        if protocol is not None:
            protocol.close()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(protocol.lost)

    def _backoff(self, failures: int) -> float:
        """Capped exponential backoff with jitter: half fixed, half random."""
        ceiling = min(self.settings.ami_reconnect_max_s, BACKOFF_BASE_S * 2 ** (failures - 1))
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))

    async def _session(self) -> None:
        """One connection: connect, login, filters, then ping until it ends."""
        s = self.settings
        loop = asyncio.get_running_loop()
        epoch = self.epoch + 1
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _AmiProtocol(self, epoch), s.ami_host, s.ami_port),
                s.ami_ping_timeout_s,
            )
        except TimeoutError:
            raise TimeoutError(f"connect timed out after {s.ami_ping_timeout_s:g} s") from None
        self.epoch = epoch
        self._protocol = protocol
        if self._stopping.is_set():
            return
        # Events on from the login: Asterisk sends FullyBooted right after it only to sessions
        # with system events on; what slips through before the filters are in is merely extra.
        login = await protocol.request(
            {"Action": "Login", "Username": s.ami_user, "Secret": s.ami_secret, "Events": "on"},
            max(s.ami_ping_timeout_s, LOGIN_TIMEOUT_MIN_S),
        )
        if not login.success:
            message = _describe(login.message or login.response or "refused")
            self._log.error("ami_login_failed", host=s.ami_host, port=s.ami_port,
                            user=s.ami_user, message=message)
            raise AmiAuthError(
                f"AMI login refused for user {s.ami_user!r} at {s.ami_host}:{s.ami_port}: "
                f"{message} (check ami_user / ami_secret)"
            )
        protocol.logged_in = True
        self.banner = protocol.banner
        self._connected.set(1)
        self._sessions += 1
        if self._sessions > 1:  # what the PBX sent while we were away is lost
            self._gaps.inc()
        self._log.info("ami_connected", host=s.ami_host, port=s.ami_port, epoch=epoch,
                       banner=self.banner)
        await self._install_filters(protocol)
        await self._keep_alive(protocol)

    async def _install_filters(self, protocol: _AmiProtocol) -> None:
        s = self.settings
        installed = 0
        for pattern in self.event_filters:
            reply = await protocol.request(
                {"Action": "Filter", "Operation": "Add", "Filter": pattern},
                s.ami_ping_timeout_s,
            )
            if reply.success:
                installed += 1
            else:  # e.g. no "system" write permission: more traffic, still correct
                self._once.warning(
                    "filter_rejected", "ami_filter_rejected", filter=pattern,
                    message=_describe(reply.message),
                )
        if self.event_filters:
            self._log.info("ami_filters_installed", count=installed,
                           requested=len(self.event_filters))

    async def _keep_alive(self, protocol: _AmiProtocol) -> None:
        """Ping every interval until the connection ends; no Pong in time drops it."""
        s = self.settings
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while True:
                done, _ = await asyncio.wait(
                    (protocol.lost, stopping), timeout=s.ami_ping_interval_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if done:
                    return
                try:
                    await protocol.request({"Action": "Ping"}, s.ami_ping_timeout_s)
                except TimeoutError:
                    self._log.warning("ami_ping_timed_out", timeout_s=s.ami_ping_timeout_s)
                    raise
        finally:
            stopping.cancel()

    def _quarantine(self, err: FrameError, now: float) -> None:
        INGEST_QUARANTINED.labels(self.pbx_id, err.reason).inc()
        self._once.warning(err.reason, "frame_quarantined", detail=err.detail,
                           raw_bytes=len(err.raw))
        self.on_quarantine(quarantined(err, self.pbx_id, now))

    def count_kinds(self, kinds: dict[bytes, int]) -> None:
        """Frames per event name (b"": not an event) as ``on_frames`` callers count them."""
        self._count({(name.decode("utf-8", "replace") if name else "Response"): n
                     for name, n in kinds.items()})

    def _count(self, kinds: dict[str, int]) -> None:
        """Metrics once per read, not once per frame."""
        for kind, n in kinds.items():
            if kind not in _USED_FRAMES:  # the PBX ignored our Filter actions (no "system" right?)
                INGEST_FILTERED.labels(self.pbx_id, "unused_type").inc(n)
            label = event_type_label(kind)
            counter = self._events.get(label)
            if counter is None:
                counter = self._events[label] = INGEST_EVENTS.labels(self.pbx_id, label)
            counter.inc(n)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error


def _describe(e: object) -> str:
    """One line: AMI messages and OS errors may carry line breaks."""
    text = str(e) or type(e).__name__
    return " ".join(text.split())


