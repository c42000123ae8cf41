"""The reference panel page: sign in with an API key, the call history with the panel's filters,
the missed calls to call back, load by hour as a chart, and a player for each recording.

Server-rendered (Jinja2), with htmx for the parts that change (the history table, a call's
details): no JavaScript build step, and every page works without JavaScript too. It calls the
same service functions as the JSON API: one path for the data, two renderings. Signing in trades
the API key for a signed session cookie (HttpOnly, SameSite=Strict) naming the key, checked again
on every request, so revoking the key ends the session.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Request, Response, get, post
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.params import FromPath, URLEncodedBody
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import ControllerRouterHandler

from api import params
from api.auth import SESSION_COOKIE
from api.calls import services as calls
from api.calls.http import LIST_PARAMETERS
from api.http import context, query_of, runtime_of
from api.panel import charts
from api.runtime import Request as Context
from api.stats import services as stats
from contracts.errors import ApiError, Unauthorised

HERE = Path(__file__).parent
PAGE_SIZE = 50


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine)


async def _panel_context(request: Request[Any, Any, Any]) -> Context | None:
    """The signed-in principal's context, or None (then the sign-in page is shown)."""
    if SESSION_COOKIE not in request.cookies:
        return None
    try:
        return await context(request, "list", session_ok=True)
    except Unauthorised:
        return None


@get("/", include_in_schema=False)
async def index(request: Request[Any, Any, Any]) -> Template | Response[Any]:
    req = await _panel_context(request)
    if req is None:
        return Template("signin.html", context={"error": None})
    query = query_of(request)
    rt = runtime_of(request)
    try:
        params.only(query, LIST_PARAMETERS)
        tz_name, zone = params.zone(query, req.tz)
        filters = params.call_filters(query, zone)
    except ApiError as e:
        return Template("index.html", context=_page(req, None, None, None, {}, str(e)), status_code=400)

    def work() -> tuple[Any, Any, Any]:
        with rt.pool.lease() as store:
            reader = rt.reader(store)
            page = calls.list_calls(reader, req, filters, None, PAGE_SIZE, tz_name)
            missed = stats.missed(reader, req, None, None, tz_name) if req.principal.may("missed") else None
            load = stats.load(reader, req, None, None, tz_name) if req.principal.may("load") else None
            return page, missed, load

    page, missed, load = await rt.run(work)
    values = {k: v[0] for k, v in query.items() if v}
    return Template("index.html", context=_page(req, page, missed, load, values, None, tz_name))


@get("/panel/calls", include_in_schema=False)
async def calls_partial(request: Request[Any, Any, Any]) -> Template:
    """The history table's rows for the filters (and a cursor: the next page), for htmx."""
    req = await context(request, "list", session_ok=True)
    query = query_of(request)
    params.only(query, LIST_PARAMETERS)
    tz_name, zone = params.zone(query, req.tz)
    filters = params.call_filters(query, zone)
    after = params.cursor(query, filters.fingerprint())
    rt = runtime_of(request)

    def work() -> Any:
        with rt.pool.lease() as store:
            return calls.list_calls(rt.reader(store), req, filters, after, PAGE_SIZE, tz_name)

    page = await rt.run(work)
    values = {k: v[0] for k, v in query.items() if v and k != "cursor"}
    return Template("calls_rows.html", context={"page": page, "values": values,
                                                 "can_play": req.principal.may("play")})


@get("/panel/calls/{call_id:str}", include_in_schema=False)
async def call_partial(request: Request[Any, Any, Any], call_id: FromPath[str]) -> Template:
    """One call's legs and recordings (with players), for htmx."""
    req = await context(request, "list", session_ok=True)
    query = query_of(request)
    params.only(query, ("tz",))
    tz_name, _ = params.zone(query, req.tz)
    cid = params.call_id(call_id)
    rt = runtime_of(request)

    def work() -> Any:
        with rt.pool.lease() as store:
            return calls.call_detail(rt.reader(store), req, cid, tz_name)

    detail = await rt.run(work)
    return Template("call_detail.html", context={"detail": detail,
                                                  "can_download": req.principal.may("download")})


@post("/session", include_in_schema=False)
async def sign_in(request: Request[Any, Any, Any],
                  data: URLEncodedBody[dict[str, str]]) -> Response[Any]:
    """Trade an API key for the panel's session cookie."""
    rt = runtime_of(request)
    key = (data.get("api_key") or "").strip()
    try:
        value, expires = await rt.run(rt.auth.session_for, key)
    except Unauthorised as e:
        return Template("signin.html", context={"error": e.detail}, status_code=401)
    response = Redirect("/", status_code=303)
    response.set_cookie(SESSION_COOKIE, value, expires=int(expires), httponly=True,
                        samesite="strict", secure=request.url.scheme == "https", path="/")
    return response


@post("/session/end", include_in_schema=False)
async def sign_out() -> Response[Any]:
    response = Redirect("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _page(req: Context, page: Any, missed: Any, load: Any, values: dict[str, str],
          error: str | None, tz: str | None = None) -> dict[str, Any]:
    return {
        "tenant": req.principal.tenant, "role": req.principal.role, "tz": tz or req.tz,
        "page": page, "missed": missed, "values": values, "error": error,
        "can_play": req.principal.may("play"),
        "load_chart": charts.load_by_hour(load) if load is not None else None,
        "peak": load.peak if load is not None else None,
        "call_types": ("incoming", "outgoing", "internal", "missed"),
        "statuses": ("answered", "missed", "no_answer", "busy", "failed", "congestion"),
    }


ROUTES: list[ControllerRouterHandler] = [
    index, calls_partial, call_partial, sign_in, sign_out,
    create_static_files_router(path="/static", directories=[HERE / "static"],
                               include_in_schema=False),
]
