"""The Kafka adapter (aiokafka): clients from Settings, topics, batched produce, dead letters.

Thin on purpose: the stages (ingest/stage.py, enrich/stage.py, store/stage.py) decide what to
send and when to commit; this module only speaks Kafka. Produce goes through the batch API, one
batch per partition per round, and a round is awaited as a whole: never one await per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from contracts import kafka as k
from contracts import metrics
from contracts.config import Settings
from contracts.errors import BrokerError, ConfigError, TopicsMissing

log = structlog.get_logger("kafkaio.client")

class _OncePerKind(logging.Filter):
    """aiokafka logs every failed connection attempt, many per second during an outage: let
    each kind of message (its template) through once per ``interval_s``; the stages report
    outages themselves, once per failed round."""

    def __init__(self, interval_s: float = 60.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        kind = str(record.msg)[:80]
        if now - self._last.get(kind, -self.interval_s) < self.interval_s:
            return False
        self._last[kind] = now
        return True


_driver_log = logging.getLogger("aiokafka")
if not any(isinstance(f, _OncePerKind) for f in _driver_log.filters):
    _driver_log.addFilter(_OncePerKind())

Message = k.Message

__all__ = ["ConsumerRecord", "KafkaError", "Message", "TopicPartition"]


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Connection settings shared by producers, consumers and the admin client."""
    if not settings.kafka_bootstrap:
        raise ConfigError("Kafka is not configured: set PBXPIPE_KAFKA_BOOTSTRAP (host:port)")
    kw: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap.split(","),
        "security_protocol": settings.kafka_security_protocol,
        "request_timeout_ms": int(settings.kafka_request_timeout_s * 1000),
    }
    if settings.kafka_security_protocol.startswith("SASL"):
        kw.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                  sasl_plain_username=settings.kafka_sasl_username,
                  sasl_plain_password=settings.kafka_sasl_password)
    if settings.kafka_security_protocol.endswith("SSL"):
        kw["ssl_context"] = create_ssl_context(
            cafile=settings.kafka_ssl_cafile or None,
            certfile=settings.kafka_ssl_certfile or None,
            keyfile=settings.kafka_ssl_keyfile or None,
        )
    return kw


def broker_error(settings: Settings, e: KafkaError, doing: str = "") -> BrokerError:
    """The one-line error for a Kafka failure (``doing``: what failed, when it says more)."""
    return BrokerError(f"Kafka at {settings.kafka_bootstrap}: {doing}{e or type(e).__name__}")


DAY_MS = 86_400_000


def topic_configs(settings: Settings, topic: str) -> dict[str, str]:
    """What a topic of the pipeline is created with: deleted by age, so the phone numbers it
    holds leave Kafka after the replay window (the dead letters after theirs)."""
    days = (settings.kafka_dead_letter_retention_days
            if topic == settings.kafka_dead_letter_topic else settings.kafka_retention_days)
    return {"retention.ms": str(round(days * DAY_MS)), "cleanup.policy": "delete"}


def config_text(configs: dict[str, str]) -> str:
    """``key=value,…``: as ``kafka-configs --add-config`` takes them."""
    return ",".join(f"{k}={v}" for k, v in configs.items())


def retention_gap(wanted: dict[str, str], actual: dict[str, str]) -> str | None:
    """How an existing topic's configs (as the broker describes them) keep data longer than
    ``wanted`` (:func:`topic_configs`) would: None when they do not, or when the broker did not
    say."""
    policy = actual.get("cleanup.policy")
    if policy is not None and "delete" not in policy.split(","):
        return f"cleanup.policy={policy}: nothing is deleted by age"
    kept = actual.get("retention.ms")
    if kept is None or not kept.lstrip("-").isdigit():
        return None
    if int(kept) < 0:
        return "retention.ms=-1: kept forever"
    if int(kept) > int(wanted["retention.ms"]):
        return f"retention.ms={kept} ({int(kept) / DAY_MS:g} days)"
    return None


async def _describe_retention(admin: AIOKafkaAdminClient, settings: Settings,
                              topics: list[str]) -> dict[str, dict[str, Any]]:
    """Each of ``topics`` (that exists) as the broker describes it: its ``retention.ms`` and
    ``cleanup.policy``, what :func:`topic_configs` wants, and ``too_long`` (:func:`retention_gap`)."""
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    out: dict[str, dict[str, Any]] = {}
    for response in responses:
        for error_code, _, _, topic, entries, *_ in response.resources:
            if error_code or topic not in topics:
                continue
            actual = {e[0]: e[1] for e in entries if e[1] is not None}
            wanted = topic_configs(settings, topic)
            out[topic] = {"retention.ms": actual.get("retention.ms"),
                          "cleanup.policy": actual.get("cleanup.policy"),
                          "wanted": config_text(wanted),
                          "too_long": retention_gap(wanted, actual)}
    return out


async def _check_retention(admin: AIOKafkaAdminClient, settings: Settings,
                           topics: list[str]) -> None:
    """Warn (once per start) about each of ``topics`` that keeps data longer than configured.
    A broker that will not describe them is noted and passed: this check never stops a stage."""
    try:
        described = await _describe_retention(admin, settings, topics)
    except KafkaError as e:
        log.info("kafka_topic_configs_unknown", topics=topics, error=str(e))
        return
    for topic, d in described.items():
        if d["too_long"] is not None:
            log.warning("kafka_topic_retention_too_long", topic=topic, found=d["too_long"],
                        wanted=d["wanted"],
                        hint="the topic holds phone numbers after their calls are erased or "
                             "expired; alter it (kafka-configs --alter --entity-type topics "
                             f"--entity-name {topic} --add-config {d['wanted']}) or set "
                             "PBXPIPE_KAFKA_RETENTION_DAYS to what it keeps")


async def topics_retention(settings: Settings) -> dict[str, dict[str, Any]]:
    """The pipeline's three topics' retention as the broker describes it (see
    :func:`_describe_retention`; ``{"exists": False}`` for a topic not created yet). BrokerError
    when Kafka cannot be reached or will not say."""
    names = [settings.kafka_raw_topic, settings.kafka_records_topic,
             settings.kafka_dead_letter_topic]
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        described = await _describe_retention(admin, settings, [t for t in names if t in existing])
    except KafkaError as e:
        raise broker_error(settings, e) from None
    finally:
        await admin.close()
    return {t: {"exists": True, **described[t]} if t in described else {"exists": False}
            for t in names}


async def ensure_topics(settings: Settings, topics: Iterable[str]) -> None:
    """Create the missing topics with the configured partitions and retention (see
    :func:`topic_configs`), or say which to create; warn about an existing one that keeps data
    longer than configured."""
    wanted = sorted(set(topics))
    kw = client_kwargs(settings)
    kw.pop("request_timeout_ms")
    admin = AIOKafkaAdminClient(**kw, request_timeout_ms=int(settings.kafka_request_timeout_s * 1000))
    try:
        await admin.start()
    except KafkaError as e:
        await admin.close()
        raise BrokerError(f"Kafka at {settings.kafka_bootstrap} unreachable: {e}") from None
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if len(missing) < len(wanted):
            await _check_retention(admin, settings, [t for t in wanted if t in existing])
        if not missing:
            return
        if not settings.kafka_create_topics:
            raise TopicsMissing(
                f"Kafka topics missing: {', '.join(missing)}; create them (e.g. "
                f"{settings.kafka_partitions} partitions each, configs "
                + "; ".join(f"{t}: {config_text(topic_configs(settings, t))}" for t in missing)
                + ") or set PBXPIPE_KAFKA_CREATE_TOPICS=true"
            )
        try:
            await admin.create_topics([
                NewTopic(t, settings.kafka_partitions, settings.kafka_replication_factor,
                         topic_configs=topic_configs(settings, t))
                for t in missing
            ])
        except TopicAlreadyExistsError:
            pass  # another stage created it first
        except KafkaError as e:
            raise TopicsMissing(
                f"cannot create Kafka topics {', '.join(missing)} ({e}); create them with "
                f"{settings.kafka_partitions} partitions"
            ) from None
        log.info("topics_created", topics=missing, partitions=settings.kafka_partitions,
                 retention_ms={t: topic_configs(settings, t)["retention.ms"] for t in missing})
    finally:
        await admin.close()


class Client(Protocol):
    """A Kafka client a stage owns: AIOKafkaConsumer, AIOKafkaProducer or :class:`Producer`."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def start_clients(settings: Settings, topics: Iterable[str], *clients: Client) -> None:
    """Make sure ``topics`` exist, then start ``clients`` in order. If a step fails, every client
    is stopped before the error propagates: aiokafka reports a consumer or producer as unclosed
    (from its ``__del__``) unless ``stop()`` ran, started or not, and ``stop()`` is safe on a
    client never or only half started."""
    try:
        await ensure_topics(settings, topics)
        for client in clients:
            await client.start()
    except BaseException:
        with contextlib.suppress(Exception):  # the error to report is the one that stopped the start
            await stop_clients(*reversed(clients))
        raise


async def stop_clients(*clients: Client) -> None:
    """Stop each client in turn, even when stopping one fails (its error is raised after)."""
    failure: Exception | None = None
    for client in clients:
        try:
            await client.stop()
        except Exception as e:  # noqa: BLE001  # the next client still has to stop
            failure = failure or e
    if failure is not None:
        raise failure


def make_producer(settings: Settings) -> AIOKafkaProducer:
    compression = None if settings.kafka_compression in ("", "none") else settings.kafka_compression
    return AIOKafkaProducer(
        **client_kwargs(settings),
        acks="all",
        enable_idempotence=settings.kafka_idempotence,
        compression_type=compression,
        linger_ms=settings.kafka_linger_ms,
        max_batch_size=settings.kafka_max_batch_bytes,
        max_request_size=max(settings.kafka_max_batch_bytes, 1 << 20) + (64 << 10),
    )


def make_consumer(settings: Settings, topic: str, group: str, listener: Any) -> AIOKafkaConsumer:
    kw = client_kwargs(settings)
    # a JoinGroup may take up to the rebalance timeout (max_poll_interval_ms): the short
    # produce timeout would abort it
    kw["request_timeout_ms"] = 40_000
    consumer = AIOKafkaConsumer(
        **kw,
        max_poll_interval_ms=30_000,
        rebalance_timeout_ms=20_000,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
    )
    consumer.subscribe([topic], listener=listener)
    return consumer


PREBUILD_BYTES = 256 << 10
"""A round this large is compressed in threads. A small one is not worth the hand-off: at
500 calls/s end to end (rounds of tens of KB), building every round in a thread cost ingest
~45% more CPU and the broker ~35% more, and the hangup -> row p99 went from 1.2 s to 2 s."""


class Producer:
    """Sends rounds of messages: messages grouped per partition into batches, all awaited once.

    The partition is the Java client's (murmur2 of the key), memoised per key: a call's events
    share a key, so the hash runs once per call, not once per event.
    """

    def __init__(self, producer: AIOKafkaProducer, stage: str) -> None:
        self._producer = producer
        self._stage = stage
        # A batch is built (compressed, checksummed) when the sender drains it, on the event loop.
        # Without idempotence nothing is added at drain time (an idempotent producer stamps its
        # producer id and sequence then), so the batch can be built beforehand, in a thread.
        # (aiokafka internals, read defensively: another aiokafka simply builds on the loop)
        self._prebuild = (getattr(producer, "_txn_manager", True) is None
                          and getattr(producer, "_compression_type", None) is not None
                          and hasattr(BatchBuilder, "_build"))
        self._partitions: dict[str, int] = {}
        self._memo: dict[bytes, int] = {}
        self._produced = metrics.KAFKA_PRODUCED.labels(stage)
        self._failures = metrics.KAFKA_PRODUCE_FAILURES.labels(stage)

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def partition_count(self, topic: str) -> int:
        n = self._partitions.get(topic)
        if n is None:
            found = await self._producer.partitions_for(topic)
            n = self._partitions[topic] = len(found)
        return n

    def _partition(self, key: bytes, n: int) -> int:
        p = self._memo.get(key)
        if p is None:
            if len(self._memo) > 500_000:
                self._memo.clear()
            p = self._memo[key] = (murmur2(key) & 0x7FFFFFFF) % n
        return p

    async def send(self, topic: str, messages: Sequence[Message],
                   extra_headers: Sequence[tuple[str, bytes]] = ()) -> None:
        """Send ``messages`` and wait until Kafka acknowledged all of them (raises KafkaError or
        TimeoutError otherwise: the caller keeps them). Per partition, order is kept."""
        if not messages:
            return
        try:
            n = await self.partition_count(topic)
            by_partition: dict[int, list[Message]] = {}
            part = self._partition
            for m in messages:
                p = part(m[0], n)
                lst = by_partition.get(p)
                if lst is None:
                    lst = by_partition[p] = []
                lst.append(m)
            batches: list[tuple[int, Any]] = []
            size = 0
            for p, msgs in by_partition.items():
                batch = self._producer.create_batch()
                for key, value, kind, ts in msgs:
                    size += len(value)
                    headers = [(k.HEADER_KIND, kind), *extra_headers]
                    while batch.append(key=key, value=value, timestamp=int(ts * 1000),
                                       headers=headers) is None:
                        batch.close()
                        batches.append((p, batch))
                        batch = self._producer.create_batch()
                batches.append((p, batch))
            if self._prebuild and size >= PREBUILD_BYTES:
                # compress off the event loop, the batches in parallel (cramjam releases the GIL)
                await asyncio.gather(*(asyncio.to_thread(b._build) for _, b in batches))
            futures: list[asyncio.Future[Any]] = [
                await self._producer.send_batch(b, topic, partition=p) for p, b in batches]
            for f in futures:  # a failure left behind (deadline passed) must not log as unretrieved
                f.add_done_callback(_retrieve)
            results = await asyncio.gather(*futures, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r
        except (KafkaError, TimeoutError):
            self._failures.inc()
            raise
        self._produced.inc(len(messages))


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def read_to_end(settings: Settings, topic: str, *, only_existing: bool = False
                      ) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
    """Every partition of ``topic`` from its beginning, a fetch at a time, until each reached the
    end offset it had when this started (no consumer group, nothing committed; a topic that does
    not exist reads as empty); with
    ``only_existing``, records at or past that offset are left out (the caller appends to the
    topic meanwhile). Tansu reports as a partition's end the last batch's first offset + 1, so
    without ``only_existing`` the whole last batch is read."""
    consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False,
                                max_partition_fetch_bytes=8 << 20)
    try:
        await consumer.start()
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not tps:
            return  # no such topic (yet): nothing in it
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        left = {tp for tp in tps if ends[tp]}
        while left:
            fetched: list[ConsumerRecord[bytes, bytes]] = []
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                if tp not in left:
                    continue
                fetched += [r for r in records if r.offset < ends[tp]] if only_existing else records
                if records[-1].offset >= ends[tp] - 1:
                    left.discard(tp)
            yield fetched
    finally:
        await consumer.stop()


class DeadLetters:
    """Poison messages to the dead-letter topic, the original key and value kept, the reason
    and origin in headers."""

    def __init__(self, producer: Producer, topic: str, stage: str) -> None:
        self._producer = producer
        self._topic = topic
        self._stage = stage
        self._log = log.bind(stage=stage)

    async def send(self, poison: Sequence[tuple[ConsumerRecord[bytes, bytes], str, str]]) -> None:
        """Each item: the record, a reason (contracts.kafka.DLQ_*), a one-line detail."""
        if not poison:
            return
        by_reason: dict[str, int] = {}
        for record, reason, detail in poison:
            headers = [
                (k.HEADER_DLQ_REASON, reason.encode()),
                (k.HEADER_DLQ_DETAIL, detail[:500].encode()),
                (k.HEADER_DLQ_TOPIC, record.topic.encode()),
                (k.HEADER_DLQ_PARTITION, str(record.partition).encode()),
                (k.HEADER_DLQ_OFFSET, str(record.offset).encode()),
                (k.HEADER_DLQ_STAGE, self._stage.encode()),
            ]
            kind = dict(record.headers or ()).get(k.HEADER_KIND, b"")
            await self._producer.send(self._topic, [(record.key or b"", record.value or b"",
                                                     kind, record.timestamp / 1000 or time.time())],
                                      headers)
            by_reason[reason] = by_reason.get(reason, 0) + 1
        for reason, n in by_reason.items():
            metrics.KAFKA_DEAD_LETTERS.labels(self._stage, reason).inc(n)
        self._log.warning("messages_dead_lettered", count=len(poison), reasons=by_reason,
                          topic=self._topic)
