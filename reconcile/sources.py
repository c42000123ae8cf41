"""Raw AMI events as reconciliation and re-derivation read them: a capture file (the bytes as
Asterisk sent them) or the raw topic while it retains them. Each frame comes as a :class:`Frame`:
where it was, which partition and offset (a capture is partition 0, offset = frame number), the
call its message key names ("" in a capture), and the envelope.

A raw-topic message that cannot be read is kept in the result's ``rejected`` with its reason
and position, never dropped silently; a frame that cannot be read is quarantined there as in
enrich.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec

from contracts import kafka as k
from contracts.config import Settings
from contracts.envelope import Envelope, envelope_decoder, frames_decoder
from contracts.errors import InputError
from ingest.capture import read_capture
from ingest.framing import read_frames
from kafkaio.client import read_to_end
from kafkaio.consume import kind_of
from reconcile.readers import Rejected


class Frame(msgspec.Struct, frozen=True):
    where: str
    partition: int
    offset: int
    linkedid: str  # the message key's call, "" when unknown
    env: Envelope


def capture_frames(path: str | Path, pbx_id: str, rejected: list[Rejected]) -> Iterator[Frame]:
    """The frames of a raw AMI capture, in order; unreadable ones go to ``rejected``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"cannot read capture {p}: no such file")
    for n, item in enumerate(read_capture(p, pbx_id), 1):
        where = f"{p.name}#{n}"
        if isinstance(item, Envelope):
            yield Frame(where, 0, n, "", item)
        else:
            rejected.append(Rejected(where=where, reason=item.reason, raw=item.raw[:2000]))


async def topic_frames(settings: Settings, pbx_id: str, rejected: list[Rejected]
                       ) -> AsyncIterator[Frame]:
    """The PBX's frames in the raw topic, from its start to its end when this began, each
    partition in order (the partitions interleave); unreadable messages and frames go to
    ``rejected``."""
    topic = settings.kafka_raw_topic
    async for fetched in read_to_end(settings, topic):
        for r in fetched:
            key_pbx, linkedid = k.split_key(r.key)
            if key_pbx and key_pbx != pbx_id:
                continue
            where = f"{topic}/{r.partition}@{r.offset}"
            kind = kind_of(r)
            try:
                if kind == k.KIND_AMI:
                    batch = frames_decoder.decode(r.value or b"")
                    if batch.pbx_id != pbx_id:
                        continue
                    envs, bad = read_frames(batch, settings.max_frame_bytes)
                    for seq, err in bad:
                        rejected.append(Rejected(where=f"{where}#{seq}", reason=err.reason,
                                                 raw=err.raw.decode("utf-8", "backslashreplace")[:2000]))
                elif kind == k.KIND_ENVELOPE:
                    env = envelope_decoder.decode(r.value or b"")
                    if env.pbx_id != pbx_id:
                        continue
                    envs = [env]
                else:
                    continue  # quarantined input: not events
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as e:
                rejected.append(Rejected(where=where, reason="undecodable", raw=str(e)[:2000]))
                continue
            for env in envs:
                yield Frame(where, r.partition, r.offset, linkedid, env)
