"""Replay a raw AMI capture file (the bytes exactly as Asterisk sent them) as envelopes.

The same framer as the live listener, so a capture and a connection frame identically. One
file is one connection: ``epoch`` 0, ``seq`` 1, 2, 3… per frame, responses included.
"""

from __future__ import annotations

from collections.abc import Iterator
from os import PathLike

from contracts.envelope import Envelope
from contracts.errors import FrameError
from contracts.records import Quarantined
from ingest.framing import AmiFramer, quarantined


def read_capture(
    path: str | PathLike[str], pbx_id: str, chunk_size: int = 65536
) -> Iterator[Envelope | Quarantined]:
    """Envelopes (and quarantined frames) of a capture, in order.

    ``recv_time`` is the frame's ``Timestamp`` header when it has one, else the last one seen
    (0.0 before any): a capture keeps no receive times of its own.
    """
    framer = AmiFramer()
    seq = 0
    last_time = 0.0
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            for item in framer.feed(chunk):
                if isinstance(item, FrameError):
                    yield quarantined(item, pbx_id, last_time)
                    continue
                for key, value in item:
                    if key == "Timestamp":
                        try:
                            last_time = float(value)
                        except ValueError:
                            pass
                        break
                seq += 1
                yield Envelope(pbx_id, 0, seq, last_time, item)
    for err in framer.close():  # a capture cut mid-frame
        yield quarantined(err, pbx_id, last_time)
