"""store.batching: batches close on size or age, and items come out exactly once, in order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.batching import Batcher


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_closes_on_size() -> None:
    """The item that fills a batch returns it; the next item starts a new one."""
    b: Batcher[int] = Batcher(max_rows=3, max_age_s=60, clock=FakeClock())
    assert b.add(1) is None
    assert b.add(2) is None
    assert b.add(3) == [1, 2, 3]
    assert len(b) == 0
    assert b.add(4) is None
    assert len(b) == 1


def test_closes_on_age_measured_from_first_item() -> None:
    """poll returns a batch once its first item is max_age_s old, not before."""
    clock = FakeClock()
    b: Batcher[str] = Batcher(max_rows=100, max_age_s=1.0, clock=clock)
    assert b.poll() is None and b.due_in() is None
    b.add("a")
    clock.now += 0.6
    b.add("b")
    assert b.poll() is None
    assert b.due_in() == pytest.approx(0.4)
    clock.now += 0.4
    assert b.due_in() == 0.0
    assert b.poll() == ["a", "b"]
    assert b.poll() is None


def test_add_to_an_aged_batch_closes_it() -> None:
    """An item arriving after the batch aged (no poll in between) goes out with it."""
    clock = FakeClock()
    b: Batcher[int] = Batcher(max_rows=100, max_age_s=1.0, clock=clock)
    b.add(1)
    clock.now += 5
    assert b.add(2) == [1, 2]


def test_flush_returns_the_rest_once() -> None:
    b: Batcher[int] = Batcher(max_rows=10, max_age_s=1.0, clock=FakeClock())
    assert b.flush() is None
    b.add(1)
    assert b.flush() == [1]
    assert b.flush() is None


def test_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        Batcher(max_rows=0, max_age_s=1.0)
    with pytest.raises(ValueError):
        Batcher(max_rows=1, max_age_s=-1.0)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers()),
        st.tuples(st.just("tick"), st.floats(min_value=0, max_value=3, allow_nan=False)),
        st.tuples(st.just("poll"), st.none()),
        st.tuples(st.just("flush"), st.none()),
    ),
    max_size=200,
)


@given(ops=ops, max_rows=st.integers(1, 8), max_age_s=st.floats(0, 2, allow_nan=False))
def test_never_loses_duplicates_or_reorders(
    ops: list[tuple[str, object]], max_rows: int, max_age_s: float
) -> None:
    """Whatever the interleaving of adds, clock ticks, polls and flushes, the batches handed out
    (plus a final flush) are exactly the added items in order, each batch 1..max_rows long."""
    clock = FakeClock()
    b: Batcher[tuple[int, int]] = Batcher(max_rows, max_age_s, clock=clock)
    added: list[tuple[int, int]] = []
    batches: list[list[tuple[int, int]]] = []
    for i, (op, arg) in enumerate(ops):
        out = None
        if op == "add":
            item = (i, arg)  # unique even when values repeat, so duplicates would show
            added.append(item)  # type: ignore[arg-type]
            out = b.add(item)  # type: ignore[arg-type]
        elif op == "tick":
            clock.now += arg  # type: ignore[operator]
        elif op == "poll":
            out = b.poll()
        else:
            out = b.flush()
        if out is not None:
            batches.append(out)
    rest = b.flush()
    if rest is not None:
        batches.append(rest)
    assert [x for batch in batches for x in batch] == added
    assert all(1 <= len(batch) <= max_rows for batch in batches)
    assert len(b) == 0
