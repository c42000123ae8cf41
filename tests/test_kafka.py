"""The stages through a real Kafka-protocol broker: no call lost or doubled through crashes,
rebalances, a broker outage and a ClickHouse outage; poison goes to the dead-letter topic.

Every fault test compares the exact set of call ids in ClickHouse with the calls the simulator
placed, and the exact set of leg ids with what the same events give in one process.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contracts import kafka as k
from contracts.config import load_settings
from contracts.errors import PoisonBatch, StoreUnavailable, TopicsMissing
from contracts.metrics import REGISTRY
from contracts.profile import DEFAULT_PROFILE
from contracts.records import CallLeg, CallRecord, Quarantined, record_encoder
from enrich.calls import CallBuilder
from ingest.capture import read_capture
from simulator.server import SimulatorConfig, render
from tests.kafkabroker import Broker, TcpGate, free_port, read_topic, wait_listening

pytestmark = pytest.mark.integration

PBXPIPE = [sys.executable, "-c", "from pbxpipe.cli import main; main()"]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    yield b
    b.stop()


def stage_env(bootstrap: str, tmp: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
        "PBXPIPE_LOG_FORMAT": "json", "PBXPIPE_KAFKA_BOOTSTRAP": bootstrap,
        "PBXPIPE_KAFKA_IDEMPOTENCE": "false",  # Tansu's memory storage rejects idempotent producers
        "PBXPIPE_KAFKA_PARTITIONS": "4", "PBXPIPE_KAFKA_SPOOL_DIR": str(tmp / "spool"),
        "PBXPIPE_CLICKHOUSE_DSN": f"chdb:///{tmp / 'ch'}", "PBXPIPE_BATCH_AGE_S": "0.3",
        "PBXPIPE_KAFKA_POLL_RECORDS": "150",  # messages of ~30 frames: a stream of many steps
    }
    env.update(extra)
    return env


def start(env: dict[str, str], tmp: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    with open(tmp / f"{name}-{time.monotonic_ns()}.log", "wb") as log:
        return subprocess.Popen([*PBXPIPE, *args], env=env, stdout=log, stderr=subprocess.STDOUT)


def logs(tmp: Path, name: str) -> str:
    return "".join(p.read_text() for p in sorted(tmp.glob(f"{name}-*.log")))


def stored(dsn: str) -> tuple[dict[str, int], set[str]]:
    """call_id -> rows (FINAL), and leg ids, read in a separate process (one chDB per process)."""
    code = (
        "import json,sys; from store.clickhouse import ClickHouseStore as S; s=S.connect(sys.argv[1]);"
        "c=s.query('SELECT call_id, count() AS n FROM calls FINAL GROUP BY call_id');"
        "l=s.query('SELECT leg_id FROM call_legs FINAL');"
        "print(json.dumps([{r['call_id']: r['n'] for r in c}, [r['leg_id'] for r in l]]))"
    )
    out = subprocess.run([sys.executable, "-c", code, dsn], capture_output=True, text=True,
                         check=True, timeout=120)
    calls, legs = json.loads(out.stdout.strip().splitlines()[-1])
    return calls, set(legs)


def expected_legs(capture: Path) -> set[str]:
    builder = CallBuilder(DEFAULT_PROFILE)
    outputs = []
    for item in read_capture(capture, "pbx1"):
        if not isinstance(item, Quarantined):
            outputs += builder.feed(item)
    outputs += builder.flush()
    return {o.leg_id for o in outputs if isinstance(o, CallLeg)}


def make_capture(tmp: Path, calls: int, seed: int) -> tuple[Path, set[str]]:
    rendered = render(SimulatorConfig(total_calls=calls, seed=seed, calls_per_second=50.0,
                                      max_concurrency=2000))
    path = tmp / "capture.log"
    path.write_bytes(rendered.capture)
    return path, {f"pbx1:{c['linkedid']}" for c in rendered.calls}


def assert_exact(dsn: str, call_ids: set[str], legs: set[str]) -> None:
    got, got_legs = stored(dsn)
    missing, extra = call_ids - set(got), set(got) - call_ids
    assert not missing and not extra, (len(missing), len(extra), sorted(missing)[:5])
    assert all(n == 1 for n in got.values())
    assert got_legs == legs, (len(legs - got_legs), len(got_legs - legs))


def finish(proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    assert proc.wait(timeout=timeout) == 0


def ingest_capture(env: dict[str, str], tmp: Path, capture: Path) -> None:
    p = start(env, tmp, "ingest", "ingest", "--capture", str(capture))
    finish(p)


def test_enrich_and_store_killed_at_random_moments_lose_and_double_nothing(broker, tmp_path):
    """kill -9 of enrich and of store while thousands of calls flow, then restarts: ClickHouse
    holds exactly the placed calls and their legs, each once."""
    capture, call_ids = make_capture(tmp_path, 2500, seed=5)
    env = stage_env(broker.bootstrap, tmp_path)
    ingest_capture(env, tmp_path, capture)
    rng = random.Random(20261124)
    enrich = start(env, tmp_path, "enrich", "enrich", "--idle-exit", "2")
    store = start(env, tmp_path, "store", "store")
    for _ in range(2):
        time.sleep(rng.uniform(5.0, 8.0))  # past the group join, into the stream
        enrich.send_signal(signal.SIGKILL)
        enrich.wait()
        enrich = start(env, tmp_path, "enrich", "enrich", "--idle-exit", "2")
        time.sleep(rng.uniform(0.5, 2.0))
        store.send_signal(signal.SIGKILL)
        store.wait()
        store = start(env, tmp_path, "store", "store")
    finish(enrich)
    store.send_signal(signal.SIGTERM)  # graceful: flushes and commits what it holds
    finish(store)
    store = start(env, tmp_path, "store", "store", "--idle-exit", "2")
    finish(store)
    text = logs(tmp_path, "enrich")
    assert text.count("records_emitted") >= 3  # each enrich run emitted records
    assert_exact(f"chdb:///{tmp_path / 'ch'}", call_ids, expected_legs(capture))
    # enrich rates through Kafka as in one process: answered outbound calls carry their cost
    code = ("import json,sys; from store.clickhouse import ClickHouseStore as S; s=S.connect(sys.argv[1]);"
            "print(json.dumps(s.query(\"SELECT rating, count() AS n, toString(sum(cost)) AS cost"
            " FROM calls FINAL WHERE direction = 'outbound' AND answered GROUP BY rating\")))")
    out = subprocess.run([sys.executable, "-c", code, f"chdb:///{tmp_path / 'ch'}"],
                         capture_output=True, text=True, check=True, timeout=120)
    by_rating = {r["rating"]: r for r in json.loads(out.stdout.strip().splitlines()[-1])}
    assert by_rating["rated"]["n"] > 0 and float(by_rating["rated"]["cost"]) > 0


def events(tmp: Path, name: str, event: str) -> list[dict[str, Any]]:
    """The stage's JSON log lines of ``event`` with a non-empty ``partitions``."""
    out = []
    for line in logs(tmp, name).splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            entry = json.loads(line)
            if entry.get("event") == event and entry.get("partitions"):
                out.append(entry)
    return out


def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_partitions_move_between_two_enrich_processes_without_loss(broker, tmp_path):
    """A second enrich joins the group mid-stream (rebalance: the first gives partitions up),
    then the first dies: every call is stored once."""
    capture, call_ids = make_capture(tmp_path, 3000, seed=8)
    env = stage_env(broker.bootstrap, tmp_path)
    ingest_capture(env, tmp_path, capture)
    first = start(env, tmp_path, "enrich-a", "enrich")
    wait_for(lambda: events(tmp_path, "enrich-a", "partitions_assigned"))
    time.sleep(0.5)
    second = start(env, tmp_path, "enrich-b", "enrich", "--idle-exit", "3")
    wait_for(lambda: events(tmp_path, "enrich-b", "partitions_assigned"))
    time.sleep(1.0)
    first.send_signal(signal.SIGKILL)
    first.wait()
    finish(second)
    store = start(env, tmp_path, "store", "store", "--idle-exit", "2")
    finish(store)
    revoked = events(tmp_path, "enrich-a", "partitions_revoked")
    assert revoked and len(revoked[0]["partitions"]) == 4  # the rebalance took partitions away
    assert_exact(f"chdb:///{tmp_path / 'ch'}", call_ids, expected_legs(capture))


def test_broker_outage_while_ingest_runs_is_carried_by_the_spool(tmp_path):
    """`pbxpipe run` through Kafka against a live PBX; the broker becomes unreachable for a few
    seconds and comes back: frames wait in the spool, in order, and every placed call is stored."""
    gate_port = free_port()
    b = Broker(tmp_path, advertised_port=gate_port)
    gate = TcpGate(b.port)
    gate.port = gate_port
    gate.close()
    gate.open()
    sim_port, manifest = free_port(), tmp_path / "placed.jsonl"
    env = stage_env(f"127.0.0.1:{gate_port}", tmp_path, PBXPIPE_KAFKA_REQUEST_TIMEOUT_S="1.5")
    sim = subprocess.Popen(
        [*PBXPIPE, "simulate", "--port", str(sim_port), "--calls", "900", "--rate", "60",
         "--speed", "100", "--seed", "21", "--talk", "uniform:5:120", "--manifest",
         str(manifest), "--secret", "s3cret"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(sim_port)
        run = start(env, tmp_path, "run", "run", "--ami-port", str(sim_port), "--ami-secret",
                    "s3cret", "--idle-exit", "3")
        wait_for(lambda: "records_emitted" in logs(tmp_path, "run"))  # calls flowing
        gate.close()
        time.sleep(4.0)
        gate.open()
        finish(run, timeout=150)
        sim.wait(timeout=30)
    finally:
        sim.kill()
        sim.wait()
        gate.shutdown()
        b.stop()
    text = logs(tmp_path, "run")
    assert "kafka_unreachable_spooling" in text and "spool_drained" in text
    placed = {f"pbx1:{json.loads(line)['linkedid']}" for line in manifest.read_text().splitlines()}
    assert len(placed) == 900
    got, _ = stored(f"chdb:///{tmp_path / 'ch'}")
    assert set(got) == placed
    assert all(n == 1 for n in got.values())


# ------------------------------------------------------------------ in-process: store, poison


class FlakyStore:
    """The real store, unavailable (as ClickHouseStore reports it) until ``up_at``."""

    def __init__(self, real: Any, up_at: float) -> None:
        self.real = real
        self.up_at = up_at
        self.failures = 0

    def _check(self) -> None:
        if time.monotonic() < self.up_at:
            self.failures += 1
            raise StoreUnavailable("ClickHouse unavailable: connection refused (test)")

    def write_arrow(self, table: Any, data: Any, token: str) -> int:
        self._check()
        return self.real.write_arrow(table, data, token)  # type: ignore[no-any-return]

    def write_quarantine(self, rows: list[Quarantined], token: str) -> int:
        self._check()
        return self.real.write_quarantine(rows, token)  # type: ignore[no-any-return]


def records_for(calls: int) -> list[CallRecord]:
    """Calls of the last hour (older ones would fall to the retention TTL)."""
    t0 = int(time.time()) - 3600
    out = []
    for n in range(calls):
        out.append(CallRecord(
            call_id=f"pbx1:{t0 + n}.1", pbx_id="pbx1", linkedid=f"{t0 + n}.1",
            direction="inbound", caller="+48601234567", caller_name="", called="100",
            answered=False, first_answered_by=None, last_answered_by=None, status="missed",
            start=t0 + n, answer=None, end=t0 + 10.0 + n, duration_s=10.0,
            wait_s=None, talk_s=0.0, hangup_cause=16, hangup_cause_text="", hangup_by="caller",
            extensions_rang=(), queue="", transferred=False, forwarded=False, recordings=(),
            disposition="NO ANSWER", incomplete=False, version=5))
    return out


async def produce(settings: Any, topic: str, messages: list[tuple[bytes, bytes, bytes, float]]) -> None:
    from kafkaio.client import Producer, ensure_topics, make_producer

    await ensure_topics(settings, [topic, settings.kafka_dead_letter_topic])
    p = Producer(make_producer(settings), "test")
    await p.start()
    try:
        await p.send(topic, messages)
    finally:
        await p.stop()


def test_store_pauses_while_clickhouse_is_down_and_drops_nothing(broker, tmp_path):
    """ClickHouse refuses inserts for a while: the store backs off with fetching paused, then
    inserts every record once and commits."""
    from pbxpipe.cmd_kafka import open_kafka_store
    from store.stage import StoreStage

    settings = load_settings({"kafka_bootstrap": broker.bootstrap, "kafka_idempotence": False,
                              "kafka_partitions": 3, "batch_rows": 500, "batch_age_s": 0.2,
                              "clickhouse_dsn": f"chdb:///{tmp_path / 'ch'}",
                              "kafka_backoff_max_s": 0.5})
    records = records_for(2000)
    msgs = [(k.call_key(r.pbx_id, r.linkedid), record_encoder.encode(r), k.KIND_CALL, r.end)
            for r in records]
    real = open_kafka_store(settings)
    try:
        flaky = FlakyStore(real, up_at=time.monotonic() + 1e9)
        paused_seen: list[float] = []

        async def scenario() -> None:
            await produce(settings, settings.kafka_records_topic, msgs)
            stage = StoreStage(settings, flaky)
            await stage.start()
            stop = asyncio.Event()
            task = asyncio.create_task(stage.run(stop))
            deadline = time.monotonic() + 30
            while flaky.failures < 3:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            paused_seen.append(REGISTRY.get_sample_value("pbxpipe_store_fetch_paused") or 0)
            assert stage.consumer.paused()
            flaky.up_at = time.monotonic()  # ClickHouse is back
            while stage.rows < len(msgs):
                assert time.monotonic() < deadline + 30
                await asyncio.sleep(0.05)
            stop.set()
            await task
            await stage.close()

        asyncio.run(scenario())
        assert paused_seen == [1.0]
        got = real.query("SELECT call_id, count() AS n FROM calls FINAL GROUP BY call_id")
        assert {r["call_id"] for r in got} == {r.call_id for r in records}
        assert REGISTRY.get_sample_value("pbxpipe_store_fetch_paused") == 0
    finally:
        real.close()


def test_poison_goes_to_the_dead_letter_topic_and_a_poisoned_batch_stops_the_consumer(broker, tmp_path):
    """Undecodable records are dead-lettered with reason and origin; the good ones are stored.
    A fetch that is mostly poison stops the consumer instead."""

    from pbxpipe.cmd_kafka import open_kafka_store
    from store.stage import StoreStage

    settings = load_settings({"kafka_bootstrap": broker.bootstrap, "kafka_idempotence": False,
                              "kafka_partitions": 1, "batch_age_s": 0.1,
                              "clickhouse_dsn": f"chdb:///{tmp_path / 'ch'}"})
    good = records_for(30)
    msgs = [(k.call_key("pbx1", r.linkedid), record_encoder.encode(r), k.KIND_CALL, r.end)
            for r in good]
    msgs.insert(5, (b"pbx1:x", b"\xc1 not msgpack", k.KIND_CALL, 1.0))
    msgs.insert(9, (b"pbx1:y", record_encoder.encode({"call_id": 1}), k.KIND_LEG, 1.0))
    real = open_kafka_store(settings)
    try:
        async def scenario() -> list[Any]:
            await produce(settings, settings.kafka_records_topic, msgs)
            stage = StoreStage(settings, real)
            await stage.start()
            await stage.run(asyncio.Event(), idle_exit=1.0)
            await stage.close()
            return await read_topic(broker.bootstrap, settings.kafka_dead_letter_topic)

        dead = asyncio.run(scenario())
        assert len(dead) == 2
        headers = [dict(r.headers) for r in dead]
        assert {h[k.HEADER_DLQ_REASON] for h in headers} == {k.DLQ_UNDECODABLE.encode()}
        assert {h[k.HEADER_DLQ_OFFSET] for h in headers} == {b"5", b"9"}
        assert {h[k.HEADER_DLQ_TOPIC] for h in headers} == {settings.kafka_records_topic.encode()}
        assert {r.value for r in dead} == {msgs[5][1], msgs[9][1]}
        assert REGISTRY.get_sample_value("pbxpipe_kafka_dead_letters_total",
                                         {"stage": "store", "reason": "undecodable"}) >= 2
        got = real.query("SELECT count() AS n FROM calls FINAL")
        assert got[0]["n"] == 30

        poisoned = load_settings({**msgspec_dict(settings), "kafka_records_topic": "poisoned",
                                  "kafka_store_group": "g2"})

        async def mostly_poison() -> None:
            await produce(poisoned, "poisoned", [(b"k", b"\xc1", k.KIND_CALL, 1.0)] * 20)
            stage = StoreStage(poisoned, real)
            await stage.start()
            try:
                await stage.run(asyncio.Event(), idle_exit=5.0)
            finally:
                await stage.close()

        with pytest.raises(PoisonBatch, match="20 of 20"):
            asyncio.run(mostly_poison())
    finally:
        real.close()


def test_dead_letters_are_listed_and_records_replayed_into_the_store(broker, tmp_path):
    """`pbxpipe dead-letters list` shows each dead letter's origin, stage and reason; `replay`
    sends the records-topic ones back (their kind header alone) and the store inserts them, once
    however often they are replayed; raw-topic frames are counted, not sent."""
    from aiokafka.structs import ConsumerRecord

    from kafkaio import records_topic
    from kafkaio.client import (
        DeadLetters,
        Producer,
        ensure_topics,
        make_producer,
        read_to_end,
    )

    env = stage_env(broker.bootstrap, tmp_path, PBXPIPE_KAFKA_PARTITIONS="1")
    settings = load_settings({"kafka_bootstrap": broker.bootstrap, "kafka_idempotence": False,
                              "kafka_partitions": 1})
    records = records_for(30)
    batches = records_topic.messages(records)  # as enrich sends them
    assert len(batches) == 1

    def refused(topic: str, offset: int, message: tuple[bytes, bytes, bytes, float]) -> Any:
        key, value, kind, ts = message
        return ConsumerRecord(topic, 0, offset, int(ts * 1000), 0, key, value, None, len(key),
                              len(value), [(k.HEADER_KIND, kind)])

    async def dead_letter() -> None:  # as a store with a bug, and enrich, would have
        await ensure_topics(settings, [settings.kafka_records_topic, settings.kafka_raw_topic,
                                       settings.kafka_dead_letter_topic])
        producer = Producer(make_producer(settings), "test")
        await producer.start()
        try:
            await DeadLetters(producer, settings.kafka_dead_letter_topic, "store").send(
                [(refused(settings.kafka_records_topic, 41, batches[0]), k.DLQ_UNDECODABLE,
                  "calls.status: not one of its values: ['voicemail']")])
            await DeadLetters(producer, settings.kafka_dead_letter_topic, "enrich").send(
                [(refused(settings.kafka_raw_topic, 7, (b"pbx1:1.1", b"\xc1", k.KIND_AMI, time.time())),
                  k.DLQ_UNDECODABLE, "not msgpack")])
        finally:
            await producer.stop()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*PBXPIPE, "dead-letters", *args], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done

    async def records_topic_now() -> list[Any]:
        return [r async for rs in read_to_end(settings, settings.kafka_records_topic) for r in rs]

    assert cli("list").stdout == "no dead letters in pbxpipe.dead-letter\n"  # none, no topic yet
    asyncio.run(dead_letter())
    listed = [json.loads(line) for line in cli("list", "--json").stdout.splitlines()]
    assert [(d["stage"], d["reason"], d["origin_topic"], d["origin_offset"], d["kind"])
            for d in listed] == [
        ("store", "undecodable", settings.kafka_records_topic, 41, "call-batch"),
        ("enrich", "undecodable", settings.kafka_raw_topic, 7, "ami")]
    assert listed[0]["detail"] == "calls.status: not one of its values: ['voicemail']"
    assert listed[0]["value_bytes"] == len(batches[0][1]) and listed[1]["key"] == "pbx1:1.1"
    assert "calls.status: not one of its values" in cli("list").stdout  # the table

    planned = json.loads(cli("replay", "--dry-run").stdout)
    assert planned["would_replay"] == 1 and list(planned["not_replayed"].values()) == [1]
    assert "enrich passes over" in next(iter(planned["not_replayed"]))
    assert json.loads(cli("replay", "--stage", "enrich").stdout)["replayed"] == 0
    assert asyncio.run(records_topic_now()) == []

    for _ in range(2):  # twice: the store's tables collapse what was sent again
        assert json.loads(cli("replay").stdout)["to"] == {settings.kafka_records_topic: 1}
    back = asyncio.run(records_topic_now())
    assert [(r.key, r.value, list(r.headers)) for r in back] == 2 * [
        (batches[0][0], batches[0][1], [(k.HEADER_KIND, b"call-batch")])]
    finish(start(env, tmp_path, "store", "store", "--idle-exit", "1"))
    counts, _ = stored(env["PBXPIPE_CLICKHOUSE_DSN"])
    assert sorted(counts) == sorted(r.call_id for r in records)
    assert set(counts.values()) == {1}


def msgspec_dict(settings: Any) -> dict[str, Any]:
    import msgspec

    return msgspec.structs.asdict(settings)


def test_missing_topics_are_created_or_named(broker):
    """With topic creation off, a missing topic is an error that says what to create."""
    from kafkaio.client import ensure_topics

    settings = load_settings({"kafka_bootstrap": broker.bootstrap, "kafka_create_topics": False,
                              "kafka_partitions": 2})
    with pytest.raises(TopicsMissing, match="nope-1.*2 partitions each, configs nope-1: "
                                            "retention.ms=604800000,cleanup.policy=delete"):
        asyncio.run(ensure_topics(settings, ["nope-1"]))
    created = load_settings({"kafka_bootstrap": broker.bootstrap, "kafka_partitions": 2})
    asyncio.run(ensure_topics(created, ["made-1"]))
    asyncio.run(ensure_topics(settings, ["made-1"]))  # exists now: fine


async def _topic_configs(bootstrap: str, topics: list[str]) -> dict[str, dict[str, str]]:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    finally:
        await admin.close()
    return {r[3]: {e[0]: e[1] for e in r[4]} for resp in responses for r in resp.resources}


async def _create(bootstrap: str, configs: dict[str, dict[str, str]]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 1, 1, topic_configs=c) for t, c in configs.items()])
    finally:
        await admin.close()


def test_topics_are_created_deleted_by_age_and_one_kept_longer_is_reported(broker, tmp_path):
    """The topics hold phone numbers: the pipeline creates them with the configured retention
    (the dead letters' own), and warns at start about an existing topic that keeps data longer,
    naming what it found and what to set, without refusing to start; `retention status` shows
    the topics too."""
    from structlog.testing import capture_logs

    from kafkaio.client import ensure_topics

    settings = load_settings({"kafka_bootstrap": broker.bootstrap, "kafka_partitions": 1,
                              "kafka_raw_topic": "ret-raw", "kafka_records_topic": "ret-records",
                              "kafka_dead_letter_topic": "ret-dlq", "kafka_retention_days": 2,
                              "kafka_dead_letter_retention_days": 10.5})
    with capture_logs() as logs:
        asyncio.run(ensure_topics(settings, ["ret-raw", "ret-dlq"]))
    configs = asyncio.run(_topic_configs(broker.bootstrap, ["ret-raw", "ret-dlq"]))
    assert configs["ret-raw"]["retention.ms"] == str(2 * 86_400_000)
    assert configs["ret-dlq"]["retention.ms"] == str(int(10.5 * 86_400_000))
    assert {c["cleanup.policy"] for c in configs.values()} == {"delete"}
    assert not [e for e in logs if e["log_level"] == "warning"]

    # made by someone else: forever, compacted, longer, and shorter than configured
    asyncio.run(_create(broker.bootstrap, {
        "ret-records": {"retention.ms": "-1"},
        "ret-compact": {"cleanup.policy": "compact", "retention.ms": "1000"},
        "ret-long": {"retention.ms": str(3 * 86_400_000)},
        "ret-short": {"retention.ms": str(86_400_000), "cleanup.policy": "delete"},
    }))
    with capture_logs() as logs:
        asyncio.run(ensure_topics(settings, ["ret-raw", "ret-records", "ret-dlq", "ret-compact",
                                             "ret-long", "ret-short"]))
    warned = {e["topic"]: e for e in logs if e["event"] == "kafka_topic_retention_too_long"}
    assert sorted(warned) == ["ret-compact", "ret-long", "ret-records"]
    assert warned["ret-records"]["found"] == "retention.ms=-1: kept forever"
    assert warned["ret-compact"]["found"].startswith("cleanup.policy=compact")
    assert warned["ret-long"]["found"] == "retention.ms=259200000 (3 days)"
    assert warned["ret-long"]["wanted"] == "retention.ms=172800000,cleanup.policy=delete"
    assert "--entity-name ret-long --add-config retention.ms=172800000" in warned["ret-long"]["hint"]

    # `pbxpipe retention status` lists the pipeline's topics beside the tables' TTLs
    env = {"PATH": "/usr/bin:/bin", "PBXPIPE_LOG_FORMAT": "json",
           "PBXPIPE_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'ch'}",
           "PBXPIPE_OBJECT_STORE": f"dir://{tmp_path / 'objects'}",
           "PBXPIPE_KAFKA_RAW_TOPIC": "ret-raw", "PBXPIPE_KAFKA_RECORDS_TOPIC": "ret-records",
           "PBXPIPE_KAFKA_DEAD_LETTER_TOPIC": "ret-none", "PBXPIPE_KAFKA_RETENTION_DAYS": "2"}
    shown = subprocess.run([*PBXPIPE, "retention", "status"], capture_output=True, text=True,
                           timeout=120, env={**env, "PBXPIPE_KAFKA_BOOTSTRAP": broker.bootstrap})
    assert shown.returncode == 0, shown.stderr
    topics = json.loads(shown.stdout)["kafka_topics"]
    assert topics["ret-raw"] == {"exists": True, "retention.ms": "172800000",
                                 "cleanup.policy": "delete", "too_long": None,
                                 "wanted": "retention.ms=172800000,cleanup.policy=delete"}
    assert topics["ret-records"]["too_long"] == "retention.ms=-1: kept forever"
    assert topics["ret-none"] == {"exists": False}
    # Kafka away: the tables' part still shows, and the topics say why they do not
    shown = subprocess.run([*PBXPIPE, "retention", "status"], capture_output=True, text=True,
                           timeout=120, env={**env, "PBXPIPE_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"})
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert "calls" in status["ttl"] and status["kafka_topics"]["error"].startswith("Kafka at 127.0.0.1:")


def test_topic_retention_cannot_outlive_the_call_records():
    """Settings: a topic retention beyond the calls' own (or not positive) is a config error
    naming both variables."""
    from contracts.errors import ConfigError

    with pytest.raises(ConfigError, match=r"kafka_retention_days 400 .*PBXPIPE_KAFKA_RETENTION_"
                                          r"DAYS, PBXPIPE_RETENTION_CALL_DAYS"):
        load_settings({"kafka_retention_days": 400}, environ={})
    with pytest.raises(ConfigError, match="kafka_dead_letter_retention_days 0 "):
        load_settings({"kafka_dead_letter_retention_days": 0}, environ={})
    assert load_settings({"kafka_retention_days": 30, "retention_call_days": 30},
                         environ={}).kafka_retention_days == 30


@pytest.mark.parametrize("stage", ["ingest", "enrich", "store"])
def test_a_stage_facing_no_broker_exits_with_one_clear_line(stage, tmp_path):
    """Kafka unreachable at start: exit 1 with the error, and the clients closed (asyncio would
    otherwise report them as unclosed)."""
    env = {**os.environ, "PBXPIPE_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
           "PBXPIPE_KAFKA_REQUEST_TIMEOUT_S": "2", "PBXPIPE_KAFKA_SPOOL_DIR": str(tmp_path / "spool"),
           "PBXPIPE_CLICKHOUSE_DSN": f"chdb:///{tmp_path / 'ch'}", "PYTHONWARNINGS": "always"}
    out = subprocess.run([*PBXPIPE, stage], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    assert "pbxpipe: error: Kafka at 127.0.0.1:" in out.stderr and "unreachable" in out.stderr
    assert "Unclosed" not in out.stdout + out.stderr


FAILED_START = """
import asyncio, sys
from contracts.config import load_settings
from contracts.errors import BrokerError
from contracts.profile import DEFAULT_PROFILE
from enrich.stage import EnrichStage
from ingest.stage import IngestStage
from store.stage import StoreStage

async def main(stage):
    settings = load_settings()
    stage = {"ingest": lambda: IngestStage(settings), "enrich": lambda: EnrichStage(settings, DEFAULT_PROFILE),
             "store": lambda: StoreStage(settings, None)}[stage]()
    try:
        await stage.start()
    except BrokerError as e:
        print("start failed:", e, file=sys.stderr)
    if hasattr(stage, "spool"):
        stage.spool.close()  # not a Kafka client: the caller's to close

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.parametrize("stage", ["ingest", "enrich", "store"])
def test_a_stage_whose_start_fails_has_closed_its_clients(stage, tmp_path):
    """A start() that fails (Kafka unreachable) stops the clients it created before the error
    reaches the caller, so a caller without a close() of its own (a benchmark) leaves nothing
    for aiokafka to report as unclosed."""
    env = {**os.environ, "PBXPIPE_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
           "PBXPIPE_KAFKA_REQUEST_TIMEOUT_S": "2", "PBXPIPE_KAFKA_SPOOL_DIR": str(tmp_path / "spool"),
           "PYTHONWARNINGS": "always"}
    out = subprocess.run([sys.executable, "-c", FAILED_START, stage], env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "start failed: Kafka at 127.0.0.1:" in out.stderr and "unreachable" in out.stderr
    assert "Unclosed" not in out.stdout + out.stderr


def test_run_via_kafka_closes_a_stage_only_once_its_start_has_ended(monkeypatch, tmp_path):
    """`pbxpipe run` starts enrich and store together. When one start fails, the other is
    closed only after its own start has ended (closing a client still starting would race its
    start), and the error that stopped the run is the one raised."""
    from contracts.errors import BrokerError
    from pbxpipe import cmd_kafka
    from enrich.stage import EnrichStage
    from ingest.stage import IngestStage
    from store.stage import StoreStage

    seen: list[str] = []

    async def nothing(self: Any) -> None:
        seen.append(f"{type(self).__name__} start")

    async def fails(self: Any) -> None:
        await asyncio.sleep(0.01)
        seen.append("EnrichStage start failed")
        raise BrokerError("Kafka at x: unreachable")

    async def slow(self: Any) -> None:
        await asyncio.sleep(0.2)
        seen.append("StoreStage started")

    def closing(cls: type) -> Any:
        real = cls.close

        async def close(self: Any) -> None:
            seen.append(f"{cls.__name__} close")
            await real(self)
        return close

    monkeypatch.setattr(IngestStage, "start", nothing)
    monkeypatch.setattr(EnrichStage, "start", fails)
    monkeypatch.setattr(StoreStage, "start", slow)
    for cls in (IngestStage, EnrichStage, StoreStage):
        monkeypatch.setattr(cls, "close", closing(cls))
    settings = load_settings({"kafka_bootstrap": f"127.0.0.1:{free_port()}",
                              "kafka_spool_dir": str(tmp_path / "spool")})
    with pytest.raises(BrokerError, match="unreachable"):
        asyncio.run(cmd_kafka.run_via_kafka(settings, DEFAULT_PROFILE, store=None))
    assert seen.index("StoreStage started") < seen.index("StoreStage close")
    assert seen[-3:] == ["IngestStage close", "EnrichStage close", "StoreStage close"]


@pytest.mark.parametrize("stage", ["ingest", "enrich", "store"])
def test_a_stage_given_an_unknown_compression_exits_with_one_clear_line(stage, tmp_path):
    """A misspelt compression is a configuration error naming the setting, raised before any
    client exists: no traceback, and no consumer left unclosed."""
    env = {**os.environ, "PBXPIPE_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
           "PBXPIPE_KAFKA_COMPRESSION": "snapy", "PBXPIPE_KAFKA_SPOOL_DIR": str(tmp_path / "spool"),
           "PBXPIPE_CLICKHOUSE_DSN": f"chdb:///{tmp_path / 'ch'}", "PYTHONWARNINGS": "always"}
    out = subprocess.run([*PBXPIPE, stage], env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 1, out.stderr
    assert "pbxpipe: error: " in out.stderr and "PBXPIPE_KAFKA_COMPRESSION" in out.stderr
    assert "Traceback" not in out.stderr
    assert "Unclosed" not in out.stdout + out.stderr


def test_batches_are_compressed_off_the_event_loop_unless_idempotent():
    """Without idempotence a batch is final once filled, so it is built (compressed) in a
    thread; an idempotent producer stamps each batch when it is sent, so there it is not."""
    from kafkaio.client import Producer, make_producer

    async def prebuilds(**overrides: Any) -> bool:
        producer = make_producer(load_settings({"kafka_bootstrap": "127.0.0.1:9", **overrides}))
        try:
            return Producer(producer, "test")._prebuild
        finally:
            await producer.stop()

    assert asyncio.run(prebuilds(kafka_idempotence=False))
    assert not asyncio.run(prebuilds(kafka_idempotence=True))
    assert not asyncio.run(prebuilds(kafka_idempotence=False, kafka_compression="none"))
