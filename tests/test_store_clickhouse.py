"""store.clickhouse: idempotent writes, faithful round trips, retries, and clear errors."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import msgspec
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.errors import StoreError, StoreUnavailable
from contracts.metrics import REGISTRY
from contracts.records import CallLeg, CallRecord, Quarantined
from store.clickhouse import ClickHouseStore, RetryPolicy, chdb_path
from store.queries import call_history
from store.tenancy import Scope, ScopedReader
from store.schema import batch_token, quarantine_id

FAST = RetryPolicy(attempts=3, initial_s=0.01, max_s=0.02, connect_timeout_s=1)
T0 = 1_795_539_179.81


def call(n: int = 0, **kw: Any) -> CallRecord:
    fields: dict[str, Any] = dict(
        call_id=f"pbx1:{T0 + n}", pbx_id="pbx1", linkedid=f"{T0 + n}", direction="inbound",
        caller="+48601234567", caller_name="Łukasz Żółć", called="+48221234501", answered=True,
        first_answered_by="101", last_answered_by="102", status="answered",
        start=round(T0 + n, 3), answer=round(T0 + n + 4.008, 3), end=round(T0 + n + 19.011, 3),
        duration_s=19.011, wait_s=4.008, talk_s=15.003, hangup_cause=16,
        hangup_cause_text="Normal Clearing", hangup_by="callee", extensions_rang=("101", "102"),
        queue="support", transferred=True, forwarded=False, recordings=("2026/11/24/a b.wav",),
        disposition="ANSWERED", incomplete=False, version=3,
    )
    fields.update(kw)
    return CallRecord(**fields)


def leg(n: int = 0, **kw: Any) -> CallLeg:
    fields: dict[str, Any] = dict(
        leg_id=f"pbx1:{T0 + n}.1", call_id=f"pbx1:{T0}", pbx_id="pbx1", linkedid=f"{T0}",
        kind="device", extension="101", channel="PJSIP/101-0000001a", start=round(T0 + n, 3),
        answer=None, end=round(T0 + n + 10.5, 3), ring_s=10.5, talk_s=0.0, outcome="NOANSWER",
        answered=False, version=2,
    )
    fields.update(kw)
    return CallLeg(**fields)


def rows_written(table: str) -> float:
    return REGISTRY.get_sample_value("pbxpipe_store_rows_written_total", {"table": table}) or 0.0


def insert_failures(table: str) -> float:
    return REGISTRY.get_sample_value("pbxpipe_store_insert_failures_total", {"table": table}) or 0.0


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseStore]:
    """One chDB engine for the module (starting one costs ~0.6 s); tests use distinct ids."""
    s = ClickHouseStore.connect(f"chdb://{tmp_path_factory.mktemp('chdb-store') / 'data'}", retry=FAST)
    s.migrate()
    yield s
    s.close()


def count(store: ClickHouseStore, table: str, where: str, params: dict[str, Any], final: bool = False) -> int:
    sql = f"SELECT count() AS n FROM {table}{' FINAL' if final else ''} WHERE {where}"
    return int(store.query(sql, params)[0]["n"])


# -- idempotency -----------------------------------------------------------------------------------


@pytest.mark.integration
def test_same_batch_same_token_is_stored_once(store: ClickHouseStore) -> None:
    """Re-sending a batch with its token is a no-op at insert time (no FINAL needed)."""
    batch = [call(1000 + i, pbx_id="dedup1") for i in range(50)]
    before = rows_written("calls")
    assert store.write_calls(batch, "tok-dedup1") == 50
    store.write_calls(batch, "tok-dedup1")
    assert count(store, "calls", "pbx_id = {p:String}", {"p": "dedup1"}) == 50
    assert rows_written("calls") - before == 100  # rows sent, deduplicated or not


@pytest.mark.integration
def test_a_token_names_one_batch(store: ClickHouseStore) -> None:
    """Deduplication is by token, not by content: another batch sent under a used token is
    dropped, so a token must be derived from the batch (its offsets, or batch_token)."""
    store.write_calls([call(1500, pbx_id="tokname")], "tok-tokname")
    store.write_calls([call(1501, pbx_id="tokname")], "tok-tokname")
    assert count(store, "calls", "pbx_id = {p:String}", {"p": "tokname"}) == 1
    with pytest.raises(ValueError, match="token"):
        store.write_calls([call(1502, pbx_id="tokname")], "")


@pytest.mark.integration
def test_same_records_other_token_collapse_with_final(store: ClickHouseStore) -> None:
    """A replay under another token is stored again, and FINAL reads one copy per call."""
    batch = [call(2000 + i, pbx_id="dedup2") for i in range(20)]
    store.write_calls(batch, "tok-dedup2-a")
    store.write_calls(batch, "tok-dedup2-b")
    assert count(store, "calls", "pbx_id = {p:String}", {"p": "dedup2"}) == 40
    assert count(store, "calls", "pbx_id = {p:String}", {"p": "dedup2"}, final=True) == 20


@pytest.mark.integration
@pytest.mark.parametrize("order", ["old_first", "new_first"])
def test_highest_version_wins_whatever_the_arrival_order(store: ClickHouseStore, order: str) -> None:
    """A later version of a call (missed -> answered) replaces the earlier one, even if the
    earlier arrives last; filters apply to the latest version only."""
    pbx = f"ver-{order}"
    old = call(3000, pbx_id=pbx, status="missed", answered=False, version=1)
    new = call(3000, pbx_id=pbx, status="answered", answered=True, version=9)
    first, second = (old, new) if order == "old_first" else (new, old)
    store.write_calls([first], f"tok-{pbx}-1")
    store.write_calls([second], f"tok-{pbx}-2")
    [row] = call_history(ScopedReader(store), Scope.tenant_wide(pbx))
    assert (row["status"], row["version"]) == ("answered", 9)
    assert call_history(ScopedReader(store), Scope.tenant_wide(pbx), call_type="missed") == []


@pytest.mark.integration
def test_lost_ack_retry_does_not_duplicate(store: ClickHouseStore) -> None:
    """The insert reaches ClickHouse but the reply is lost: the retry with the same token is a
    no-op, so the batch is stored once (and the failed attempt is counted)."""

    class LostAck:
        def __init__(self, client: Any) -> None:
            self.client, self.calls = client, 0

        def insert(self, *a: Any, **kw: Any) -> Any:
            self.calls += 1
            result = self.client.insert(*a, **kw)
            if self.calls == 1:
                raise OperationalError("Error executing HTTP request: read timed out")
            return result

        def __getattr__(self, name: str) -> Any:
            return getattr(self.client, name)

    flaky = ClickHouseStore(LostAck(store._client), dsn=store.dsn, retry=FAST)  # type: ignore[arg-type]
    failures = insert_failures("calls")
    flaky.write_calls([call(4000 + i, pbx_id="lostack") for i in range(5)], "tok-lostack")
    assert count(store, "calls", "pbx_id = {p:String}", {"p": "lostack"}) == 5
    assert insert_failures("calls") - failures == 1


@pytest.mark.integration
def test_legs_and_quarantine_are_idempotent_too(store: ClickHouseStore) -> None:
    legs = [leg(i, pbx_id="legs1") for i in range(3)]
    items = [
        Quarantined(pbx_id="q1", received_at=T0, reason="malformed_frame", detail="no colon",
                    raw="Event Newchannel\r\n'quoted'\t\\xff")
    ]
    for _ in range(2):
        store.write_legs(legs, batch_token("call_legs", legs))
        store.write_quarantine(items, batch_token("quarantine", items))
    assert count(store, "call_legs", "pbx_id = {p:String}", {"p": "legs1"}) == 3
    [q] = store.query(
        "SELECT id, pbx_id, toUnixTimestamp64Milli(received_at) AS ms, reason, detail, raw "
        "FROM quarantine WHERE pbx_id = 'q1'"
    )
    assert q == {"id": quarantine_id(items[0]), "pbx_id": "q1", "ms": round(T0 * 1000),
                 "reason": "malformed_frame", "detail": "no colon", "raw": items[0].raw}


# -- round trips -----------------------------------------------------------------------------------


@pytest.mark.integration
def test_call_record_round_trips(store: ClickHouseStore) -> None:
    """Every field survives write + call_history: non-ASCII names, None fields, empty and
    non-empty arrays, bools, ms-precision times."""
    records = [
        call(5000, pbx_id="rt"),
        call(5001, pbx_id="rt", caller_name="", answered=False, first_answered_by=None,
             last_answered_by=None, status="missed", answer=None, wait_s=None, talk_s=0.0,
             extensions_rang=(), recordings=(), queue="", hangup_by="", disposition="",
             incomplete=True, hangup_cause=0),
    ]
    store.write_calls(records, "tok-rt")
    rows = call_history(ScopedReader(store), Scope.tenant_wide("rt"))
    back = [msgspec.convert({f: r[f] for f in CallRecord.__struct_fields__}, CallRecord) for r in rows]
    assert back == records[::-1]  # newest first
    assert rows[1]["caller_name"] == "Łukasz Żółć"
    [raw] = store.query("SELECT start FROM calls WHERE pbx_id = 'rt' ORDER BY start LIMIT 1")
    assert raw["start"].timestamp() == records[0].start  # query() gives aware UTC datetimes


@pytest.mark.integration
def test_legs_round_trip(store: ClickHouseStore) -> None:
    legs = [leg(6000, pbx_id="rtl", answer=round(T0 + 6003.5, 3), answered=True, outcome="ANSWER",
                talk_s=7.0, kind="trunk", extension="external")]
    store.write_legs(legs, "tok-rtl")
    [row] = store.query(
        "SELECT * EXCEPT (start, answer, end), toUnixTimestamp64Milli(start) / 1000 AS start, "
        "toUnixTimestamp64Milli(answer) / 1000 AS answer, toUnixTimestamp64Milli(`end`) / 1000 AS `end` "
        "FROM call_legs FINAL WHERE pbx_id = 'rtl'"
    )
    assert msgspec.convert(row, CallLeg) == legs[0]


@pytest.mark.integration
@settings(max_examples=60, deadline=None)
@given(value=st.text(st.characters(exclude_categories=("Cs",)), max_size=40))
def test_string_parameters_arrive_intact(store: ClickHouseStore, value: str) -> None:
    """Server-side {name:String} binding carries any text unchanged on chDB (quotes, backslashes,
    newlines, braces, non-ASCII), so user input never needs to be spliced into SQL."""
    [row] = store.query("SELECT {v:String} AS v, {v:String} = {w:String} AS same", {"v": value, "w": value})
    assert row == {"v": value, "same": True}


# -- failures --------------------------------------------------------------------------------------


@pytest.mark.integration
def test_write_before_migrate_says_so(store: ClickHouseStore) -> None:
    """Writing to a database without the tables fails at once with a StoreError naming the fix."""
    store._command("CREATE DATABASE IF NOT EXISTS empty_db")
    client = clickhouse_connect.get_client(interface="chdb", path=store._client.path, database="empty_db")
    bare = ClickHouseStore(client, dsn=store.dsn, retry=FAST)
    try:
        with pytest.raises(StoreError, match="run the migrations first") as err:
            bare.write_calls([call()], "tok-bare")
        assert not isinstance(err.value, StoreUnavailable)
    finally:
        bare.close()


@pytest.mark.integration
def test_non_retryable_error_fails_fast(store: ClickHouseStore) -> None:
    """A schema/SQL error is not retried: StoreError after one attempt."""
    started = time.monotonic()
    with pytest.raises(StoreError) as err:
        store.query("SELECT no_such_column FROM calls")
    assert not isinstance(err.value, StoreUnavailable)
    assert time.monotonic() - started < 1


@pytest.mark.integration
def test_down_sink_gives_up_with_store_unavailable(store: ClickHouseStore) -> None:
    """Retryable failures are retried `attempts` times, each counted, then StoreUnavailable."""

    class Down:
        def __init__(self) -> None:
            self.calls = 0

        def insert(self, *a: Any, **kw: Any) -> Any:
            self.calls += 1
            raise DatabaseError("Code: 252. DB::Exception: Too many parts", code=252)

        def __getattr__(self, name: str) -> Any:
            return getattr(store._client, name)

    down = Down()
    s = ClickHouseStore(down, dsn=store.dsn, retry=FAST)  # type: ignore[arg-type]
    failures = insert_failures("calls")
    with pytest.raises(StoreUnavailable, match="insert into calls .* failed 3 times"):
        s.write_calls([call()], "tok-down")
    assert down.calls == 3
    assert insert_failures("calls") - failures == 3


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_is_one_clear_line(caplog: pytest.LogCaptureFixture) -> None:
    """An HTTP DSN nobody listens on: StoreUnavailable, quickly, with one line that says what
    and why, the password masked, no chained traceback and no driver warning."""
    port = _closed_port()
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(StoreUnavailable) as err:
        ClickHouseStore.connect(f"http://pbx:s3cret@127.0.0.1:{port}/calls", retry=FAST)
    elapsed = time.monotonic() - started
    msg = str(err.value)
    assert elapsed < 2
    assert "\n" not in msg
    assert f"127.0.0.1:{port}" in msg and "connection refused" in msg and "3 times" in msg
    assert "s3cret" not in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert not [r for r in caplog.records if r.name.startswith("clickhouse_connect") and r.levelno >= logging.WARNING]


def test_bad_dsn_is_rejected() -> None:
    with pytest.raises(StoreError, match="unsupported ClickHouse DSN"):
        ClickHouseStore.connect("tcp://u:pw@host:9000")
    with pytest.raises(StoreError, match="data directory"):
        ClickHouseStore.connect("chdb://memory")


def test_chdb_paths() -> None:
    """chdb:///abs is absolute; chdb:///./rel (the settings default) is relative to the cwd."""
    assert chdb_path("chdb:///var/lib/pbxpipe") == "/var/lib/pbxpipe"
    assert chdb_path("chdb:///./data/clickhouse") == "./data/clickhouse"
    assert chdb_path("chdb:///../data") == "../data"


@pytest.mark.integration
def test_second_chdb_directory_in_one_process_is_a_clear_error(
    store: ClickHouseStore, tmp_path: Path
) -> None:
    """chDB hosts one engine per process: another store on the same directory works (shared
    engine), another directory fails with a StoreError that says why."""
    same = ClickHouseStore.connect(store.dsn)
    try:
        assert same.query("SELECT count() AS n FROM schema_migrations")[0]["n"] >= 1
    finally:
        same.close()
    with pytest.raises(StoreError, match="one per process"):
        ClickHouseStore.connect(f"chdb://{tmp_path / 'other'}")
