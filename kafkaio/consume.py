"""What the three Kafka stages share: poison guard, dead-letter kinds, produce-until-acked,
consumer lag, rebalance hooks. The stages themselves: :mod:`ingest.stage` (AMI -> raw topic),
:mod:`enrich.stage` (raw -> records topic), :mod:`store.stage` (records topic -> ClickHouse).
Each commits only what its output already reflects.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

from contracts import kafka as k
from contracts import metrics
from contracts.errors import PoisonBatch
from kafkaio.client import ConsumerRecord, KafkaError, Message, Producer, TopicPartition

Poison = tuple[ConsumerRecord[bytes, bytes], str, str]

POISON_GUARD_MIN = 10
"""A batch must hold at least this many messages for the poison guard to stop a consumer."""


def kind_of(record: ConsumerRecord[bytes, bytes]) -> bytes:
    headers: Sequence[tuple[str, bytes]] = record.headers or ()
    for key, value in headers:
        if key == k.HEADER_KIND:
            return value
    return b""


def poison_guard(stage: str, poison: int, total: int, ratio: float) -> None:
    if total >= POISON_GUARD_MIN and poison > ratio * total:
        raise PoisonBatch(
            f"{stage}: {poison} of {total} fetched messages are poison (over "
            f"{ratio:.0%}): stopping rather than dead-lettering a whole topic; see the "
            "dead-letter topic and the producer"
        )


async def send_until_acked(producer: Producer, topic: str, messages: list[Message],
                            logger: Any, max_delay_s: float = 5.0) -> None:
    """Send; while Kafka is unreachable retry with capped, jittered backoff. The caller commits
    nothing meanwhile, so a crash here replays instead of losing."""
    attempt = 0
    while True:
        try:
            await producer.send(topic, messages)
            return
        except (KafkaError, TimeoutError) as e:
            attempt += 1
            delay = min(max_delay_s, 0.1 * 2 ** attempt)
            logger.warning("produce_failed_retrying", topic=topic, messages=len(messages),
                           attempt=attempt, error=str(e) or type(e).__name__)
            await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))


async def group_lag(consumer: AIOKafkaConsumer, topic: str) -> int:
    """Messages of ``topic`` the whole group has not committed yet (every partition, not only
    ours: a dead member's partitions count until the group hands them over)."""
    parts = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in parts]
    if not tps:
        return 0
    ends = await consumer.end_offsets(tps)
    lag = 0
    for tp in tps:
        lag += max(0, ends[tp] - (await consumer.committed(tp) or 0))
    return lag


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, on_revoked: Callable[[set[TopicPartition]], Any],
                 on_assigned: Callable[[set[TopicPartition]], Any]) -> None:
        self._revoked = on_revoked
        self._assigned = on_assigned

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._assigned(set(assigned))


def observe_lag(consumer: AIOKafkaConsumer, stage: str, fetched: dict[TopicPartition, list[Any]]) -> None:
    """Consumer lag per partition: the high watermark minus the next offset this fetch reached."""
    for tp, records in fetched.items():
        hw = consumer.highwater(tp)
        if records and hw is not None:
            metrics.KAFKA_CONSUMER_LAG.labels(stage, str(tp.partition)).set(
                max(hw - records[-1].offset - 1, 0))


