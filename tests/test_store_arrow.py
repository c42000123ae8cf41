"""The records topic's Arrow batches and the store's Arrow insert: records survive the wire and
ClickHouse unchanged, bad batches are told apart from good ones, replays collapse, and the store
stage dead-letters a poison message while storing the rest of its fetch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from contracts import kafka as k
from contracts import metrics
from contracts.config import Settings, load_settings
from contracts.metrics import REGISTRY
from contracts.profile import DEFAULT_PROFILE
from contracts.records import CallLeg, CallRecord, Quarantined
from kafkaio import records_topic as rt
from kafkaio.records_topic import RecordsError
from store.clickhouse import ClickHouseStore, RetryPolicy
from store.schema import CALL_LEGS, CALLS
from tests.kafkabroker import Broker, read_topic

T0 = float(int(time.time()) - 3600)  # within the retention TTL


def call(n: int, **kw: Any) -> CallRecord:
    fields: dict[str, Any] = {
        "call_id": f"pbx1:{T0 + n}", "pbx_id": "pbx1", "linkedid": f"{T0 + n}", "direction": "outbound",
        "caller": "101", "caller_name": "Łukasz Żółć", "called": "0700123456", "answered": True,
        "first_answered_by": "external", "last_answered_by": "external", "status": "answered",
        "start": round(T0 + n, 3), "answer": round(T0 + n + 4.008, 3), "end": round(T0 + n + 19.011, 3),
        "duration_s": 19.011, "wait_s": 4.008, "talk_s": 15.003, "hangup_cause": 16,
        "hangup_cause_text": "Normal Clearing", "hangup_by": "callee", "extensions_rang": ("101", "102"),
        "queue": "", "transferred": False, "forwarded": True, "recordings": ("2026/11/24/a b.wav",),
        "disposition": "ANSWERED", "incomplete": False, "version": 3 + n,
        "cost": Decimal("1.2346"), "cost_buy": Decimal("0.5"), "margin": Decimal("0.7346"), "currency": "PLN",
        "billed_s": 60, "rating": "rated", "called_e164": "+48700123456", "tariff_plan": "default",
        "tariff_version": "abc", "tariff_prefix": "48700", "destination": "Premium", "rate": Decimal("1.2346"),
        "destination_category": "premium", "tariff_band": "peak", "increments": "60/60",
    }
    fields.update(kw)
    return CallRecord(**fields)


def missed(n: int) -> CallRecord:
    return call(n, direction="inbound", answered=False, first_answered_by=None,
                last_answered_by=None, status="missed", answer=None, wait_s=None, talk_s=0.0,
                extensions_rang=(), recordings=(), caller_name="", cost=Decimal(0),
                cost_buy=Decimal(0), margin=Decimal(0), currency="", billed_s=0, rating="",
                called_e164="", tariff_plan="", tariff_version="", tariff_prefix="",
                destination="", destination_category="", tariff_band="", rate=Decimal(0),
                increments="")


def leg(n: int, **kw: Any) -> CallLeg:
    fields: dict[str, Any] = {
        "leg_id": f"pbx1:{T0 + n}.1", "call_id": f"pbx1:{T0 + n}", "pbx_id": "pbx1", "linkedid": f"{T0 + n}",
        "kind": "device", "extension": "101", "channel": "PJSIP/101-0000001a", "start": round(T0 + n, 3),
        "answer": None, "end": round(T0 + n + 10.5, 3), "ring_s": 10.5, "talk_s": 0.0, "outcome": "NOANSWER",
        "answered": False, "version": 2,
    }
    fields.update(kw)
    return CallLeg(**fields)


QUARANTINED = Quarantined(pbx_id="pbx1", received_at=T0, reason="malformed_frame",
                          detail="no colon", raw="garbage \\xff line")


def decode_all(messages: list[Any]) -> dict[bytes, list[Any]]:
    """Every message decoded back to Structs, by message kind."""
    out: dict[bytes, list[Any]] = {}
    for _key, value, kind_header, _ts in messages:
        kind = rt.BY_MESSAGE_KIND[kind_header]
        out.setdefault(kind_header, []).extend(rt.records(kind, rt.decode(kind, value)))
    return out


# -- the wire format (pure) ---------------------------------------------------------------------


def test_records_round_trip_through_the_arrow_batches() -> None:
    """Calls (rated, unrated, None fields, empty and non-empty arrays, non-ASCII), legs and
    quarantined items come back equal to the Structs, in order, one message kind each."""
    calls = [call(1), missed(2), call(3, answer=None, incomplete=True, hangup_by="")]
    legs = [leg(1), leg(2, answer=round(T0 + 5.5, 3), answered=True, outcome="ANSWER")]
    outputs = [calls[0], legs[0], QUARANTINED, calls[1], legs[1], calls[2]]
    got = decode_all(rt.messages(outputs))
    assert got == {k.KIND_CALL_BATCH: calls, k.KIND_LEG_BATCH: legs,
                   k.KIND_QUARANTINED_BATCH: [QUARANTINED]}


@settings(max_examples=40, deadline=None)
@given(names=st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=30),
                      min_size=1, max_size=20),
       cents=st.integers(min_value=-10**12, max_value=10**12))
def test_any_text_and_money_round_trip(names: list[str], cents: int) -> None:
    """Any text and any Decimal(18, 4) amount survive the batch unchanged."""
    money = Decimal(cents).scaleb(-4)
    calls = [call(i, caller_name=n, extensions_rang=(n,), cost=money) for i, n in enumerate(names)]
    assert decode_all(rt.messages(calls))[k.KIND_CALL_BATCH] == calls


def test_batches_are_split_by_rows_and_bytes() -> None:
    """A fold's outputs become messages of at most MESSAGE_ROWS rows, each under MESSAGE_BYTES
    (big quarantined frames split further), keyed by their first record's call."""
    calls = [missed(i) for i in range(rt.MESSAGE_ROWS * 2 + 5)]
    msgs = rt.messages(calls)
    assert [rt.decode(rt.CALLS, m[1]).num_rows for m in msgs] == [rt.MESSAGE_ROWS] * 2 + [5]
    assert msgs[1][0] == k.call_key("pbx1", calls[rt.MESSAGE_ROWS].linkedid)
    assert msgs[0][3] == max(c.end for c in calls[: rt.MESSAGE_ROWS])
    big = [msgspec.structs.replace(QUARANTINED, raw="x" * 200_000, detail=str(i)) for i in range(6)]
    msgs = rt.messages(big)
    assert all(len(m[1]) <= rt.MESSAGE_BYTES for m in msgs) and len(msgs) >= 3
    assert decode_all(msgs)[k.KIND_QUARANTINED_BATCH] == big


def _stream(data: pa.Table) -> bytes:
    return rt.encode(data)


@pytest.mark.parametrize("case", ["garbage", "truncated", "legs_as_calls", "missing_column",
                                  "null_in_required", "outside_literal", "int_as_float"])
def test_batches_failing_their_schema_are_rejected(case: str) -> None:
    """What msgspec would reject is rejected here too, with a reason: bytes that are no Arrow
    stream, another Struct's columns, a missing column, a null where the Struct has none, a
    value outside a Literal, a wrong type."""
    good = rt.table(rt.CALLS, [call(1), missed(2)])
    if case == "garbage":
        value = b"\xc1 not arrow"
    elif case == "truncated":
        value = _stream(good)[:-100]
    elif case == "legs_as_calls":
        value = _stream(rt.table(rt.LEGS, [leg(1)]))
    elif case == "missing_column":
        value = _stream(good.drop_columns(["queue"]))
    elif case == "null_in_required":
        i = good.schema.get_field_index("caller")
        value = _stream(pa.Table.from_arrays(
            [*good.columns[:i], pa.array(["101", None]), *good.columns[i + 1:]],
            schema=good.schema))
    elif case == "outside_literal":
        i = good.schema.get_field_index("direction")
        value = _stream(good.set_column(i, good.schema.field(i), pa.array(["sideways", "inbound"])))
    else:
        i = good.schema.get_field_index("version")
        value = _stream(good.set_column(i, pa.field("version", pa.float64(), nullable=False),
                                        pa.array([1.0, 2.0])))
    with pytest.raises(RecordsError):
        rt.decode(rt.CALLS, value)
    assert rt.decode(rt.CALLS, _stream(good)).equals(good)


def test_batches_written_before_a_field_with_a_default_still_decode() -> None:
    """A batch from an enrich that predates a field with a default (``built_from``) reads with
    that default, as an older msgpack record does; a column the Struct has no default for is
    still required, and a column of the wrong type still rejected."""
    calls = [call(1), missed(2)]
    old = rt.table(rt.CALLS, calls).drop_columns(["built_from"])
    assert rt.records(rt.CALLS, rt.decode(rt.CALLS, _stream(old))) == calls
    rebuilt = call(3, built_from="cdr")
    assert rt.records(rt.CALLS, rt.decode(rt.CALLS, _stream(rt.table(rt.CALLS, [rebuilt])))) == [rebuilt]
    with pytest.raises(RecordsError):
        rt.decode(rt.CALLS, _stream(old.drop_columns(["queue"])))
    i = old.schema.get_field_index("version")
    with pytest.raises(RecordsError):
        rt.decode(rt.CALLS, _stream(old.set_column(i, pa.field("version", pa.float64(), nullable=False),
                                                   pa.array([1.0, 2.0]))))


def test_encoding_says_which_struct_does_not_fit() -> None:
    """A money amount finer than Decimal(18, 4) cannot be written: a clear error, never rounding."""
    with pytest.raises(RecordsError, match="CallRecord"):
        rt.messages([call(1, cost=Decimal("0.00001"))])


def test_single_record_messages_are_still_read() -> None:
    """What enrich sent before the batches (one msgpack Struct a message) decodes to one row."""
    from contracts.records import record_encoder

    one = rt.decode_record(rt.CALLS, record_encoder.encode(missed(4)))
    assert rt.records(rt.CALLS, one) == [missed(4)]
    with pytest.raises(RecordsError):
        rt.decode_record(rt.LEGS, record_encoder.encode({"call_id": 1}))


def test_observe_many_matches_observe() -> None:
    """The vectorised histogram update gives the exposition observe() gives, bounds included."""
    values = [0.0, 0.25, 0.2500001, 0.9, 1.0, 2.0, 3600.0, 5000.0, 1.5, 1.5]
    exposed = []
    for bulk in (False, True):
        registry = CollectorRegistry()
        h = Histogram("x_seconds", "x", buckets=(0.25, 1, 2, 3600), registry=registry)
        if bulk:
            metrics.observe_many(h, pa.array(values).to_numpy())
        else:
            for v in values:
                h.observe(v)
        exposed.append([line for line in generate_latest(registry).decode().splitlines()
                        if not line.startswith("x_seconds_created")])
    assert exposed[0] == exposed[1]


def test_spend_alerts_over_a_table_match_alerts_over_records() -> None:
    """The store's spend watch over Arrow rows raises the alerts, and counts the outcomes, that
    the per-record watch does."""
    from enrich.rating import rating_stage

    cfg = load_settings({"tariff_alert_calls_per_hour": 2, "tariff_alert_cost_per_hour": "3"})
    calls = ([call(i) for i in range(4)] + [missed(10), call(11, destination_category="mobile")]
             + [call(20 + i, caller="102", cost=Decimal("1.75")) for i in range(2)])

    def rated(pbx: str) -> float:
        return REGISTRY.get_sample_value("pbxpipe_tariffs_rated_calls_total",
                                         {"pbx": pbx, "outcome": "rated"}) or 0.0

    per_record = rating_stage(cfg, DEFAULT_PROFILE)
    assert per_record is not None
    before = rated("pbx1")
    want = [a for c in calls for a in per_record.observe(c)]
    assert rated("pbx1") - before == 7
    per_table = rating_stage(cfg, DEFAULT_PROFILE)
    assert per_table is not None
    got = per_table.observe_table(rt.table(rt.CALLS, calls))
    assert rated("pbx1") - before == 14
    # 101: 4.94 > 3 at its third call, 3 calls > 2 at the same; 102: 3.50 > 3 at its second
    assert [(a.key, a.kind, a.call_id, a.cost) for a in got] == [
        ("pbx1/101", "spend", f"pbx1:{T0 + 2}", Decimal("3.7038")),
        ("pbx1/101", "calls", f"pbx1:{T0 + 2}", Decimal("3.7038")),
        ("pbx1/102", "spend", f"pbx1:{T0 + 21}", Decimal("3.5000"))]
    assert got == want


# -- ClickHouse (chDB) ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseStore]:
    s = ClickHouseStore.connect(f"chdb://{tmp_path_factory.mktemp('chdb-arrow') / 'data'}",
                                retry=RetryPolicy(attempts=2, initial_s=0.01, max_s=0.02))
    s.migrate()
    yield s
    s.close()


def rows(store: ClickHouseStore, table: str, pbx: str, final: bool = True) -> list[dict[str, Any]]:
    return store.query(f"SELECT * FROM {table}{' FINAL' if final else ''} "
                       "WHERE pbx_id = {p:String} ORDER BY start, version", {"p": pbx})


@pytest.mark.integration
def test_arrow_insert_stores_what_the_struct_insert_stores(store: ClickHouseStore) -> None:
    """The same calls and legs written as Arrow batches and as Structs read back identically
    (times to the millisecond, money, Nullable, arrays, the materialized parties)."""
    calls = [call(20), missed(21), call(22, answer=None, first_answered_by=None)]
    legs = [leg(20), leg(21, answer=round(T0 + 24.5, 3), answered=True, outcome="ANSWER")]
    store.write_arrow(CALLS, rt.table(rt.CALLS, [msgspec.structs.replace(c, pbx_id="arrow")
                                                 for c in calls]), "arrow-calls")
    store.write_arrow(CALL_LEGS, rt.table(rt.LEGS, [msgspec.structs.replace(x, pbx_id="arrow")
                                                    for x in legs]), "arrow-legs")
    store.write_calls([msgspec.structs.replace(c, pbx_id="structs") for c in calls], "st-calls")
    store.write_legs([msgspec.structs.replace(x, pbx_id="structs") for x in legs], "st-legs")
    for table in ("calls", "call_legs"):
        a, b = rows(store, table, "arrow"), rows(store, table, "structs")
        assert [{**r, "pbx_id": ""} for r in a] == [{**r, "pbx_id": ""} for r in b]
        assert len(a) == (3 if table == "calls" else 2)
    [p] = store.query("SELECT parties FROM calls WHERE pbx_id = 'arrow' AND call_id = {c:String}",
                      {"c": calls[0].call_id})
    assert sorted(p["parties"]) == ["0700123456", "101", "102", "external"]


@pytest.mark.integration
def test_a_replayed_batch_leaves_one_row_per_call(store: ClickHouseStore) -> None:
    """The same batch again under its token is a no-op; under another token (a replay after a
    crash) it is stored again and FINAL reads one row per call, the highest version."""
    calls = [missed(30 + i) for i in range(50)]
    data = rt.table(rt.CALLS, [msgspec.structs.replace(c, pbx_id="replay") for c in calls])
    store.write_arrow(CALLS, data, "replay-1")
    store.write_arrow(CALLS, data, "replay-1")
    assert len(rows(store, "calls", "replay", final=False)) == 50
    newer = rt.table(rt.CALLS, [msgspec.structs.replace(c, pbx_id="replay", version=99)
                                for c in calls[:10]])
    store.write_arrow(CALLS, pa.concat_tables([data, newer]), "replay-2")  # one block, dups inside
    got = rows(store, "calls", "replay")
    assert sorted(r["call_id"] for r in got) == sorted(c.call_id for c in calls)
    assert sum(r["version"] == 99 for r in got) == 10


@pytest.mark.integration
def test_arrow_insert_needs_a_token_and_the_table_columns(store: ClickHouseStore) -> None:
    from contracts.errors import StoreError

    data = rt.table(rt.CALLS, [missed(40)])
    with pytest.raises(ValueError, match="token"):
        store.write_arrow(CALLS, data, "")
    with pytest.raises(StoreError, match="columns"):
        store.write_arrow(CALL_LEGS, data, "wrong-table")


# -- the store stage through a real broker -------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    yield b
    b.stop()


async def _through_the_store_stage(cfg: Settings, store: ClickHouseStore, msgs: list[Any],
                                   on_written: Callable[[str, pa.Table], None]) -> None:
    """Produce ``msgs`` to the records topic, then run a StoreStage over it until idle."""
    from kafkaio.client import Producer, ensure_topics, make_producer
    from store.stage import StoreStage

    await ensure_topics(cfg, [cfg.kafka_records_topic, cfg.kafka_dead_letter_topic])
    producer = Producer(make_producer(cfg), "test")
    await producer.start()
    try:
        await producer.send(cfg.kafka_records_topic, msgs)
    finally:
        await producer.stop()
    stage = StoreStage(cfg, store, on_written=on_written)
    await stage.start()
    await stage.run(asyncio.Event(), idle_exit=1.0)
    await stage.close()


@pytest.mark.integration
def test_store_stage_dead_letters_a_poison_batch_and_stores_the_rest(
        broker: Broker, store: ClickHouseStore) -> None:
    """A fetch of batch messages with one poison message among them: the poison goes to the
    dead-letter topic with its reason and origin, every call and leg of the other messages is
    stored, a replayed batch leaves one row per call, on_written sees the inserted tables and the
    hangup-to-insert histogram counts each call row inserted."""
    cfg = load_settings({"kafka_bootstrap": broker.bootstrap, "kafka_idempotence": False,
                         "kafka_partitions": 2, "batch_age_s": 0.2})
    calls = [msgspec.structs.replace(missed(100 + i), pbx_id="stage") for i in range(2500)]
    legs = [msgspec.structs.replace(leg(100 + i), pbx_id="stage") for i in range(300)]
    good = rt.messages([*calls, *legs, msgspec.structs.replace(QUARANTINED, pbx_id="stage")])
    replay = rt.messages(calls[:1000])  # enrich restarted: the same calls sent again
    poison = (b"pbx1:x", rt.encode(rt.table(rt.LEGS, [leg(1)])), k.KIND_CALL_BATCH, T0)
    msgs = [*good[:2], poison, *good[2:], *replay]
    written: dict[str, int] = {}
    latency_before = REGISTRY.get_sample_value("pbxpipe_store_call_latency_seconds_count") or 0.0

    def on_written(table: str, data: pa.Table) -> None:
        written[table] = written.get(table, 0) + data.num_rows

    async def scenario() -> list[Any]:
        await _through_the_store_stage(cfg, store, msgs, on_written)
        return await read_topic(broker.bootstrap, cfg.kafka_dead_letter_topic)

    dead = asyncio.run(scenario())
    assert [r.value for r in dead] == [poison[1]]
    headers = dict(dead[0].headers)
    assert headers[k.HEADER_DLQ_REASON] == k.DLQ_UNDECODABLE.encode()
    assert headers[k.HEADER_KIND] == k.KIND_CALL_BATCH
    assert headers[k.HEADER_DLQ_TOPIC] == cfg.kafka_records_topic.encode()
    assert b"schema" in headers[k.HEADER_DLQ_DETAIL]
    got = store.query("SELECT call_id, count() AS n FROM calls FINAL WHERE pbx_id = 'stage' "
                      "GROUP BY call_id")
    assert {r["call_id"] for r in got} == {c.call_id for c in calls}
    assert {r["n"] for r in got} == {1}
    [n_legs] = store.query("SELECT count() AS n FROM call_legs FINAL WHERE pbx_id = 'stage'")
    assert n_legs["n"] == len(legs)
    [n_q] = store.query("SELECT count() AS n FROM quarantine FINAL WHERE pbx_id = 'stage'")
    assert n_q["n"] == 1
    assert written == {"calls": len(calls) + 1000, "call_legs": len(legs),
                       "quarantine": 1}
    latency = REGISTRY.get_sample_value("pbxpipe_store_call_latency_seconds_count")
    assert latency - latency_before == len(calls) + 1000


@pytest.mark.integration
def test_store_stage_splits_a_fetch_larger_than_a_batch(broker: Broker, store: ClickHouseStore) -> None:
    """One fetch brings 6,000 call rows in 500-row messages; with ``batch_rows`` 1,000 they go
    in as six inserts of 1,000 rows (not one of 6,000), each committed, every call stored once."""

    cfg = load_settings({"kafka_bootstrap": broker.bootstrap, "kafka_idempotence": False,
                         "kafka_partitions": 1, "batch_rows": 1000, "batch_age_s": 30.0,
                         "kafka_records_topic": "split.records", "kafka_store_group": "split"})
    calls = [msgspec.structs.replace(missed(5000 + i), pbx_id="split") for i in range(6000)]
    msgs = [m for i in range(0, len(calls), 500) for m in rt.messages(calls[i : i + 500])]
    inserts: list[int] = []

    asyncio.run(_through_the_store_stage(cfg, store, msgs,
                                         lambda table, data: inserts.append(data.num_rows)))
    assert len(msgs) == 12
    assert inserts == [1000] * 6
    [n] = store.query("SELECT count() AS n, uniqExact(call_id) AS u FROM calls WHERE pbx_id = 'split'")
    assert (n["n"], n["u"]) == (6000, 6000)
