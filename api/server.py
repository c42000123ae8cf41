"""Running the API: the runtime from the settings, and uvicorn serving it — on its own
(``pbxpipe api``) or inside the process that writes an embedded chDB (``pbxpipe run --api``: a
chDB directory can be open in one process only)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
import uvicorn

from api.app import create_app
from api.keys import KeyStore
from api.runtime import Runtime, StorePool
from contracts.config import Settings
from store.clickhouse import ClickHouseStore
from store.object_stores import open_object_store

log = structlog.get_logger("api.server")


def build_runtime(settings: Settings, clock: Callable[[], float] = time.time) -> Runtime:
    """Connections, key store and object store for the API. An embedded store is migrated here;
    a server's schema is the pipeline's to migrate (the API's user may only read, and write its
    access log): until it is there, /readyz says not ready."""
    def connect() -> ClickHouseStore:
        return ClickHouseStore.connect(settings.clickhouse_dsn)

    first = connect()
    if first.embedded:
        first.migrate()
    pool = StorePool(connect, settings.api_query_threads)
    keys = KeyStore(first, cache_s=settings.api_key_cache_s, clock=clock)
    if not settings.api_signing_secret and not first.embedded:
        log.warning("api_signing_secret_missing",
                    hint="set PBXPIPE_API_SIGNING_SECRET: without it, recording links and panel "
                         "sessions work only on the replica that made them")
    return Runtime(settings, pool, keys, open_object_store(settings), clock=clock)


def server(settings: Settings, runtime: Runtime) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(runtime), host=settings.api_host, port=settings.api_port, log_config=None,
        access_log=False, server_header=False, lifespan="on", timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


async def serve(settings: Settings, runtime: Runtime, stop: asyncio.Event | None = None) -> None:
    """Serve until the process is told to stop, or ``stop`` is set."""
    srv = server(settings, runtime)
    log.info("api_started", host=settings.api_host, port=settings.api_port)
    if stop is None:
        await srv.serve()
        return
    task = asyncio.create_task(srv.serve())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    srv.should_exit = True
    await task
    stopper.cancel()
