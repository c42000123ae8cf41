"""Which call an AMI frame belongs to, for the Kafka message key. Pure.

Call events name their call (``Linkedid`` or a fallback header). A ``Cdr`` event names it only
with the ``LinkedID`` mapping configured; otherwise its party-A ``UniqueID`` is looked up among
the channels seen, so a call's Cdr rows land in the call's partition.
"""

from __future__ import annotations

from contracts.envelope import LINKEDID_HEADERS, Headers

_RANK = {name: i for i, name in enumerate(LINKEDID_HEADERS)}


class CallRouter:
    """``linkedid(headers)``: the call a frame belongs to ("" for frames of no call)."""

    __slots__ = ("_channels", "_old", "max_channels")

    def __init__(self, max_channels: int = 200_000) -> None:
        self.max_channels = max_channels
        self._channels: dict[str, str] = {}  # Uniqueid -> Linkedid, two generations
        self._old: dict[str, str] = {}

    def linkedid(self, headers: Headers) -> str:
        if not headers or headers[0][0] != "Event":
            return ""
        uniqueid = ""
        linkedid = ""
        best = len(LINKEDID_HEADERS)
        rank_of = _RANK.get
        for key, value in headers:
            if key == "Uniqueid":
                uniqueid = value
                continue
            rank = rank_of(key)
            if rank is not None and rank < best and value:
                best, linkedid = rank, value
        if headers[0][1] == "Cdr":
            if linkedid:
                return linkedid
            for key, value in headers:
                if key == "UniqueID":
                    return self._channels.get(value) or self._old.get(value) or value
            return ""
        if linkedid and uniqueid:
            if uniqueid not in self._channels:
                if len(self._channels) >= self.max_channels:
                    self._old, self._channels = self._channels, {}
                self._channels[uniqueid] = linkedid
        return linkedid
