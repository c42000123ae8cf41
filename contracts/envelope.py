"""The typed envelope every AMI frame travels in, from ingest to enrich (and later Kafka)."""

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
