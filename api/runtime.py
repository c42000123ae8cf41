"""What the API holds while it runs: ClickHouse connections, the key store, the object store, the
signer; and the context of one request (who asks, what they see, in which time zone).

ClickHouse calls never run on the event loop: each request's work runs in a worker thread on a
connection leased from a small pool (one connection per query at a time: a chDB connection
serialises its calls, and an export holds its connection while it streams).
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from api.access import Principal, scope_of
from api.auth import Authenticator
from api.keys import KeyStore
from api.signing import Signer
from contracts.config import Settings
from contracts.errors import Unavailable
from store.clickhouse import ClickHouseStore
from store.objects import ObjectStore
from store.tenancy import Scope, ScopedReader

T = TypeVar("T")
DAY_S = 86_400


class StorePool:
    """``size`` ClickHouse connections to one store, leased one request at a time."""

    def __init__(self, open_store: Callable[[], ClickHouseStore], size: int) -> None:
        self._free: queue.Queue[ClickHouseStore] = queue.Queue()
        self._all = [open_store() for _ in range(max(1, size))]
        for s in self._all:
            self._free.put(s)
        self.size = len(self._all)
        self.embedded = self._all[0].embedded  # chDB: no row policies behind the guard

    @contextlib.contextmanager
    def lease(self, timeout_s: float = 30.0) -> Iterator[ClickHouseStore]:
        try:
            store = self._free.get(timeout=timeout_s)
        except queue.Empty:
            raise Unavailable("every ClickHouse connection is busy; try again") from None
        try:
            yield store
        finally:
            self._free.put(store)

    def close(self) -> None:
        for s in self._all:
            s.close()


@dataclass(frozen=True)
class Request:
    """One request's context: who asks, what they may see, the tenant's time zone, the time."""

    principal: Principal
    scope: Scope
    tz: str
    now: float

    @property
    def now_utc(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


class Runtime:
    def __init__(self, settings: Settings, pool: StorePool, keys: KeyStore, objects: ObjectStore,
                 *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.pool = pool
        self.keys = keys
        self.objects = objects
        self.clock = clock
        self.signer = Signer(settings.api_signing_secret)
        self.auth = Authenticator(keys, settings, self.signer, clock)
        self.limiter = anyio.CapacityLimiter(pool.size + 1)  # +1: the key store's own reads
        self.row_policies = not pool.embedded

    def reader(self, store: ClickHouseStore) -> ScopedReader:
        return ScopedReader(store, row_policies=self.row_policies)

    def request(self, principal: Principal) -> Request:
        """The scope and time zone of a principal (blocking: reads the key store's cache)."""
        now = self.clock()
        days = self.keys.call_days(principal.tenant, self.settings.retention_call_days)
        cutoff = round((now - days * DAY_S) * 1000)
        exts: tuple[str, ...] = ()
        queues: tuple[str, ...] = ()
        if principal.role == "supervisor":
            group = self.keys.group(principal.tenant, principal.group)
            if group is not None:
                exts, queues = group.extensions, group.queues
        tenant = self.keys.tenant(principal.tenant)
        return Request(principal=principal,
                       scope=scope_of(principal, group_extensions=exts, group_queues=queues,
                                      not_before_ms=cutoff),
                       tz=tenant.timezone if tenant else "UTC", now=now)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread (ClickHouse and object store calls block)."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    def close(self) -> None:
        self.pool.close()
        self.keys.store.close()
