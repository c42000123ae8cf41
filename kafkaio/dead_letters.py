"""The dead-letter topic read back and replayed: ``pbxpipe dead-letters list | replay``.

A stage sends a message it cannot read to the dead-letter topic, its key and value as they were
and the reason and origin in headers (:class:`kafkaio.client.DeadLetters`). Once the cause is
fixed (a store that reads what a newer enrich writes, say), ``replay`` sends the messages back
to the topic they came from with their kind header alone, and the stage that refused them reads
them again.

Records-topic messages replay safely, once or twice: rows carry deterministic ids and versions,
so the store's tables collapse a row sent again. Raw-topic messages are listed but not replayed:
enrich folds a PBX's frames in order and passes over any older than those it has folded (as it
does a produce round sent twice), and the calls they belonged to are closed by now.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog

from contracts import kafka as k
from contracts.config import Settings
from kafkaio.client import (
    ConsumerRecord,
    KafkaError,
    Producer,
    broker_error,
    make_producer,
    read_to_end,
    stop_clients,
)

log = structlog.get_logger("kafkaio.dead_letters")


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """One message of the dead-letter topic, as its headers describe it."""

    partition: int  # where it is in the dead-letter topic
    offset: int
    timestamp: float  # the original message's (epoch seconds)
    stage: str  # the stage that refused it
    reason: str  # contracts.kafka.DLQ_*
    detail: str
    origin_topic: str
    origin_partition: int
    origin_offset: int
    kind: str  # its kind header (contracts.kafka.KIND_*)
    key: str
    value_bytes: int


def read(record: ConsumerRecord[bytes, bytes]) -> DeadLetter:
    """A dead-letter record's description; missing headers read as empty (or -1)."""
    h = {name: value.decode("utf-8", "replace") for name, value in record.headers or ()}

    def number(name: str) -> int:
        v = h.get(name, "")
        return int(v) if v.lstrip("-").isdigit() else -1

    return DeadLetter(
        partition=record.partition, offset=record.offset, timestamp=record.timestamp / 1000,
        stage=h.get(k.HEADER_DLQ_STAGE, ""), reason=h.get(k.HEADER_DLQ_REASON, ""),
        detail=h.get(k.HEADER_DLQ_DETAIL, ""), origin_topic=h.get(k.HEADER_DLQ_TOPIC, ""),
        origin_partition=number(k.HEADER_DLQ_PARTITION),
        origin_offset=number(k.HEADER_DLQ_OFFSET), kind=h.get(k.HEADER_KIND, ""),
        key=(record.key or b"").decode("utf-8", "replace"), value_bytes=len(record.value or b""),
    )


def not_replayed(letter: DeadLetter, settings: Settings) -> str | None:
    """Why ``letter`` is not sent back (None: it is)."""
    if letter.origin_topic == settings.kafka_raw_topic:
        return ("raw-topic frames: enrich passes over frames older than those it has folded, "
                "and their calls are closed")
    if letter.origin_topic != settings.kafka_records_topic:
        return f"from {letter.origin_topic or 'no topic'}, not this pipeline's records topic"
    return None


def chosen(letter: DeadLetter, stage: str | None, reason: str | None) -> bool:
    return (stage is None or letter.stage == stage) and (reason is None or letter.reason == reason)


async def dead_letters(settings: Settings) -> list[tuple[ConsumerRecord[bytes, bytes], DeadLetter]]:
    """Every message of the dead-letter topic up to its end now, in partition and offset order.
    BrokerError when Kafka cannot be read."""
    out: list[tuple[ConsumerRecord[bytes, bytes], DeadLetter]] = []
    try:
        async for records in read_to_end(settings, settings.kafka_dead_letter_topic,
                                         only_existing=True):
            out += [(r, read(r)) for r in records]
    except KafkaError as e:
        raise broker_error(settings, e) from None
    out.sort(key=lambda pair: (pair[1].partition, pair[1].offset))
    return out


async def replay(settings: Settings, *, stage: str | None = None, reason: str | None = None,
                 dry_run: bool = False) -> dict[str, Any]:
    """Send the chosen dead letters (by ``stage`` and ``reason``; all by default) back to their
    origin topic, their kind header alone; returns what was sent and what was not, and why."""
    letters = [(r, d) for r, d in await dead_letters(settings) if chosen(d, stage, reason)]
    skipped: dict[str, int] = {}
    by_topic: dict[str, list[k.Message]] = {}
    for record, letter in letters:
        why = not_replayed(letter, settings)
        if why is not None:
            skipped[why] = skipped.get(why, 0) + 1
            continue
        by_topic.setdefault(letter.origin_topic, []).append(
            (record.key or b"", record.value or b"", letter.kind.encode(), letter.timestamp))
    sent = sum(map(len, by_topic.values()))
    if by_topic and not dry_run:
        producer = Producer(make_producer(settings), "replay")
        try:
            await producer.start()
            for topic, messages in by_topic.items():
                await producer.send(topic, messages)
        except KafkaError as e:
            raise broker_error(settings, e, "replay failed, nothing committed anywhere, run it "
                                            "again: ") from None
        finally:
            await stop_clients(producer)
    result = {"chosen": len(letters), "replayed" if not dry_run else "would_replay": sent,
              "to": {t: len(m) for t, m in by_topic.items()}, "not_replayed": skipped}
    log.info("dead_letters_replayed" if not dry_run else "dead_letters_replay_planned", **result)
    return result
