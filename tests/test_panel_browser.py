"""The panel page in a real headless Chromium (Debian's chromium, driven by Playwright), served by
uvicorn on 127.0.0.1 over the real capture as two tenants: signing in, the history and its
filters, "More calls", a recording playing through its media link, what each role is shown,
another tenant's call, signing out and a revoked key. Each test is a fresh browser context (its
own cookies) in one browser for the module; the assertions are what a person sees."""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apiserver import HOSTILE_NAME, NOW, Api, add_missed_call, load_tenants, make_api
from conftest import CAPTURE
from net import free_port, wait_listening
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from api.server import server
from store.queries import number_key

CHROMIUM = "/usr/bin/chromium"  # Debian's package (make tools): Playwright's own download cannot run here
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    # without these Chromium reaches for Google's services and this machine refuses them
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
EXPECTED = json.loads((CAPTURE / "expected_calls.json").read_text())
ACME_IDS = {f"acme:{c['linkedid']}" for c in EXPECTED.values()}
WARSAW = ZoneInfo("Europe/Warsaw")
BETA_MISSED = "beta:1795560000.1"

pytestmark = pytest.mark.integration


@dataclass
class Panel:
    url: str
    api: Api

    def json(self, role: str, path: str) -> Any:
        """What the JSON API answers the same key (to hold the page to the data)."""
        req = urllib.request.Request(self.url + path,
                                     headers={"Authorization": f"Bearer {self.api.keys[role]}"})
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 (loopback, our server)
            return json.load(r)

    def call_ids(self, role: str, query: str = "") -> set[str]:
        return {c["call_id"] for c in self.json(role, f"/v1/calls?limit=1000{query}")["items"]}


@pytest.fixture(scope="module")
def panel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Panel]:
    tmp = tmp_path_factory.mktemp("panel-browser")
    load_tenants(tmp)
    port = free_port()
    api = make_api(tmp, api_host="127.0.0.1", api_port=port)
    api.runtime.keys.set_tenant("acme", name="ACME sp. z o.o.", timezone="Europe/Warsaw")
    api.runtime.keys.set_group("acme", "line", ["105"], [])
    _, api.keys["user_105"] = api.runtime.keys.create_key(pbx_id="acme", role="user", extensions=["105"])
    add_missed_call(api, "beta", BETA_MISSED.split(":")[1], NOW - 40_000, "+48 600 111 222", HOSTILE_NAME)
    srv = server(api.settings, api.runtime)  # the real uvicorn, as pbxpipe api runs it
    thread = threading.Thread(target=srv.run, name="panel-uvicorn", daemon=True)
    thread.start()
    wait_listening(port)
    try:
        yield Panel(f"http://127.0.0.1:{port}", api)
    finally:
        srv.should_exit = True  # its shutdown closes the runtime
        thread.join(timeout=20)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def context(browser: Browser, panel: Panel) -> Iterator[BrowserContext]:
    ctx = browser.new_context(base_url=panel.url, viewport={"width": 1300, "height": 900})
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    """A tab; after the test, no script error and nothing the Content-Security-Policy blocked."""
    p = context.new_page()
    problems: list[str] = []
    p.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    p.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    yield p
    assert problems == []


def sign_in(page: Page, key: str) -> None:
    page.goto("/")
    page.get_by_label("API key", exact=True).fill(key)
    page.get_by_role("button", name="Sign in").click()


def rows(page: Page) -> Any:
    return page.locator("tr.call")


def shown_ids(page: Page) -> list[str]:
    return rows(page).evaluate_all("rs => rs.map(r => r.dataset.callId)")


def test_a_wrong_key_shows_an_error_and_no_calls(page, panel) -> None:
    key = panel.api.keys["admin"]
    sign_in(page, key[:-1] + ("A" if key[-1] != "A" else "B"))
    expect(page.get_by_role("alert")).to_have_text("invalid, expired or revoked API key")
    expect(page.get_by_label("API key", exact=True)).to_be_visible()
    expect(rows(page)).to_have_count(0)
    assert key not in page.url


def test_an_admin_sees_every_call_of_the_tenant_newest_first_in_its_time_zone(page, panel) -> None:
    sign_in(page, panel.api.keys["admin"])
    expect(page.locator("header")).to_contain_text("Call history · ACME sp. z o.o.")
    expect(page.locator("header")).to_contain_text("Signed in as admin of acme · times in Europe/Warsaw")
    expect(rows(page)).to_have_count(len(EXPECTED))
    assert set(shown_ids(page)) == ACME_IDS
    newest = max(EXPECTED.values(), key=lambda c: c["start"])
    first = rows(page).first.locator("td")
    expect(first.nth(0)).to_have_text(datetime.fromtimestamp(newest["start"], WARSAW).strftime("%Y-%m-%d %H:%M:%S"))
    expect(page.get_by_role("link", name="More calls")).to_have_count(0)
    # missed calls: each of the capture's was followed by an answered call from the same number
    expect(page.locator("#missed")).to_contain_text("Nobody is waiting for a call back.")
    expect(page.locator("#load-chart g.bar")).to_have_count(24)
    peak = panel.json("admin", "/v1/stats/load")["peak"]["calls"]
    expect(page.locator("#peak")).to_contain_text(f"Most calls at once: {peak}")
    busiest = page.locator("#weekday-grid td.heat-4")
    expect(busiest).to_have_count(1)
    expect(busiest).to_have_text(str(len(EXPECTED)))  # the whole capture is one hour of a Tuesday


def test_filters_change_the_rows_in_place(page, panel) -> None:
    sign_in(page, panel.api.keys["admin"])
    expect(rows(page)).to_have_count(len(EXPECTED))
    page.evaluate("window.stillThisPage = true")  # a reload would lose it

    page.get_by_label("Type", exact=True).select_option(label="Missed")
    missed = [c for c in EXPECTED.values() if c["status"] == "missed"]
    expect(rows(page)).to_have_count(len(missed))
    expect(rows(page).locator("td.status-missed")).to_have_count(len(missed))
    expect(page).to_have_url(re.compile(r"/\?type=missed$"))

    page.get_by_label("Type", exact=True).select_option(label="any")
    page.get_by_label("Number", exact=True).fill("+48 601 234 567")
    page.get_by_label("Number", exact=True).press("Enter")
    with_number = [c for c in EXPECTED.values()
                   if number_key("601234567") in (number_key(c["caller"]), number_key(c["called"]))]
    expect(rows(page)).to_have_count(len(with_number))
    for text in rows(page).all_inner_texts():
        assert "601234567" in re.sub(r"\D", "", text)

    page.get_by_label("Number", exact=True).fill("")
    page.get_by_label("Extension", exact=True).fill("103")
    page.get_by_label("Extension", exact=True).press("Enter")
    expect(rows(page)).to_have_count(len(panel.call_ids("admin", "&extension=103")))
    assert set(shown_ids(page)) == panel.call_ids("admin", "&extension=103")

    page.get_by_label("Extension", exact=True).fill("")
    page.get_by_label("Number", exact=True).fill("abc")
    page.get_by_label("Number", exact=True).press("Enter")
    expect(page.get_by_role("alert")).to_have_text(
        "number: not a phone number (digits, with + ( ) - . / and spaces)")
    expect(rows(page)).to_have_count(0)
    page.get_by_label("Number", exact=True).fill("")
    page.get_by_label("Number", exact=True).press("Enter")
    expect(rows(page)).to_have_count(len(EXPECTED))
    expect(page.get_by_role("alert")).to_have_count(0)
    assert page.evaluate("window.stillThisPage") is True


def test_more_calls_appends_the_next_page_without_duplicates(page, panel) -> None:
    sign_in(page, panel.api.keys["admin"])
    page.get_by_label("Per page", exact=True).select_option("10")
    expect(rows(page)).to_have_count(10)
    first_page = shown_ids(page)
    page.get_by_role("link", name="More calls").click()
    expect(rows(page)).to_have_count(20)
    assert shown_ids(page)[:10] == first_page
    page.get_by_role("link", name="More calls").click()
    expect(rows(page)).to_have_count(len(EXPECTED))
    expect(page.get_by_role("link", name="More calls")).to_have_count(0)
    ids = shown_ids(page)
    assert len(ids) == len(set(ids)) and set(ids) == ACME_IDS
    starts = [EXPECTED_BY_ID[i]["start"] for i in ids]
    assert starts == sorted(starts, reverse=True)


EXPECTED_BY_ID = {f"acme:{c['linkedid']}": c for c in EXPECTED.values()}


def test_a_recording_plays_through_its_media_link_and_the_access_is_logged(page, panel) -> None:
    """Pressing the player's play button loads the audio in Chromium (302 to the short-lived
    media link, answered 206 to the player's Range request); it has its duration and seeks to
    the middle; the access log gains one row, for this admin."""
    before = panel.json("admin", "/v1/audit/recordings?limit=1000")["items"]
    sign_in(page, panel.api.keys["admin"])
    page.get_by_label("Recorded", exact=True).select_option(label="recorded only")
    expect(rows(page)).to_have_count(2)
    expect(rows(page).get_by_role("img", name="recorded")).to_have_count(2)
    media: list[Any] = []
    page.on("response", lambda r: media.append(r) if "/v1/media/" in r.url else None)
    call_id = shown_ids(page)[0]
    rows(page).first.get_by_role("link", name="Details").click()
    detail = page.locator("tr.detail")
    expect(detail.locator("audio")).to_have_count(1)
    expect(detail.get_by_role("link", name="Download")).to_be_visible()
    audio = detail.locator("audio")
    box = audio.bounding_box()
    assert box is not None
    audio.click(position={"x": 20, "y": box["height"] / 2})  # the player's play button
    page.wait_for_function("() => { const a = document.querySelector('tr.detail audio');"
                           " return a.duration > 0 && !a.paused; }")
    played = page.evaluate("""async () => {
        const audio = document.querySelector('tr.detail audio');
        audio.pause();
        const duration = audio.duration;
        const seeked = new Promise(ok => audio.addEventListener('seeked', ok, {once: true}));
        audio.currentTime = duration / 2;
        await seeked;
        return {duration, at: audio.currentTime, ready: audio.readyState};
    }""")
    recording = panel.json("admin", f"/v1/calls/{call_id}")["recordings"][0]
    assert played["duration"] == pytest.approx(recording["duration_s"], abs=0.1)
    assert played["at"] == pytest.approx(played["duration"] / 2) and played["ready"] >= 2
    assert media and all(r.status == 206 for r in media)
    assert media[0].headers["content-range"].startswith("bytes 0-")
    after = panel.json("admin", "/v1/audit/recordings?limit=1000")["items"]
    assert len(after) == len(before) + 1
    newest = after[0]
    assert (newest["call_id"], newest["action"], newest["role"]) == (call_id, "play", "admin")


def test_a_user_sees_only_their_calls_and_no_download_link(page, panel) -> None:
    sign_in(page, panel.api.keys["user_105"])
    expect(page.locator("header")).to_contain_text("Signed in as user of acme")
    mine = panel.call_ids("user_105")
    assert mine and mine < ACME_IDS
    expect(rows(page)).to_have_count(len(mine))
    assert set(shown_ids(page)) == mine
    expect(page.locator("#load-chart")).to_have_count(0)
    expect(page.locator("#missed")).to_be_visible()
    page.get_by_label("Recorded", exact=True).select_option(label="recorded only")
    expect(rows(page)).to_have_count(2)
    rows(page).first.get_by_role("link", name="Details").click()
    expect(page.locator("tr.detail audio")).to_have_count(1)
    expect(page.locator("tr.detail").get_by_role("link", name="Download")).to_have_count(0)


def test_billing_sees_no_player(page, panel) -> None:
    sign_in(page, panel.api.keys["billing"])
    expect(rows(page)).to_have_count(len(EXPECTED))
    recorded = f"acme:{EXPECTED['s26_in_recorded_line_105']['linkedid']}"
    row = page.locator(f'tr.call[data-call-id="{recorded}"]')
    expect(row.get_by_role("img", name="recorded")).to_have_count(0)
    row.get_by_role("link", name="Details").click()
    detail = page.locator("tr.detail")
    expect(detail).to_contain_text("Who rang")
    expect(detail.locator("audio")).to_have_count(0)
    expect(detail.get_by_role("link", name="Download")).to_have_count(0)
    expect(page.locator("#load-chart")).to_have_count(0)
    expect(page.locator("#missed")).to_have_count(0)


def test_another_tenants_call_is_not_found_and_a_callers_name_stays_text(page, panel) -> None:
    sign_in(page, panel.api.keys["beta_admin"])
    expect(rows(page)).to_have_count(len(EXPECTED) + 1)
    hostile = page.locator(f'tr.call[data-call-id="{BETA_MISSED}"] .name')
    expect(hostile).to_have_text(HOSTILE_NAME)
    assert page.evaluate("window.pwned") is None
    callback = page.locator("#missed").get_by_role("link", name="+48 600 111 222")
    expect(callback).to_have_attribute("href", "tel:+48600111222")

    acme_call = f"acme:{EXPECTED['s26_in_recorded_line_105']['linkedid']}"
    answer = page.goto(f"/panel/calls/{acme_call}")
    assert answer is not None and answer.status == 404
    expect(page.get_by_role("alert")).to_have_text(f"no call {acme_call}")


def test_the_page_works_without_javascript(browser, panel) -> None:
    """The filters are a GET form, "More calls" a link to the next page, details a page."""
    ctx = browser.new_context(base_url=panel.url, java_script_enabled=False)
    try:
        page = ctx.new_page()
        sign_in(page, panel.api.keys["admin"])
        page.get_by_label("Type", exact=True).select_option(label="Incoming")
        page.get_by_label("Per page", exact=True).select_option("10")
        page.get_by_role("button", name="Show calls").click()
        expect(page).to_have_url(re.compile(r"type=incoming"))
        expect(rows(page)).to_have_count(10)
        first = shown_ids(page)
        page.get_by_role("link", name="More calls").click()
        expect(rows(page)).to_have_count(len([c for c in EXPECTED.values() if c["direction"] == "inbound"]) - 10)
        assert not set(first) & set(shown_ids(page))
        rows(page).first.get_by_role("link", name="Details").click()
        expect(page.get_by_role("link", name="← All calls")).to_be_visible()
        expect(page.locator("table.legs")).to_be_visible()
    finally:
        ctx.close()


def test_signing_out_returns_to_the_sign_in_form_and_a_revoked_keys_cookie_is_refused(
        page, context, panel) -> None:
    keys = panel.api.runtime.keys
    row, key = keys.create_key(pbx_id="acme", role="admin")
    sign_in(page, key)
    expect(rows(page)).to_have_count(len(EXPECTED))
    [session] = [c for c in context.cookies() if c["name"] == "pbxpipe_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict" and key not in session["value"]
    assert page.evaluate("document.cookie") == ""  # out of scripts' reach

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key", exact=True)).to_be_visible()
    assert not [c for c in context.cookies() if c["name"] == "pbxpipe_session"]

    context.add_cookies([session])  # the old cookie, kept by someone: valid until the key goes
    page.goto("/")
    expect(rows(page)).to_have_count(len(EXPECTED))
    keys.revoke_key(row.key_id)
    page.reload()
    expect(page.get_by_label("API key", exact=True)).to_be_visible()
    expect(rows(page)).to_have_count(0)
