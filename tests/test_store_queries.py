"""store.queries: every call-history filter and the report queries, on a small hand-made day.

The day (2026-11-24, Europe/Warsaw is UTC+1), pbx1 unless said otherwise, times UTC:

    id   start  direction  caller           called          status     who
    c01  08:00  inbound    +48601234567     +48221234501    answered   101
    c02  08:10  inbound    +48601234567     +48221234502    missed     rang 102
    c03  08:20  outbound   103              0601234567      no_answer  (calls c02 back)
    c04  08:30  inbound    +442071112222    +48221234599    missed     rang 101, 102
    c05  08:40  inbound    +442071112222    +48221234599    missed     rang 101, 102
    c06  08:50  inbound    +48512345678     +48221234501    missed     rang 101
    c07  09:00  inbound    +48512345678     +48221234501    answered   104 (c06 answered later)
    c08  09:06  internal   101              103             answered   103
    c09  09:15  inbound    +48601234567     +48221234501    missed     rang 101 (after c03)
    c10  09:23  outbound   102              0048221112233   busy
    c11  10:01  inbound    (anonymous)      +48221234501    missed     rang 101
    c12  23:30  outbound   102              0048221112233   answered   external (00:30 on the 25th in Warsaw)
    x01  08:01  inbound    +48700000000     +48221000000    missed     pbx2
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import pytest

from contracts.records import CallRecord
from store import queries as q
from store.clickhouse import ClickHouseStore, RetryPolicy
from store.tenancy import Scope, ScopedReader

ALL = Scope.operator()
P1, P2 = Scope.tenant_wide("pbx1"), Scope.tenant_wide("pbx2")


def reader(store: ClickHouseStore) -> ScopedReader:
    return ScopedReader(store)

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC).timestamp()
WARSAW = "Europe/Warsaw"


def call(cid: str, minute: float, direction: str, caller: str, called: str, status: str,
         *, pbx: str = "pbx1", answered_by: str | None = None, rang: tuple[str, ...] = (),
         version: int = 1) -> CallRecord:
    start = round(T0 + minute * 60, 3)
    answered = status == "answered"
    return CallRecord(
        call_id=f"{pbx}:{cid}", pbx_id=pbx, linkedid=cid, direction=direction,  # type: ignore[arg-type]
        caller=caller, caller_name="", called=called, answered=answered,
        first_answered_by=answered_by, last_answered_by=answered_by, status=status,  # type: ignore[arg-type]
        start=start, answer=start + 5 if answered else None, end=start + 65,
        duration_s=65.0, wait_s=5.0 if answered else None, talk_s=60.0 if answered else 0.0,
        hangup_cause=16, hangup_cause_text="Normal Clearing", hangup_by="caller",
        extensions_rang=rang, queue="", transferred=False, forwarded=False, recordings=(),
        disposition="", incomplete=False, version=version,
    )


CALLS = [
    call("c01", 0, "inbound", "+48601234567", "+48221234501", "answered", answered_by="101", rang=("101",)),
    call("c02", 10, "inbound", "+48601234567", "+48221234502", "missed", rang=("102",)),
    call("c03", 20, "outbound", "103", "0601234567", "no_answer"),
    call("c04", 30, "inbound", "+442071112222", "+48221234599", "missed", rang=("101", "102")),
    call("c05", 40, "inbound", "+442071112222", "+48221234599", "missed", rang=("101", "102")),
    call("c06", 50, "inbound", "+48512345678", "+48221234501", "missed", rang=("101",)),
    call("c07", 60, "inbound", "+48512345678", "+48221234501", "answered", answered_by="104", rang=("104",)),
    call("c08", 66, "internal", "101", "103", "answered", answered_by="103", rang=("103",)),
    call("c09", 75, "inbound", "+48601234567", "+48221234501", "missed", rang=("101",)),
    call("c10", 83, "outbound", "102", "0048221112233", "busy"),
    call("c11", 121, "inbound", "", "+48221234501", "missed", rang=("101",)),
    call("c12", 15 * 60 + 30, "outbound", "102", "0048221112233", "answered", answered_by="external"),
    call("x01", 1, "inbound", "+48700000000", "+48221000000", "missed", pbx="pbx2", rang=("201",)),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseStore]:
    s = ClickHouseStore.connect(
        f"chdb://{tmp_path_factory.mktemp('chdb-queries')}", retry=RetryPolicy(attempts=1)
    )
    s.migrate()
    s.write_calls(CALLS, "tok-day")
    # a replay of some calls (another token, one with a higher version): FINAL must collapse them
    s.write_calls([CALLS[1], CALLS[3]], "tok-replay")
    s.write_calls([call("c02", 10, "inbound", "+48601234567", "+48221234502", "missed",
                        rang=("102",), version=5)], "tok-v5")
    yield s
    s.close()


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["linkedid"] for r in rows]


# -- call history ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_all_calls_newest_first_each_once(store: ClickHouseStore) -> None:
    """Replayed versions collapse (c02, c04 once; c02 at its latest version), newest first."""
    rows = q.call_history(reader(store), ALL)
    assert ids(rows) == ["c12", "c11", "c10", "c09", "c08", "c07", "c06", "c05", "c04", "c03", "c02", "x01", "c01"]
    assert next(r for r in rows if r["linkedid"] == "c02")["version"] == 5


@pytest.mark.integration
def test_pbx_and_limit(store: ClickHouseStore) -> None:
    assert ids(q.call_history(reader(store), P2)) == ["x01"]
    assert ids(q.call_history(reader(store), P1, limit=2)) == ["c12", "c11"]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("call_type", "expected"),
    [
        ("incoming", ["c11", "c09", "c07", "c06", "c05", "c04", "c02", "c01"]),
        ("outgoing", ["c12", "c10", "c03"]),
        ("internal", ["c08"]),
        ("missed", ["c11", "c09", "c06", "c05", "c04", "c02"]),
    ],
)
def test_call_type(store: ClickHouseStore, call_type: q.CallType, expected: list[str]) -> None:
    """incoming/outgoing/internal follow the direction; missed is status missed."""
    assert ids(q.call_history(reader(store), P1, call_type=call_type)) == expected


@pytest.mark.integration
@pytest.mark.parametrize(
    ("extension", "expected"),
    [
        ("103", ["c08", "c03"]),  # called/answered it; placed a call
        ("104", ["c07"]),  # answered
        ("102", ["c12", "c10", "c05", "c04", "c02"]),  # placed calls; rang
    ],
)
def test_extension(store: ClickHouseStore, extension: str, expected: list[str]) -> None:
    """An extension matches the calls it placed, was dialled at, rang on or answered."""
    assert ids(q.call_history(reader(store), P1, extension=extension)) == expected


@pytest.mark.integration
@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("601 234 567", ["c09", "c03", "c02", "c01"]),  # +48601234567 in, 0601234567 out
        ("+44 20 7111 2222", ["c05", "c04"]),
        ("0048221112233", ["c12", "c10"]),
        ("+48221234502", ["c02"]),  # the called side (a DID)
    ],
)
def test_number_matches_digits_of_caller_or_called(
    store: ClickHouseStore, number: str, expected: list[str]
) -> None:
    assert ids(q.call_history(reader(store), P1, number=number)) == expected


@pytest.mark.integration
def test_status(store: ClickHouseStore) -> None:
    assert ids(q.call_history(reader(store), ALL, status="busy")) == ["c10"]
    assert ids(q.call_history(reader(store), ALL, status="no_answer")) == ["c03"]


@pytest.mark.integration
def test_time_range_in_a_time_zone(store: ClickHouseStore) -> None:
    """Naive datetimes and dates are read in tz; since is inclusive, until exclusive."""
    # Warsaw 25 Nov starts at 23:00 UTC on the 24th: only c12 (23:30 UTC)
    assert ids(q.call_history(reader(store), ALL, since=date(2026, 11, 25), tz=WARSAW)) == ["c12"]
    assert ids(q.call_history(reader(store), ALL, since=date(2026, 11, 25), tz="UTC")) == []
    # until 09:10 Warsaw = 08:10 UTC, exclusive: c02 (08:10) is out
    rows = q.call_history(reader(store), ALL, since=datetime(2026, 11, 24, 9, 0), until=datetime(2026, 11, 24, 9, 10), tz=WARSAW)
    assert ids(rows) == ["x01", "c01"]
    # epoch seconds and aware datetimes mean the same whatever tz
    assert ids(q.call_history(reader(store), ALL, since=T0 + 83 * 60, until=datetime(2026, 11, 24, 23, 0, tzinfo=UTC), tz=WARSAW)) == ["c11", "c10"]


@pytest.mark.integration
def test_times_are_epoch_seconds_with_a_local_iso_start(store: ClickHouseStore) -> None:
    [c12] = q.call_history(reader(store), ALL, call_type="outgoing", status="answered", tz=WARSAW)
    assert c12["start"] == CALLS[11].start and c12["answer"] == CALLS[11].answer
    assert c12["start_local"] == "2026-11-25T00:30:00.000+01:00"
    [c10] = q.call_history(reader(store), ALL, status="busy")
    assert c10["answer"] is None and c10["start_local"] == "2026-11-24T09:23:00.000+00:00"


@pytest.mark.integration
def test_filters_combine(store: ClickHouseStore) -> None:
    rows = q.call_history(reader(store), P1, call_type="missed", extension="101", number="601234567",
                          since=date(2026, 11, 24), until=date(2026, 11, 25), tz=WARSAW)
    assert ids(rows) == ["c09"]


# -- reports ---------------------------------------------------------------------------------------


@pytest.mark.integration
def test_calls_by_type(store: ClickHouseStore) -> None:
    assert q.calls_by_type(reader(store), P1) == [
        {"call_type": "incoming", "calls": 8, "answered_calls": 2, "talk_s_total": 120.0},
        {"call_type": "outgoing", "calls": 3, "answered_calls": 1, "talk_s_total": 60.0},
        {"call_type": "internal", "calls": 1, "answered_calls": 1, "talk_s_total": 60.0},
    ]


@pytest.mark.integration
def test_answered_vs_missed_per_local_day(store: ClickHouseStore) -> None:
    assert q.answered_vs_missed(reader(store), P1, tz=WARSAW) == [
        {"day": "2026-11-24", "answered_calls": 2, "missed_calls": 6}
    ]
    assert q.answered_vs_missed(reader(store), ALL, tz=WARSAW) == [
        {"day": "2026-11-24", "answered_calls": 2, "missed_calls": 7}
    ]


@pytest.mark.integration
def test_missed_not_called_back(store: ClickHouseStore) -> None:
    """+44…: missed twice, never called back. +48601234567: c02 was called back (c03, outbound
    to 0601234567, same last 9 digits) but c09 came after. +48512345678: answered later (c07).
    The anonymous c11 cannot be called back."""
    rows = q.missed_not_called_back(reader(store), P1, tz=WARSAW)
    assert [(r["number"], r["missed_calls"], r["last_call_id"]) for r in rows] == [
        ("+48601234567", 1, "pbx1:c09"),
        ("+442071112222", 2, "pbx1:c05"),
    ]
    assert rows[0]["last_missed"] == CALLS[8].start
    assert rows[0]["last_missed_local"] == "2026-11-24T10:15:00.000+01:00"
    # restricted to the missed calls of 08:00-09:00 UTC, +48601234567's (c02) was called back
    early = q.missed_not_called_back(reader(store), P1, since=T0, until=T0 + 3600)
    assert [r["number"] for r in early] == ["+442071112222"]


@pytest.mark.integration
def test_busiest_hour_in_a_time_zone(store: ClickHouseStore) -> None:
    rows = q.busiest_hour(reader(store), P1, WARSAW)
    assert [(r["hour"], r["calls"]) for r in rows] == [(9, 6), (10, 4), (0, 1), (11, 1)]
    assert rows[0] == {"hour": 9, "calls": 6, "incoming_calls": 5, "outgoing_calls": 1, "missed_calls": 4}
    assert q.busiest_hour(reader(store), P1, "UTC")[0]["hour"] == 8


@pytest.mark.integration
def test_top_destinations(store: ClickHouseStore) -> None:
    assert q.top_destinations(reader(store), P1) == [
        {"number": "0048221112233", "calls": 2, "answered_calls": 1, "talk_s_total": 60.0},
        {"number": "0601234567", "calls": 1, "answered_calls": 0, "talk_s_total": 0.0},
    ]
    assert [r["number"] for r in q.top_destinations(reader(store), ALL, 1)] == ["0048221112233"]


# -- builders (pure) -------------------------------------------------------------------------------

EVIL = "101' OR 1=1 --"


def test_user_input_never_reaches_the_sql_text() -> None:
    """Every caller-supplied value is a parameter; the SQL text holds only fixed fragments."""
    built = [
        q.call_history_query(Scope.tenant_wide(EVIL), extension=EVIL, number=EVIL, tz="Europe/Warsaw",
                             since=datetime(2026, 1, 1), until=1.0e9, call_type="missed", status="missed"),
        q.calls_by_type_query(Scope.tenant_wide(EVIL)), q.answered_vs_missed_query(Scope.tenant_wide(EVIL), tz=WARSAW),
        q.missed_not_called_back_query(Scope.tenant_wide(EVIL)), q.busiest_hour_query(Scope.tenant_wide(EVIL), WARSAW),
        q.top_destinations_query(Scope.tenant_wide(EVIL), 5),
    ]
    for query in built:
        assert EVIL not in query.sql and "1=1" not in query.sql and WARSAW not in query.sql
        assert "FINAL" in query.sql
    assert built[0].parameters["number"] == "10111"  # digits only


@pytest.mark.parametrize(
    "kwargs",
    [{"call_type": "voicemail"}, {"status": "lost"}, {"tz": "Mars/Olympus"}, {"limit": 0},
     {"number": "abc"}, {"limit": 10**9}],
)
def test_bad_arguments_are_value_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        q.call_history_query(ALL, **kwargs)


def test_time_bounds() -> None:
    """Aware datetimes keep their zone; naive ones and dates take tz; numbers are epoch seconds."""
    from zoneinfo import ZoneInfo

    waw = ZoneInfo(WARSAW)
    assert q.epoch_ms(date(2026, 11, 25), waw) == round(datetime(2026, 11, 24, 23, tzinfo=UTC).timestamp() * 1000)
    assert q.epoch_ms(datetime(2026, 11, 25, 1, 0), waw) == round(datetime(2026, 11, 25, 0, tzinfo=UTC).timestamp() * 1000)
    assert q.epoch_ms(datetime(2026, 11, 25, tzinfo=UTC), waw) == round(datetime(2026, 11, 25, tzinfo=UTC).timestamp() * 1000)
    assert q.epoch_ms(1.5, waw) == 1500
    with pytest.raises(TypeError):
        q.epoch_ms("2026-11-25", waw)  # type: ignore[arg-type]
