"""What every handler shares: the runtime, the caller's identity and request context, the query
string as parsed lists, problem+json answers (RFC 9457), and one log line per request."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import structlog
from litestar import Request as HttpRequest
from litestar import Response
from litestar.exceptions import HTTPException

from api.access import Principal, Right
from api.auth import SESSION_COOKIE, refuse_credentials_in_url
from api.runtime import Request, Runtime
from contracts.errors import ApiError, BadParameter

log = structlog.get_logger("api.http")

PROBLEM = "application/problem+json"
PROBLEM_TYPES = "https://pbx-pipeline.example/problems/"


def runtime_of(request: HttpRequest[Any, Any, Any]) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def query_of(request: HttpRequest[Any, Any, Any]) -> dict[str, list[str]]:
    """The query string as {name: [values]}; a credential in it is refused here."""
    params = request.query_params
    query = {k: params.getall(k) for k in params.keys()}  # noqa: SIM118 (a MultiDict)
    refuse_credentials_in_url(set(query))
    return query


async def context(request: HttpRequest[Any, Any, Any], right: Right, *,
                  session_ok: bool = False) -> Request:
    """Who asks (bearer; the panel's cookie where ``session_ok``), checked for ``right``, with
    their scope and time zone. Blocking reads run in a worker thread."""
    rt = runtime_of(request)
    query_of(request)  # refuse credentials in the URL before anything else
    authorization = request.headers.get("authorization")
    cookie = request.cookies.get(SESSION_COOKIE) if session_ok and not authorization else None

    def work() -> Request:
        principal: Principal = (rt.auth.session(cookie) if cookie is not None
                                else rt.auth.bearer(authorization))
        principal.require(right)
        return rt.request(principal)

    req = await rt.run(work)
    request.state.principal = req.principal
    return req


def client_address(request: HttpRequest[Any, Any, Any]) -> str:
    return request.client.host if request.client else ""


def problem(status: int, title: str, detail: str, request: HttpRequest[Any, Any, Any],
            extra: Mapping[str, Any] | None = None) -> Response[Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPES + title.lower().replace(" ", "-"),
        "title": title, "status": status, "detail": detail, "instance": request.url.path,
    }
    body.update(extra or {})
    headers = {"WWW-Authenticate": 'Bearer realm="pbxpipe"'} if status == 401 else None
    return Response(body, status_code=status, media_type=PROBLEM, headers=headers)


def on_api_error(request: HttpRequest[Any, Any, Any], exc: Exception) -> Response[Any]:
    assert isinstance(exc, ApiError)
    extra = {"parameter": exc.parameter} if isinstance(exc, BadParameter) else None
    return problem(exc.status, exc.title, exc.detail, request, extra)


def on_http_error(request: HttpRequest[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Litestar's own refusals (no such route, wrong method, a body it cannot read)."""
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    title = {404: "Not found", 405: "Method not allowed", 400: "Bad request"}.get(status, "Error")
    detail = exc.detail if status != 500 else "internal error"
    return problem(status, title, str(detail), request)


def on_unexpected(request: HttpRequest[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Anything else: logged with its traceback under an incident id, answered without one."""
    return problem(500, "Internal error", unexpected(request, exc), request)


def unexpected(request: HttpRequest[Any, Any, Any], exc: Exception) -> str:
    """Log an unexpected failure with its traceback under a new incident id; what to tell the
    caller instead (the id, never the traceback)."""
    incident = uuid.uuid4().hex[:12]
    log.error("request_failed", path=request.url.path, error=type(exc).__name__, incident=incident,
              exc_info=exc)
    return f"the request failed (incident {incident})"


async def log_request(request: HttpRequest[Any, Any, Any], started: float, status: int) -> None:
    """One line per request: never the query string (it may hold phone numbers) or a header."""
    principal = getattr(request.state, "principal", None)
    path = request.url.path
    if path.startswith("/v1/media/"):  # the path is the link's signature: never logged
        path = "/v1/media/…"
    log.info("request_served", method=request.method, path=path, status=status,
             ms=round((time.perf_counter() - started) * 1000, 1),
             params=sorted(request.query_params.keys()),
             tenant=principal.tenant if principal else None,
             subject=principal.subject if principal else None)
