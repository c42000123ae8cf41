"""The reference panel page: sign in with an API key, the call history with the panel's filters,
a call's legs and recordings (a player each), the missed calls to call back, and load by hour.

Server-rendered (Jinja2, autoescaped), with htmx for the parts that change (the history, a call's
details), and every page works without JavaScript too: the filters are a GET form, "More calls" a
link, a call's details a page of their own. It calls the same service functions as the JSON API:
one path for the data, two renderings. Signing in trades the API key (posted, never in a URL) for
a signed session cookie (HttpOnly, SameSite=Strict, Secure over https) naming the key, checked
again on every request, so revoking the key ends the session. Every panel answer carries a
Content-Security-Policy without inline script or style (htmx runs with eval off), nosniff and
no-referrer; pages are never cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import structlog
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from litestar import Request, Response, Router, get, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath, URLEncodedBody
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api import params
from api.auth import SESSION_COOKIE
from api.calls import services as calls
from api.calls.http import LIST_PARAMETERS
from api.calls.schemas import CallDetail, CallPage
from api.http import client_address, context, query_of, runtime_of, unexpected
from api.keys import split_key
from api.panel import charts, present
from api.params import CallFilters
from api.runtime import Request as Context
from api.runtime import Runtime
from api.stats import services as stats
from api.stats.schemas import Load, MissedNumber
from contracts.errors import ApiError, BadParameter, Unauthorised
from contracts.metrics import API_PANEL_SIGNINS

log = structlog.get_logger("api.panel")

HERE = Path(__file__).parent


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True,
                      undefined=StrictUndefined)
    env.filters.update(duration=present.duration, local_time=present.local_time,
                       moment=present.moment, tel=present.tel_uri, money=present.money)
    env.globals.update(label=present.label, page_url=present.page_url,
                       DIRECTIONS=present.DIRECTIONS, STATUSES=present.STATUSES,
                       CALL_TYPES=present.CALL_TYPES, OUTCOMES=present.OUTCOMES,
                       HANGUP_BY=present.HANGUP_BY, PAGE_SIZES=present.PAGE_SIZES,
                       DEFAULT_PAGE=present.DEFAULT_PAGE)
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(env))


# -- what a page shows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """The history a request asks for: filters, where the page starts, its size, the time zone."""

    filters: CallFilters
    after: tuple[int, str] | None
    size: int
    tz: str


def _listing(query: dict[str, list[str]], req: Context) -> Listing:
    params.only(query, LIST_PARAMETERS)
    tz_name, zone = params.zone(query, req.tz)
    query = present.inclusive_until(query)
    filters = params.call_filters(query, zone)
    return Listing(filters=filters, after=params.cursor(query, filters.fingerprint()),
                   size=params.integer(query, "limit", default=present.DEFAULT_PAGE, low=1,
                                       high=params.MAX_PAGE),
                   tz=tz_name)


def _calls(rt: Runtime, req: Context, listing: Listing) -> CallPage:
    with rt.pool.lease() as store:
        return calls.list_calls(rt.reader(store), req, listing.filters, listing.after,
                                listing.size, listing.tz)


def _who(rt: Runtime, req: Context, tz: str) -> dict[str, Any]:
    """What every signed-in page shows of its reader (blocking: the tenant's name)."""
    p = req.principal
    tenant = rt.keys.tenant(p.tenant)
    return {
        "tenant": p.tenant, "tenant_name": tenant.name if tenant and tenant.name else p.tenant,
        "role": p.role, "tz": tz, "can_play": p.may("play"), "can_download": p.may("download"),
        "can_cost": p.may("costs"), "columns": 10 if p.may("costs") else 9,
    }


def _is_htmx(request: Request[Any, Any, Any]) -> bool:
    return request.headers.get("hx-request") == "true"


# -- pages -----------------------------------------------------------------------------------------


@get("/", include_in_schema=False)
async def index(request: Request[Any, Any, Any]) -> Template:
    """The sign-in form, or the signed-in reader's page: the history for the filters in the
    query string, the missed calls to call back and the load of the last weeks (as the role may)."""
    try:
        req = await context(request, "list", session_ok=True)
    except Unauthorised:
        return Template("signin.html", context={"error": None})
    query = query_of(request)
    rt = runtime_of(request)
    listing: Listing | None = None
    error = None
    try:
        listing = _listing(query, req)
    except BadParameter as e:
        error = e.detail
    tz = listing.tz if listing else req.tz
    since_missed = req.now_utc - timedelta(days=stats.MISSED_DAYS)
    since_load = req.now_utc - timedelta(days=stats.LOAD_DAYS)
    principal = req.principal

    def work() -> tuple[CallPage | None, list[MissedNumber] | None, Load | None, dict[str, Any]]:
        page = _calls(rt, req, listing) if listing else None
        with rt.pool.lease() as store:
            reader = rt.reader(store)
            missed = stats.missed(reader, req, since_missed, None, tz) if principal.may("missed") else None
            load = stats.load(reader, req, since_load, None, tz) if principal.may("load") else None
        return page, missed, load, _who(rt, req, tz)

    page, missed, load, who = await rt.run(work)
    return Template("index.html", status_code=400 if error else 200, context={
        **who, "page": page, "error": error, "values": present.form_values(query),
        "missed": missed, "missed_days": stats.MISSED_DAYS, "load": load,
        "load_days": stats.LOAD_DAYS,
        "hour_chart": charts.load_by_hour(load) if load else None,
        "weekday_grid": charts.weekday_grid(load) if load else None,
    })


@get("/panel/calls", include_in_schema=False)
async def history(request: Request[Any, Any, Any]) -> Template:
    """For htmx: the history region for new filters (a bad filter: its message in place of the
    table), or, with a cursor, the next page's rows to append."""
    req = await context(request, "list", session_ok=True)
    query = query_of(request)
    rt = runtime_of(request)
    values = present.form_values(query)
    try:
        listing = _listing(query, req)
    except BadParameter as e:
        if "cursor" in query:
            raise  # "More calls" has no form to show it in: the page's notice does
        who = await rt.run(_who, rt, req, req.tz)
        return Template("results.html", status_code=400,
                        context={**who, "page": None, "error": e.detail, "values": values})

    def work() -> tuple[CallPage, dict[str, Any]]:
        return _calls(rt, req, listing), _who(rt, req, listing.tz)

    page, who = await rt.run(work)
    ctx = {**who, "page": page, "error": None, "values": values}
    if listing.after is not None:
        return Template("calls_rows.html", context=ctx)
    # the address bar follows the filters, so reloading or sharing the page keeps them
    return Template("results.html", context=ctx,
                    headers={"HX-Push-Url": present.page_url("/", values)})


@get("/panel/calls/{call_id:str}", include_in_schema=False)
async def call(request: Request[Any, Any, Any], call_id: FromPath[str]) -> Template:
    """One call's legs and recordings (a player each, for roles that may play): a table row
    for htmx to open under the call, else a page of its own."""
    req = await context(request, "list", session_ok=True)
    query = query_of(request)
    params.only(query, ("tz",))
    tz_name, _ = params.zone(query, req.tz)
    cid = params.call_id(call_id)
    rt = runtime_of(request)

    def work() -> tuple[CallDetail, dict[str, Any]]:
        with rt.pool.lease() as store:
            detail = calls.call_detail(rt.reader(store), req, cid, tz_name)
        return detail, _who(rt, req, tz_name)

    detail, who = await rt.run(work)
    return Template("call_row.html" if _is_htmx(request) else "call_page.html",
                    context={**who, "detail": detail})


# -- signing in and out ---------------------------------------------------------------------------


def _same_site(request: Request[Any, Any, Any]) -> bool:
    """A form posted from this site (browsers say where a request comes from): a page elsewhere
    cannot sign a visitor in with its own key, or out."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    return origin is None or origin.split("://", 1)[-1] == request.headers.get("host", "")


@post("/session", include_in_schema=False)
async def sign_in(request: Request[Any, Any, Any],
                  data: URLEncodedBody[dict[str, str]]) -> Response[Any]:
    """Trade an API key for the panel's session cookie."""
    rt = runtime_of(request)
    if not _same_site(request):
        API_PANEL_SIGNINS.labels("cross_site").inc()
        log.warning("panel_signin_refused", reason="cross_site", client=client_address(request))
        return Template("signin.html", status_code=403,
                        context={"error": "sign in from this page's own form"})
    key = (data.get("api_key") or "").strip()
    try:
        value, expires = await rt.run(rt.auth.session_for, key)
    except Unauthorised as e:
        API_PANEL_SIGNINS.labels("refused").inc()
        log.info("panel_signin_refused", reason="key", client=client_address(request))
        return Template("signin.html", context={"error": e.detail}, status_code=401)
    API_PANEL_SIGNINS.labels("started").inc()
    parts = split_key(key)
    log.info("panel_session_started", key_id=parts[0] if parts else "",
             client=client_address(request))
    response = Redirect("/", status_code=303)
    response.set_cookie(SESSION_COOKIE, value, max_age=max(1, int(expires - rt.clock())),
                        httponly=True, samesite="strict", secure=request.url.scheme == "https",
                        path="/")
    return response


@post("/session/end", include_in_schema=False)
async def sign_out(request: Request[Any, Any, Any]) -> Response[Any]:
    """Forget the session cookie in this browser (revoking the key ends it everywhere)."""
    if not _same_site(request):
        return Template("signin.html", status_code=403,
                        context={"error": "sign out from this page's own button"})
    response = Redirect("/", status_code=303, headers={"Clear-Site-Data": '"cache"'})
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- errors and headers ---------------------------------------------------------------------------

_HTTP_MESSAGES = {404: "no such page", 405: "not allowed here", 400: "the request cannot be read"}


def on_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """A refusal or a failure as the panel shows it: a notice in the page for htmx, else a page
    saying what went wrong; signed out (or the key revoked): back to the sign-in form."""
    if isinstance(exc, ApiError):
        status, message = exc.status, exc.detail
    elif isinstance(exc, HTTPException) and exc.status_code < 500:
        status, message = exc.status_code, _HTTP_MESSAGES.get(exc.status_code, str(exc.detail))
    else:
        status, message = 500, unexpected(request, exc)
    htmx = _is_htmx(request)
    if status == 401:
        if htmx:
            return Response(b"", status_code=401, headers={"HX-Redirect": "/"})
        return Redirect("/", status_code=303)
    if htmx:
        return Template("notice.html", status_code=status, context={"error": message},
                        headers={"HX-Retarget": "#notice", "HX-Reswap": "innerHTML show:top"})
    return Template("error.html", status_code=status, context={"error": message, "status": status})


@lru_cache(maxsize=8)
def _headers(object_store: str) -> list[tuple[bytes, bytes]]:
    return [(b"content-security-policy", present.content_security_policy(object_store).encode()),
            (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]


def security_headers(app: ASGIApp) -> ASGIApp:
    """The panel's answers (pages, fragments, errors, its static files) with its security
    headers; HTML (call data) never cached, so Back after signing out shows none of it."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        rt: Runtime = scope["litestar_app"].state.runtime

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += _headers(rt.settings.object_store)
                if any(k == b"content-type" and v.startswith(b"text/html") for k, v in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_with_headers)

    return middleware


ROUTER = Router(
    path="/", route_handlers=[
        index, history, call, sign_in, sign_out,
        create_static_files_router(path="/static", directories=[HERE / "static"],
                                   include_in_schema=False),
    ],
    middleware=[security_headers],
    # every layer's handler, so none of the app's problem+json answers reaches a page
    exception_handlers={ApiError: on_error, HTTPException: on_error, Exception: on_error},
)
