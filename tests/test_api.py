"""The panel API end to end over the real capture (two tenants with the same linkedids): who sees
what, paging, recordings and their access log, exports, errors as problem+json, credentials."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from apiserver import NOW, Api, app_of, bearer, load_tenants, make_api
from conftest import CAPTURE
from litestar.testing import TestClient
from structlog.testing import capture_logs

EXPECTED = json.loads((CAPTURE / "expected_calls.json").read_text())
ACME_CALLS = {f"acme:{c['linkedid']}" for c in EXPECTED.values()}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("api")
    load_tenants(tmp)
    a = make_api(tmp)
    yield a
    a.runtime.close()


@pytest.fixture(scope="module")
def client(api: Api) -> Iterator[TestClient[Any]]:
    with TestClient(app_of(api)) as c:
        yield c


def get(client: TestClient[Any], api: Api, role: str, path: str, **kw: Any) -> Any:
    return client.get(path, headers={**bearer(api.keys[role]), **kw.pop("headers", {})}, **kw)


def all_pages(client: TestClient[Any], api: Api, role: str, path: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    url = path
    while True:
        page = get(client, api, role, url).json()
        items += page["items"]
        if not page["next_cursor"]:
            return items
        sep = "&" if "?" in path else "?"
        url = f"{path}{sep}cursor={page['next_cursor']}"


@pytest.mark.integration
def test_an_admin_pages_through_every_call_of_the_tenant_once_newest_first(client, api) -> None:
    """Keyset pages of 7 cover the tenant's 26 calls exactly once, in (start, id) descending."""
    items = all_pages(client, api, "admin", "/v1/calls?limit=7")
    ids = [c["call_id"] for c in items]
    assert sorted(ids) == sorted(ACME_CALLS) and len(ids) == len(set(ids))
    keys = [(c["start"], c["call_id"]) for c in items]
    assert keys == sorted(keys, reverse=True)
    assert all("cost_buy" in c for c in items)  # admins see buy prices


@pytest.mark.integration
def test_another_tenants_call_answers_exactly_as_one_that_does_not_exist(client, api) -> None:
    acme_call = sorted(ACME_CALLS)[0]
    theirs = get(client, api, "beta_admin", f"/v1/calls/{acme_call}")
    missing = get(client, api, "beta_admin", "/v1/calls/beta:1.1")
    assert theirs.status_code == missing.status_code == 404
    strip = lambda r: {k: v for k, v in r.json().items() if k not in ("instance", "detail")}  # noqa: E731
    assert strip(theirs) == strip(missing)
    assert get(client, api, "beta_admin", f"/v1/calls/{acme_call}/recordings/1").status_code == 404
    beta_ids = {c["call_id"] for c in all_pages(client, api, "beta_admin", "/v1/calls?limit=1000")}
    assert beta_ids and not beta_ids & ACME_CALLS


@pytest.mark.integration
def test_a_user_sees_the_calls_their_extensions_took_part_in(client, api) -> None:
    items = all_pages(client, api, "user", "/v1/calls")
    assert items
    for c in items:
        parties = {c["caller"], c["called"], c["first_answered_by"], c["last_answered_by"],
                   *c["extensions_rang"]}
        assert "101" in parties, c["call_id"]
    assert "cost_buy" not in items[0] and "cost" not in items[0]  # costs are admin's and billing's


@pytest.mark.integration
def test_a_supervisor_sees_their_groups_extensions_and_queues(client, api) -> None:
    items = all_pages(client, api, "supervisor", "/v1/calls")
    assert items
    for c in items:
        assert c["queue"] == "support" or "104" in {
            c["caller"], c["called"], c["first_answered_by"], c["last_answered_by"],
            *c["extensions_rang"]}


@pytest.mark.integration
def test_filters_combine_and_a_cursor_belongs_to_its_filters(client, api) -> None:
    missed = all_pages(client, api, "admin", "/v1/calls?type=missed&limit=2")
    assert missed and all(c["status"] == "missed" for c in missed)
    first = get(client, api, "admin", "/v1/calls?type=missed&limit=2").json()
    other = get(client, api, "admin", f"/v1/calls?type=incoming&cursor={first['next_cursor']}")
    assert other.status_code == 400 and other.json()["parameter"] == "cursor"
    number = get(client, api, "admin", "/v1/calls?number=0048601234567").json()["items"]
    assert number and all("601234567" in (c["caller"] + c["called"]) for c in number)


@pytest.mark.integration
def test_a_call_comes_with_its_legs_and_recordings(client, api) -> None:
    recorded = get(client, api, "admin", "/v1/calls?recorded=true").json()["items"]
    assert len(recorded) == 2
    detail = get(client, api, "admin", f"/v1/calls/{recorded[0]['call_id']}").json()
    assert detail["call"]["call_id"] == recorded[0]["call_id"]
    [rec] = detail["recordings"]
    assert rec["n"] == 1 and len(rec["sha256"]) == 64 and rec["duration_s"] > 0
    assert rec["url"] == f"/v1/calls/{recorded[0]['call_id']}/recordings/1"
    billing = get(client, api, "billing", f"/v1/calls/{recorded[0]['call_id']}").json()
    assert billing["recordings"] == []


@pytest.mark.integration
def test_playing_a_recording_logs_it_and_redirects_to_a_short_lived_link(client, api) -> None:
    recorded = get(client, api, "admin", "/v1/calls?recorded=true").json()["items"][0]["call_id"]
    before = len(all_pages(client, api, "admin", "/v1/audit/recordings"))
    r = get(client, api, "admin", f"/v1/calls/{recorded}/recordings/1", follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"].startswith("/v1/media/")
    media = r.headers["location"]
    whole = client.get(media)
    assert whole.status_code == 200 and whole.content[:4] == b"RIFF"
    part = client.get(media, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == whole.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(whole.content)}"
    assert client.get(media, headers={"Range": f"bytes={len(whole.content)}-"}).status_code == 416
    log = all_pages(client, api, "admin", "/v1/audit/recordings")
    assert len(log) == before + 1
    assert log[0]["call_id"] == recorded and log[0]["action"] == "play" and log[0]["role"] == "admin"
    api.clock.now = NOW + 301  # the link lives 300 s at most
    try:
        assert client.get(media).status_code == 404
    finally:
        api.clock.now = NOW


@pytest.mark.integration
def test_a_download_needs_the_right_and_names_the_file(client, api) -> None:
    recorded = get(client, api, "admin", "/v1/calls?recorded=true").json()["items"][0]["call_id"]
    r = get(client, api, "admin", f"/v1/calls/{recorded}/recordings/1?download=1", follow_redirects=False)
    media = client.get(r.headers["location"])
    assert "attachment" in media.headers["content-disposition"]
    assert get(client, api, "supervisor", f"/v1/calls/{recorded}/recordings/1?download=1").status_code == 403
    assert get(client, api, "billing", f"/v1/calls/{recorded}/recordings/1").status_code == 403
    assert get(client, api, "user", "/v1/audit/recordings").status_code == 403


@pytest.mark.integration
def test_the_history_as_csv(client, api) -> None:
    r = get(client, api, "admin", "/v1/calls?limit=1000", headers={"Accept": "text/csv"})
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert {row["call_id"] for row in rows} == ACME_CALLS


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_an_export_holds_every_call_of_the_range(client, api, fmt: str) -> None:
    r = get(client, api, "billing", f"/v1/export?format={fmt}&since=2026-11-01&until=2026-12-01")
    assert r.status_code == 200
    if fmt == "csv":
        ids = {row["call_id"] for row in csv.DictReader(io.StringIO(r.text))}
    else:
        ids = set(pq.read_table(io.BytesIO(r.content)).column("call_id").to_pylist())
    assert ids == ACME_CALLS
    assert get(client, api, "user", "/v1/export").status_code == 403


@pytest.mark.integration
def test_load_and_costs(client, api) -> None:
    load = get(client, api, "admin", "/v1/stats/load?since=2026-11-01&until=2026-12-01").json()
    assert sum(c["calls"] for c in load["cells"]) == len(ACME_CALLS)
    assert load["peak"]["calls"] >= 1
    costs = get(client, api, "billing", "/v1/stats/costs?since=2026-11-01&until=2026-12-01").json()
    assert costs["rows"] and all("cost_buy" not in r for r in costs["rows"])
    admin = get(client, api, "admin", "/v1/stats/costs?since=2026-11-01&until=2026-12-01&by=month").json()
    assert {r["key"] for r in admin["rows"]} == {"2026-11"} and "cost_buy" in admin["rows"][0]


@pytest.mark.integration
@pytest.mark.parametrize(("path", "parameter"), [
    ("/v1/calls?since=yesterday", "since"), ("/v1/calls?limit=1001", "limit"),
    ("/v1/calls?type=voicemail", "type"), ("/v1/calls?tz=Mars/Base", "tz"),
    ("/v1/calls?number=abc", "number"), ("/v1/calls?colour=red", "colour"),
    ("/v1/calls?cursor=bm9wZQ", "cursor"), ("/v1/calls?since=2026-11-02&until=2026-11-01", "until"),
    ("/v1/stats/costs?by=planet", "by"), ("/v1/export?format=xlsx", "format"),
])
def test_a_bad_parameter_is_a_problem_that_names_it(client, api, path: str, parameter: str) -> None:
    r = get(client, api, "admin", path)
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["parameter"] == parameter and body["status"] == 400 and body["type"]


@pytest.mark.integration
def test_credentials_only_in_the_header_and_never_in_a_log_line(client, api) -> None:
    key = api.keys["admin"]
    with capture_logs() as logs:
        in_url = client.get(f"/v1/calls?access_token={key}")
        ok = get(client, api, "admin", "/v1/calls")
        bad = client.get("/v1/calls", headers=bearer(key[:-1] + ("A" if key[-1] != "A" else "B")))
    assert in_url.status_code == 400 and in_url.json()["parameter"] == "access_token"
    assert ok.status_code == 200 and bad.status_code == 401
    assert bad.headers["www-authenticate"].startswith("Bearer")
    assert logs and key not in repr(logs) and key.split("_")[2] not in repr(logs)


@pytest.mark.integration
def test_revoked_and_expired_keys_are_refused(client, api) -> None:
    row, key = api.runtime.keys.create_key(pbx_id="acme", role="admin", expires_at=NOW + 60)
    assert get_key(client, key).status_code == 200
    api.clock.now = NOW + 61
    try:
        assert get_key(client, key).status_code == 401
    finally:
        api.clock.now = NOW
    api.runtime.keys.revoke_key(row.key_id)
    assert get_key(client, key).status_code == 401


def get_key(client: TestClient[Any], key: str) -> Any:
    return client.get("/v1/calls?limit=1", headers=bearer(key))


@pytest.mark.integration
def test_the_served_openapi_document_is_the_one_in_the_repository(client) -> None:
    served = client.get("/v1/openapi.json").json()
    kept = json.loads((Path(__file__).parent.parent / "api" / "openapi.json").read_text())
    assert served == kept, "regenerate it: pbxpipe api --openapi api/openapi.json"
    assert {"/v1/calls", "/v1/calls/{call_id}", "/v1/calls/{call_id}/recordings/{n}", "/v1/missed",
            "/v1/stats/load", "/v1/stats/costs", "/v1/export", "/v1/audit/recordings"} <= set(served["paths"])


@pytest.mark.integration
def test_health_and_readiness(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
