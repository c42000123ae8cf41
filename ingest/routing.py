"""Which call an AMI frame belongs to, and the raw topic's messages: frames grouped per call. Pure.

Call events name their call (``Linkedid`` or a fallback header). A ``Cdr`` event names it only
with the ``LinkedID`` mapping configured; otherwise its party-A ``UniqueID`` is looked up among
the channels seen created (``Newchannel``), so a call's Cdr rows land in the call's partition. Frames stay the bytes
received: routing looks for the few headers it needs, it does not parse or decode the frame.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from contracts import kafka as k
from contracts.envelope import LINKEDID_HEADERS, AmiFrames, frames_encoder
from contracts.errors import FrameError
from ingest.framing import parse_frame

_TAGS = tuple(f"\r\n{name}: ".encode() for name in LINKEDID_HEADERS)  # in order of preference
_LINKEDID = _TAGS[0]  # the usual one
_UNIQUEID = b"\r\nUniqueid: "  # a channel event's channel
_CDR_UNIQUEID = b"\r\nUniqueID: "  # a Cdr's party-A channel
_EVENT = b"Event: "


class CallRouter:
    """``linkedid(frame, name)``: the call a raw frame belongs to (b"" for frames of no call)."""

    __slots__ = ("_channels", "_old", "max_channels")

    def __init__(self, max_channels: int = 200_000) -> None:
        self.max_channels = max_channels
        self._channels: dict[bytes, bytes] = {}  # Uniqueid -> Linkedid, two generations
        self._old: dict[bytes, bytes] = {}

    def linkedid(self, frame: bytes, name: bytes) -> bytes:
        """``frame``: one frame's bytes with its terminator; ``name``: the event's name (what
        follows ``Event: `` up to the first CRLF), b"" for a frame that is not an event."""
        if not name or name.find(b"\n") >= 0:
            # not an event, an event of no name, or lines that do not end in CRLF: only a parse
            # can tell
            odd = name or frame[:1] in (b"\r", b"\n") or frame.startswith(_EVENT)
            return self._parsed(frame) if odd else b""
        best = b""
        for tag in _TAGS:
            at = frame.find(tag)
            while at >= 0:
                at += len(tag)
                end = frame.find(b"\r\n", at)
                best = frame[at:end]
                if best:
                    break
                at = frame.find(tag, end)
            if best:
                break
        if (best.find(b"\n") >= 0 or best.endswith(b"\r")
                or (not best and frame.count(b"\n") != frame.count(b"\r\n"))):
            # lines ending in a bare LF, or CR CR LF (which the parse strips at the frame's end)
            return self._parsed(frame)
        if name == b"Cdr":
            return best or self._cdr_channel(frame)
        if best and name == b"Newchannel":
            at = frame.rfind(_UNIQUEID)  # the last one, as a parse keeps
            if at >= 0:
                at += len(_UNIQUEID)
                uniqueid = frame[at : frame.find(b"\r\n", at)]
                if uniqueid and uniqueid not in self._channels:
                    self._remember(uniqueid, best)
        return best

    def _cdr_channel(self, frame: bytes) -> bytes:
        at = frame.find(_CDR_UNIQUEID)
        if at < 0:
            return b""
        at += len(_CDR_UNIQUEID)
        uniqueid = frame[at : frame.find(b"\r\n", at)]
        return self._channels.get(uniqueid) or self._old.get(uniqueid) or uniqueid

    def _remember(self, uniqueid: bytes, linkedid: bytes) -> None:
        if len(self._channels) >= self.max_channels:
            self._old, self._channels = self._channels, {}
        self._channels[uniqueid] = linkedid

    def _parsed(self, frame: bytes) -> bytes:
        """The slow way, for frames with odd line ends: the same rules over the parsed headers."""
        headers = parse_frame(frame.decode("utf-8", "surrogateescape").strip("\r\n"), frame)
        if isinstance(headers, FrameError) or not headers or headers[0][0] != "Event":
            return b""
        uniqueid, best, rank = None, "", len(LINKEDID_HEADERS)
        cdr_uniqueid = None
        for key, value in headers:
            if key == "Uniqueid":
                uniqueid = value
            elif key == "UniqueID" and cdr_uniqueid is None:
                cdr_uniqueid = value
            elif key in LINKEDID_HEADERS and LINKEDID_HEADERS.index(key) < rank and value:
                best, rank = value, LINKEDID_HEADERS.index(key)
        linkedid = best.encode("utf-8", "surrogateescape")
        if headers[0][1] == "Cdr":
            if linkedid or cdr_uniqueid is None:
                return linkedid
            channel = cdr_uniqueid.encode("utf-8", "surrogateescape")
            return self._channels.get(channel) or self._old.get(channel) or channel
        if linkedid and uniqueid and headers[0][1] == "Newchannel":
            channel = uniqueid.encode("utf-8", "surrogateescape")
            if channel not in self._channels:
                self._remember(channel, linkedid)
        return linkedid


class CallBatcher:
    """Raw frames of one PBX -> the raw topic's messages: each round of frames (what came in
    while the previous round was being sent) becomes one message per call, in order of each
    call's first frame, so ``(epoch, first seq)`` grows along every partition."""

    def __init__(self, pbx_id: str, *, max_message_bytes: int = 256 << 10,
                 router: CallRouter | None = None) -> None:
        self.pbx_id = pbx_id
        self.router = router or CallRouter()
        self.max_message_bytes = max_message_bytes
        self.frames = 0  # frames added and not taken yet
        self.kinds: dict[bytes, int] = {}  # frames per event name (b"": not an event), for metrics
        self._prefix = k.call_key(pbx_id, "")
        self._epoch = 0
        self._groups: dict[bytes, list[Any]] = {}  # linkedid -> [frames, seqs, recv_time]
        self._ready: list[k.Message] = []  # rounds closed by a new epoch

    def add(self, epoch: int, seq0: int, frames: list[bytes], recv_time: float) -> None:
        """Frames numbered ``seq0``, ``seq0 + 1``… of connection ``epoch``, completed by a read
        at ``recv_time``."""
        if epoch != self._epoch:
            self._close_round()
            self._epoch = epoch
        groups = self._groups
        kinds = self.kinds
        router = self.router
        route = router.linkedid
        channels = router._channels
        for seq, frame in enumerate(frames, seq0):
            if not frame.startswith(_EVENT):
                name = b""
                linkedid = route(frame, name)
            # A line ends at its first LF, which its CR (13) comes right before: one single-byte
            # find per line read, and no look for a bare LF in the value.
            elif frame[(end := frame.find(b"\n", 7)) - 1] != 13:
                name = frame[7 : frame.find(b"\r\n", 7)]
                linkedid = route(frame, name)  # a bare LF: only a parse can tell
            else:
                name = frame[7 : end - 1]
                # inline, the usual case of CallRouter.linkedid: a CRLF call event with Linkedid
                at = frame.find(_LINKEDID)
                if at < 0 or name == b"Cdr":
                    linkedid = route(frame, name)
                else:
                    at += 12  # len(_LINKEDID)
                    end = frame.find(b"\n", at)
                    linkedid = frame[at : end - 1]
                    if not linkedid or frame[end - 1] != 13 or linkedid[-1] == 13:
                        linkedid = route(frame, name)  # empty, a bare LF, or CR CR LF
                    elif name == b"Newchannel":
                        at = frame.rfind(_UNIQUEID)
                        if at >= 0:
                            at += len(_UNIQUEID)
                            uniqueid = frame[at : frame.find(b"\r\n", at)]
                            if uniqueid and uniqueid not in channels:
                                router._remember(uniqueid, linkedid)
                                channels = router._channels  # a new generation may have begun
            kinds[name] = kinds.get(name, 0) + 1
            group = groups.get(linkedid)
            if group is None:
                groups[linkedid] = [[frame], [seq], recv_time]
            else:
                group[0].append(frame)
                group[1].append(seq)
                group[2] = recv_time
        self.frames += len(frames)

    def take(self) -> list[k.Message]:
        """The messages of every frame added so far, in order; a new round starts."""
        self._close_round()
        out, self._ready = self._ready, []
        self.frames = 0
        return out

    def _close_round(self) -> None:
        groups, self._groups = self._groups, {}
        if not groups:
            return
        pbx, epoch, cap, prefix = self.pbx_id, self._epoch, self.max_message_bytes, self._prefix
        encode = frames_encoder.encode
        kind = k.KIND_AMI
        out: list[tuple[int, k.Message]] = []
        split = False
        for linkedid, (frames, seqs, recv) in groups.items():
            key = prefix + linkedid
            raw = b"".join(frames)
            if len(raw) <= cap or len(frames) == 1:
                out.append((seqs[0], (key, encode(AmiFrames(pbx, epoch, seqs, [len(f) for f in frames], recv, raw)), kind,
                                      recv)))
                continue
            split = True  # too big for one message: consecutive pieces
            start, size = 0, 0
            for i, frame in enumerate(frames):
                if size and size + len(frame) > cap:
                    out.append((seqs[start], (key, _encoded(
                        pbx, epoch, seqs[start:i], frames[start:i], recv), kind, recv)))
                    start, size = i, 0
                size += len(frame)
            out.append((seqs[start], (key, _encoded(pbx, epoch, seqs[start:], frames[start:], recv),
                                      kind, recv)))
        if split:
            out.sort(key=itemgetter(0))
        self._ready += [m for _, m in out]


def _encoded(pbx_id: str, epoch: int, seqs: list[int], frames: list[bytes], recv: float) -> bytes:
    return frames_encoder.encode(
        AmiFrames(pbx_id, epoch, seqs, [len(f) for f in frames], recv, b"".join(frames)))
