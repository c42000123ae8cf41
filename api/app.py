"""The panel API as one Litestar application: the routes of every resource, errors as problem+json
(RFC 9457), one log line per request, health checks, and the OpenAPI document.

Litestar rather than FastAPI: the project's types are msgspec Structs end to end, and Litestar
validates and serialises them natively (FastAPI would need a pydantic twin of each), builds the
OpenAPI document from the same handlers, and renders the panel's Jinja2 templates.
"""

from __future__ import annotations

import time
from typing import Any

from litestar import Litestar, MediaType, Request, Response, get
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.enums import ScopeType
from litestar.types import ASGIApp, ControllerRouterHandler, Message, Receive, Scope, Send

from api.calls import http as calls
from api.export import http as export
from api.http import log_request, on_api_error, on_http_error, on_unexpected, runtime_of
from api.panel import http as panel
from api.recordings import http as recordings
from api.runtime import Runtime
from api.stats import http as stats
from contracts.errors import ApiError

TITLE = "pbx-pipeline panel API"
VERSION = "1"


@get("/healthz", include_in_schema=False, media_type=MediaType.JSON)
async def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@get("/readyz", include_in_schema=False, media_type=MediaType.JSON)
async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, str]]:
    """ClickHouse answers a query: the API can serve."""
    rt = runtime_of(request)

    def probe() -> None:
        with rt.pool.lease(timeout_s=5) as store:
            store.query("SELECT 1 FROM recording_access LIMIT 0")  # the newest tables are there

    try:
        await rt.run(probe)
    except Exception as e:  # readiness says why, whatever failed
        return Response({"status": "not ready", "reason": type(e).__name__}, status_code=503)
    return Response({"status": "ready"})


@get("/v1/openapi.json", include_in_schema=False, media_type="application/vnd.oai.openapi+json")
async def openapi_document(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """This API's OpenAPI document (also kept in the repository as api/openapi.json)."""
    return request.app.openapi_schema.to_schema()


def _request_log(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_status)
        finally:
            await log_request(Request(scope), started, status)

    return middleware


ROUTES: list[ControllerRouterHandler] = [
    calls.list_calls, calls.get_call, recordings.get_recording, recordings.get_media,
    recordings.recording_audit, export.export, stats.load, stats.costs, stats.missed,
    healthz, readyz, openapi_document, panel.ROUTER,
]


def create_app(runtime: Runtime) -> Litestar:
    return Litestar(
        route_handlers=ROUTES,
        state=State({"runtime": runtime}),
        exception_handlers={ApiError: on_api_error, HTTPException: on_http_error,
                            Exception: on_unexpected},
        middleware=[_request_log],
        openapi_config=_openapi_config(),
        template_config=panel.template_config(),
        on_shutdown=[runtime.close],
        debug=False,
        logging_config=None,
    )


def openapi_schema() -> dict[str, Any]:
    """This API's OpenAPI document (what api/openapi.json holds), without running anything."""
    app = Litestar(route_handlers=ROUTES, openapi_config=_openapi_config(),
                   template_config=panel.template_config(), logging_config=None)
    return app.openapi_schema.to_schema()


def _openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(title=TITLE, version=VERSION, path="/v1/docs", create_examples=False,
                         render_plugins=[], description=__doc__.split("\n\n")[0])
