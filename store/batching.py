"""Batches that close on size or age, with an injectable clock: the sink's backpressure unit.

Pure: the clock is passed in (``time.monotonic`` by default), nothing here sleeps or does I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """Collects items into batches of at most ``max_rows``, closing one when it is full or when its
    first item is ``max_age_s`` old. Items come out exactly once, in the order they went in.

    ``add`` returns a batch when that item filled it (or found it aged); ``poll`` returns an aged
    batch (call it when no item arrives, e.g. after ``due_in()`` seconds); ``flush`` returns
    whatever is pending (at shutdown). Each returns ``None`` when there is nothing to hand over.
    """

    def __init__(
        self, max_rows: int, max_age_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        if max_age_s < 0:
            raise ValueError(f"max_age_s must not be negative, got {max_age_s}")
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self._clock = clock
        self._items: list[T] = []
        self._opened_at = 0.0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T) -> list[T] | None:
        if not self._items:
            self._opened_at = self._clock()
        self._items.append(item)
        if len(self._items) >= self.max_rows or self._aged():
            return self._take()
        return None

    def poll(self) -> list[T] | None:
        if self._items and self._aged():
            return self._take()
        return None

    def flush(self) -> list[T] | None:
        return self._take() if self._items else None

    def due_in(self) -> float | None:
        """Seconds until the pending batch ages out (0 if it has), ``None`` when empty."""
        if not self._items:
            return None
        return max(0.0, self._opened_at + self.max_age_s - self._clock())

    def _aged(self) -> bool:
        return self._clock() - self._opened_at >= self.max_age_s

    def _take(self) -> list[T]:
        batch, self._items = self._items, []
        return batch
