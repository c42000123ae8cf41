"""The typed envelope every AMI frame travels in, from ingest to enrich, and the raw topic's batch
of one call's frames as received."""

from __future__ import annotations

import msgspec

Headers = tuple[tuple[str, str], ...]

LINKEDID_HEADERS = ("Linkedid", "DestLinkedid", "TransfereeLinkedid", "OrigTransfererLinkedid",
                    "LinkedID")
"""Where an event names its call, in order of preference (``LinkedID``: Cdr's [mappings])."""


class Envelope(msgspec.Struct, frozen=True, array_like=True):
    """One AMI frame as received, lossless: every header in order, repeated ones too.

    ``epoch`` counts (re)connections of the listener to this PBX and ``seq`` numbers the
    frames within one connection, so (pbx_id, epoch, seq) identifies a frame and a gap in
    ``seq`` is a loss. ``recv_time`` is when the read that completed the frame returned
    (epoch seconds, UTC).
    """

    pbx_id: str
    epoch: int
    seq: int
    recv_time: float
    headers: Headers

    @property
    def name(self) -> str:
        """The frame's kind: the value of its first header (``Event``, ``Response``…)."""
        return self.headers[0][1] if self.headers else ""

    @property
    def is_event(self) -> bool:
        return bool(self.headers) and self.headers[0][0] == "Event"

    def get(self, key: str, default: str | None = None) -> str | None:
        """First value of header ``key`` (AMI header names are case-sensitive in practice)."""
        for k, v in self.headers:
            if k == key:
                return v
        return default

    def get_all(self, key: str) -> list[str]:
        """Every value of a header that may repeat (``Variable``, ``ChanVariable``…)."""
        return [v for k, v in self.headers if k == key]


envelope_encoder = msgspec.msgpack.Encoder()
envelope_decoder = msgspec.msgpack.Decoder(Envelope)


class AmiFrames(msgspec.Struct, frozen=True, array_like=True):
    """Consecutive frames of one call (one Kafka key) as ingest received them, on the raw topic.

    ``raw`` is the frames' exact bytes, each with its terminating blank line, in order, frame
    ``i`` of ``sizes[i]`` bytes, numbered ``(pbx_id, epoch, seqs[i])`` (not contiguous: other
    calls' frames come in between); ``recv_time`` is that of the read that completed the last.
    Ingest does not parse frames: enrich reads them (one that cannot be read is quarantined
    there).
    """

    pbx_id: str
    epoch: int
    seqs: list[int]
    sizes: list[int]
    recv_time: float
    raw: bytes


frames_encoder = msgspec.msgpack.Encoder()
frames_decoder = msgspec.msgpack.Decoder(AmiFrames)
