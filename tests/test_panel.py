"""The panel page over HTTP, on the real capture as two tenants: signing in and out, the session
cookie's flags, the security headers, escaping, bad filters shown in the page, and the pure
helpers behind what the page shows. tests/test_panel_browser.py drives the same page in Chromium."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any, get_args

import pytest
from apiserver import HOSTILE_NAME, NOW, Api, add_missed_call, app_of, load_tenants, make_api
from conftest import CAPTURE
from litestar.testing import TestClient

from api.calls import services as calls_services
from api.panel import charts, present
from api.stats.schemas import Load, LoadCell, Peak
from contracts.metrics import REGISTRY
from contracts.records import Status
from store.queries import CALL_TYPES

EXPECTED = json.loads((CAPTURE / "expected_calls.json").read_text())
BASE = "https://panel.test.local"
CSP = ("default-src 'self'; media-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("panel")
    load_tenants(tmp)
    a = make_api(tmp)
    a.runtime.keys.set_tenant("acme", name="ACME sp. z o.o.", timezone="Europe/Warsaw")
    add_missed_call(a, "beta", "1795560000.1", NOW - 40_000, "+48 600 111 222", HOSTILE_NAME)
    yield a
    a.runtime.close()


@pytest.fixture(scope="module")
def client(api: Api) -> Iterator[TestClient[Any]]:
    with TestClient(app_of(api), base_url=BASE) as c:
        yield c


@pytest.fixture(autouse=True)
def signed_out(client: TestClient[Any]) -> None:
    client.cookies.clear()


def sign_in(client: TestClient[Any], key: str) -> Any:
    return client.post("/session", data={"api_key": key}, follow_redirects=False)


def signins(outcome: str) -> float:
    return REGISTRY.get_sample_value("pbxpipe_api_panel_signins_total", {"outcome": outcome}) or 0.0


HX = {"HX-Request": "true"}


class Markup(HTMLParser):
    """The tags and attributes of a page, to look for inline script and style."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def call_rows(html: str) -> list[str]:
    return re.findall(r'<tr class="call" data-call-id="([^"]+)"', html)


# -- signing in and out ------------------------------------------------------------------------


@pytest.mark.integration
def test_signing_in_trades_the_key_for_a_cookie_scripts_cannot_read_nor_other_sites_send(client, api) -> None:
    """The key goes in a POST body; the answer is a redirect to / (no key in it) and a session
    cookie: HttpOnly, SameSite=Strict, Secure over https, living as long as the session."""
    key = api.keys["admin"]
    r = sign_in(client, key)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("pbxpipe_session=")
    flags = {f.strip().split("=")[0].lower(): f.strip() for f in cookie.split(";")[1:]}
    assert {"httponly", "secure", "path", "max-age", "samesite"} <= set(flags)
    assert flags["samesite"].lower() == "samesite=strict" and flags["path"] == "Path=/"
    assert int(flags["max-age"].split("=")[1]) == api.settings.api_session_s
    assert key not in cookie and key.split("_")[-1] not in cookie
    page = client.get("/")
    assert "Signed in as <strong>admin</strong> of <strong>acme</strong>" in page.text
    assert "ACME sp. z o.o." in page.text


@pytest.mark.integration
def test_the_cookie_is_not_secure_over_plain_http(api) -> None:
    """Over http a Secure cookie would never come back, so it is set without the flag there."""
    plain = TestClient(app_of(api), base_url="http://panel.test.local")  # no lifespan: the runtime stays open
    r = plain.post("/session", data={"api_key": api.keys["admin"]}, follow_redirects=False)
    assert r.status_code == 303 and "secure" not in r.headers["set-cookie"].lower()


@pytest.mark.integration
def test_a_wrong_key_shows_the_sign_in_form_with_the_reason_and_is_counted(client, api) -> None:
    before = signins("refused")
    key = api.keys["admin"]
    r = sign_in(client, key[:-1] + ("A" if key[-1] != "A" else "B"))
    assert r.status_code == 401 and r.headers["content-type"].startswith("text/html")
    assert "invalid, expired or revoked API key" in r.text and 'name="api_key"' in r.text
    assert "set-cookie" not in r.headers
    assert signins("refused") == before + 1


@pytest.mark.integration
@pytest.mark.parametrize("headers", [{"Sec-Fetch-Site": "cross-site"},
                                     {"Origin": "https://elsewhere.example"}])
def test_a_form_posted_from_another_site_signs_nobody_in(client, api, headers) -> None:
    """A page elsewhere cannot sign a visitor in with a key of its choosing."""
    before = signins("cross_site")
    r = client.post("/session", data={"api_key": api.keys["admin"]}, headers=headers,
                    follow_redirects=False)
    assert r.status_code == 403 and "set-cookie" not in r.headers
    assert signins("cross_site") == before + 1


@pytest.mark.integration
def test_signing_out_forgets_the_cookie(client, api) -> None:
    sign_in(client, api.keys["admin"])
    r = client.post("/session/end", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert re.search(r'pbxpipe_session="?"?;.*(Max-Age=0|expires=)', r.headers["set-cookie"], re.I)
    assert 'name="api_key"' in client.get("/").text


@pytest.mark.integration
def test_revoking_the_key_ends_its_sessions(client, api) -> None:
    """With the key revoked the page is the sign-in form again, an htmx request is sent there,
    and a call's page redirects there."""
    row, key = api.runtime.keys.create_key(pbx_id="acme", role="admin")
    sign_in(client, key)
    assert call_rows(client.get("/").text)
    api.runtime.keys.revoke_key(row.key_id)
    assert 'name="api_key"' in client.get("/").text
    r = client.get("/panel/calls", headers=HX)
    assert r.status_code == 401 and r.headers["hx-redirect"] == "/"
    r = client.get(f"/panel/calls/acme:{EXPECTED['s01_in_answered_101']['linkedid']}",
                   follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"


@pytest.mark.integration
def test_a_key_in_the_url_is_refused_and_not_shown(client, api) -> None:
    key = api.keys["admin"]
    r = client.get(f"/?api_key={key}")
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html")
    assert "api_key: credentials go in the Authorization header" in r.text and key not in r.text


# -- headers, markup, escaping ---------------------------------------------------------------------


@pytest.mark.integration
def test_every_panel_answer_carries_the_security_headers(client, api) -> None:
    """Pages, fragments, errors and static files: the CSP, nosniff, no-referrer; HTML (call
    data) is never stored by the browser."""
    answers = [client.get("/"), sign_in(client, api.keys["admin"]), client.get("/"),
               client.get("/?since=yesterday"), client.get("/panel/calls", headers=HX),
               client.get("/panel/calls/acme:1.1"), client.get("/static/htmx.min.js"),
               client.get("/static/panel.css")]
    for r in answers:
        assert r.headers["content-security-policy"] == CSP, r.url
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        if r.headers.get("content-type", "").startswith("text/html"):
            assert r.headers["cache-control"] == "no-store", r.url
    assert "no-store" not in answers[-1].headers.get("cache-control", "")


@pytest.mark.integration
def test_pages_hold_no_inline_script_or_style(client, api) -> None:
    """What the CSP forbids the page does not need: every script is a file of this origin, no
    style element or attribute, no event-handler attribute, and htmx runs with eval off."""
    sign_in(client, api.keys["admin"])
    recorded = EXPECTED["s26_in_recorded_line_105"]["linkedid"]
    pages = [client.get("/").text, client.get(f"/panel/calls/acme:{recorded}").text,
             client.get(f"/panel/calls/acme:{recorded}", headers=HX).text]
    client.cookies.clear()
    pages.append(client.get("/").text)
    for text in pages:
        tags = Markup(text).tags
        for tag, attrs in tags:
            assert tag != "style" and "style" not in attrs, (tag, attrs)
            assert not [a for a in attrs if a.startswith("on") or a.startswith("hx-on")], (tag, attrs)
            if tag == "script":
                assert attrs.get("src", "").startswith("/static/"), attrs
    config = next(a["content"] for t, a in Markup(pages[0]).tags
                  if t == "meta" and a.get("name") == "htmx-config")
    assert json.loads(config or "")["allowEval"] is False


@pytest.mark.integration
def test_a_caller_name_is_shown_as_text_never_as_markup(client, api) -> None:
    """A caller's name written as markup reaches the page escaped: in the history, its rows for
    htmx, a call's details and the missed calls to call back."""
    sign_in(client, api.keys["beta_admin"])
    escaped = "&lt;script&gt;window.pwned = 1&lt;/script&gt;"
    texts = [client.get("/").text, client.get("/panel/calls?type=missed", headers=HX).text,
             client.get("/panel/calls/beta:1795560000.1").text]
    for text in texts:
        assert escaped in text and "<script>window" not in text and "<img src=x" not in text
    assert 'href="tel:+48600111222"' in texts[0]


# -- the history in the page ----------------------------------------------------------------------


@pytest.mark.integration
def test_the_page_lists_the_tenants_calls_newest_first(client, api) -> None:
    sign_in(client, api.keys["admin"])
    ids = call_rows(client.get("/").text)
    expected = sorted(EXPECTED.values(), key=lambda c: c["start"], reverse=True)
    assert ids == [f"acme:{c['linkedid']}" for c in expected]


@pytest.mark.integration
def test_until_includes_its_day(client, api) -> None:
    """The form's dates are days in the tenant's time zone and "until" includes its day: the
    capture's day from itself to itself holds every call, the day before none."""
    sign_in(client, api.keys["admin"])
    day = client.get("/panel/calls?since=2026-11-24&until=2026-11-24", headers=HX)
    assert day.status_code == 200 and len(call_rows(day.text)) == len(EXPECTED)
    before = client.get("/?since=2026-11-23&until=2026-11-23")
    assert before.status_code == 200 and call_rows(before.text) == []
    assert "No calls match these filters" in before.text


@pytest.mark.integration
@pytest.mark.parametrize(("query", "message"), [
    ("since=yesterday", "since: not an ISO 8601 date or time"),
    ("number=abc", "number: not a phone number"),
    ("type=voicemail", "type: must be one of incoming, outgoing, internal, missed"),
    ("since=2026-11-25&until=2026-11-23", "until: must be after since"),
    ("colour=red", "colour: unknown parameter"),
])
def test_a_bad_filter_shows_the_apis_message_in_the_page(client, api, query, message) -> None:
    """The whole page (no JavaScript) and the history region (htmx) both say what is wrong, in
    an alert where the table was, keeping the form as it was filled."""
    sign_in(client, api.keys["admin"])
    page = client.get(f"/?{query}")
    assert page.status_code == 400 and page.headers["content-type"].startswith("text/html")
    assert message in page.text and 'role="alert"' in page.text and "Traceback" not in page.text
    assert 'id="filters"' in page.text and call_rows(page.text) == []
    if query.startswith("number"):
        assert 'name="number" type="search" size="15" inputmode="tel" value="abc"' in page.text
    part = client.get(f"/panel/calls?{query}", headers=HX)
    assert part.status_code == 400 and message in part.text and part.text.startswith('<div id="results">')


@pytest.mark.integration
def test_a_failure_inside_more_calls_goes_to_the_pages_notice(client, api) -> None:
    sign_in(client, api.keys["admin"])
    r = client.get("/panel/calls?cursor=bm9wZQ", headers=HX)
    assert r.status_code == 400 and "cursor: not a cursor of this listing" in r.text
    assert r.headers["hx-retarget"] == "#notice"


@pytest.mark.integration
def test_more_calls_continues_after_the_last_row(client, api) -> None:
    """Without JavaScript "More calls" is a link to the next page; with htmx the same cursor
    gives the next rows; together they hold each call once."""
    sign_in(client, api.keys["admin"])
    first = client.get("/?limit=10&type=incoming")
    ids = call_rows(first.text)
    links = re.findall(r'<a href="(/\?[^"]+)"\s+hx-get="(/panel/calls\?[^"]+)"', first.text)
    [(plain, htmx)] = [(p.replace("&amp;", "&"), h.replace("&amp;", "&")) for p, h in links]
    assert "type=incoming" in plain and "limit=10" in plain
    rows = client.get(htmx, headers=HX)
    assert rows.status_code == 200 and "hx-push-url" not in rows.headers
    assert call_rows(client.get(plain).text) == call_rows(rows.text)
    ids += call_rows(rows.text)
    incoming = [c for c in EXPECTED.values() if c["direction"] == "inbound"]
    assert len(ids) == len(set(ids)) == len(incoming)


@pytest.mark.integration
def test_new_filters_put_the_pages_address_in_the_bar(client, api) -> None:
    sign_in(client, api.keys["admin"])
    r = client.get("/panel/calls?since=&type=missed&number=&limit=50", headers=HX)
    assert r.headers["hx-push-url"] == "/?type=missed"


@pytest.mark.integration
def test_another_tenants_call_is_not_found(client, api) -> None:
    sign_in(client, api.keys["beta_admin"])
    acme = f"acme:{EXPECTED['s26_in_recorded_line_105']['linkedid']}"
    theirs, missing = client.get(f"/panel/calls/{acme}"), client.get("/panel/calls/beta:1.1")
    assert theirs.status_code == missing.status_code == 404
    assert f"no call {acme}" in theirs.text and "no call beta:1.1" in missing.text


@pytest.mark.integration
def test_an_unexpected_failure_is_a_page_with_an_incident_id(client, api, monkeypatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the store fell over")

    monkeypatch.setattr(calls_services, "list_calls", broken)
    sign_in(client, api.keys["admin"])
    page = client.get("/")
    assert page.status_code == 500 and page.headers["content-type"].startswith("text/html")
    assert re.search(r"the request failed \(incident [0-9a-f]{12}\)", page.text)
    assert "fell over" not in page.text and "Traceback" not in page.text
    part = client.get("/panel/calls", headers=HX)
    assert part.status_code == 500 and part.headers["hx-retarget"] == "#notice"


@pytest.mark.integration
def test_what_each_role_is_shown(client, api) -> None:
    """Players for roles that may play, downloads for those that may download, costs, load and
    missed calls for those that may see them (each role here sees the recorded call to 105)."""
    keys = api.runtime.keys
    keys.set_group("acme", "line", ["105"], [])
    roles = {"admin": {}, "supervisor": {"group": "line"}, "user": {"extensions": ["105"]},
             "billing": {}}
    recorded = f"acme:{EXPECTED['s26_in_recorded_line_105']['linkedid']}"
    shown = {}
    for role, kw in roles.items():
        _, key = keys.create_key(pbx_id="acme", role=role, **kw)  # type: ignore[arg-type]
        client.cookies.clear()
        sign_in(client, key)
        page = client.get("/").text
        detail = client.get(f"/panel/calls/{recorded}").text
        shown[role] = {"cost": '<th scope="col" class="num">Cost</th>' in page,
                       "load": 'id="load-chart"' in page, "missed": 'id="missed"' in page,
                       "player": "<audio" in detail, "download": "?download=1" in detail}
    assert shown == {
        "admin": {"cost": True, "load": True, "missed": True, "player": True, "download": True},
        "supervisor": {"cost": False, "load": True, "missed": True, "player": True, "download": False},
        "user": {"cost": False, "load": False, "missed": True, "player": True, "download": False},
        "billing": {"cost": True, "load": False, "missed": False, "player": False, "download": False},
    }


# -- what the page shows, pure ------------------------------------------------------------------------


def test_every_status_and_call_type_has_a_label() -> None:
    assert set(present.STATUSES) == set(get_args(Status))
    assert set(present.CALL_TYPES) == set(CALL_TYPES)


@pytest.mark.parametrize(("seconds", "shown"), [
    (None, ""), (0, "0:00"), (0.025, "0:00"), (4.008, "0:04"), (59.6, "1:00"), (750, "12:30"),
    (3723, "1:02:03"),
])
def test_durations_read_as_a_clock(seconds, shown) -> None:
    assert present.duration(seconds) == shown


@pytest.mark.parametrize(("until", "sent"), [
    ("2026-11-24", "2026-11-25"), ("2026-12-31", "2027-01-01"),
    ("2026-11-24T08:00", "2026-11-24T08:00"), ("not-a-day!", "not-a-day!"),
])
def test_a_date_until_includes_its_day(until, sent) -> None:
    assert present.inclusive_until({"until": [until], "type": ["missed"]}) == {
        "until": [sent], "type": ["missed"]}


def test_recordings_in_an_object_store_may_play_from_its_origin() -> None:
    csp = present.content_security_policy("https://minio.example:9000/recordings")
    assert "media-src 'self' https://minio.example:9000;" in csp
    assert "default-src 'self';" in csp and "unsafe" not in csp
    assert present.content_security_policy("dir:///var/lib/recordings") == CSP


def test_links_carry_the_filters_and_nothing_empty() -> None:
    assert present.page_url("/", {"type": "missed", "number": "+48 601"}, cursor="abc") == \
        "/?type=missed&number=%2B48+601&cursor=abc"
    assert present.page_url("/", {}, cursor=None) == "/"
    assert present.tel_uri("+48 (601) 234-567") == "tel:+48601234567"
    assert present.money("0.00", "PLN") == "" and present.money("0.40", "PLN") == "0.40 PLN"


def test_the_hour_chart_stacks_each_hours_calls_to_scale() -> None:
    """Answered at the bottom, missed on it, the rest on top; the busiest hour fills the plot,
    hours are summed over the weekdays."""
    load = Load(tz="UTC", since=None, until=None, peak=Peak(calls=2, at=1.0), cells=[
        LoadCell(weekday=1, hour=9, calls=6, answered=3, missed=2, avg_wait_s=None),
        LoadCell(weekday=2, hour=9, calls=2, answered=2, missed=0, avg_wait_s=None),
        LoadCell(weekday=2, hour=17, calls=4, answered=1, missed=3, avg_wait_s=None),
    ])
    chart = charts.load_by_hour(load)
    assert len(chart.bars) == 24 and chart.top == 8 and chart.calls == 12
    nine, five_pm = chart.bars[9], chart.bars[17]
    assert (nine.calls, nine.answered, nine.missed, nine.other) == (8, 5, 2, 1)
    assert nine.other_y == 0 and nine.answered_y + nine.answered_h == chart.plot_height
    assert nine.missed_y + nine.missed_h == nine.answered_y and nine.other_y + nine.other_h == nine.missed_y
    assert five_pm.answered_h + five_pm.missed_h == chart.plot_height / 2
    assert all(b.answered_h == b.missed_h == b.other_h == 0 for i, b in enumerate(chart.bars) if i not in (9, 17))
    assert [b.x for b in chart.bars] == sorted(b.x for b in chart.bars)


def test_the_weekday_grid_shades_each_cell_against_the_busiest() -> None:
    load = Load(tz="UTC", since=None, until=None, peak=Peak(calls=0, at=None), cells=[
        LoadCell(weekday=1, hour=9, calls=8, answered=8, missed=0, avg_wait_s=None),
        LoadCell(weekday=7, hour=23, calls=1, answered=0, missed=1, avg_wait_s=None),
    ])
    grid = charts.weekday_grid(load)
    assert [r.weekday for r in grid] == ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    assert all(len(r.cells) == 24 for r in grid)
    assert grid[0].cells[9].level == 4 and grid[6].cells[23].level == 1
    assert sum(c.level for r in grid for c in r.cells) == 5
