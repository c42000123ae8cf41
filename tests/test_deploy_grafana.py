"""deploy/grafana: provisioned data sources and dashboards whose SQL runs against real call data.

Each ClickHouse panel's SQL is expanded as the grafana-clickhouse-datasource plugin expands it
(its macros ``$__timeFilter(col)``, ``$__fromTime``, ``$__toTime``, ``$__interval_s``; Grafana's
``${var}`` / ``${var:sqlstring}``) and run in chDB over the real Asterisk capture replayed by
``pbxpipe replay``; the call history panel must show what ``store.queries`` returns. The PromQL of
the pipeline-health dashboard is parsed by promtool and reads only declared metrics.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from contracts.metrics import REGISTRY

ROOT = Path(__file__).parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = {p.stem: json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))}
CAPTURE = ROOT / "tests" / "fixtures" / "asterisk"
EXPECTED = json.loads((CAPTURE / "expected_calls.json").read_text())
FROM, TO = 1795500000, 1795600000  # the capture: 2026-11-24 16:52-17:04 UTC, a Tuesday
# Every missed caller of the capture was called back; a later day adds some who were not.
CB_FROM, CB_TO = 1795700000, 1795800000
LATER = [  # (linkedid, direction, caller, called, status, answered, start)
    ("l1", "inbound", "+48 999 000 111", "+48221234501", "missed", 0, CB_FROM + 100),
    ("l2", "inbound", "+48999000111", "+48221234501", "missed", 0, CB_FROM + 200),
    ("l3", "inbound", "+48777000222", "+48221234501", "missed", 0, CB_FROM + 300),
    ("l4", "outbound", "101", "0777000222", "answered", 1, CB_FROM + 400),
    ("l5", "inbound", "+48666000333", "+48221234501", "missed", 0, CB_FROM + 500),
]
SETUP = [
    "INSERT INTO calls (call_id, pbx_id, linkedid, direction, caller, called, status, answered,"
    " start, `end`, version) VALUES " + ", ".join(
        f"('acme:{lid}', 'acme', '{lid}', '{d}', '{a}', '{b}', '{st}', {ans},"
        f" fromUnixTimestamp64Milli({t * 1000}), fromUnixTimestamp64Milli({t * 1000 + 30000}), 1)"
        for lid, d, a, b, st, ans, t in LATER)
]
DEFAULTS = {"pbx": "", "tz": "UTC", "type": "all", "extension": "", "number": ""}
INTERVAL_S = 60

pytestmark = pytest.mark.integration


# -- the plugin's expansion ------------------------------------------------------------------


def _sqlstring(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def expand(sql: str, variables: dict[str, str], time_from: int = FROM, time_to: int = TO,
           interval_s: int = INTERVAL_S) -> str:
    """The SQL the plugin sends: Grafana's variables first, then the plugin's macros."""

    def var(m: re.Match[str]) -> str:
        name, fmt = m.group(1) or m.group(3), m.group(2)
        value = variables[name]
        if fmt in (None, "raw"):
            return value
        if fmt == "sqlstring":
            return _sqlstring(value)
        if fmt == "singlequote":
            return "'" + value.replace("'", "\\'") + "'"
        raise AssertionError(f"variable format {fmt} not expanded by this test")

    sql = re.sub(r"\$\{(\w+)(?::(\w+))?\}|\$(?!__)(\w+)", var, sql)
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)",
                 lambda m: f"{m[1]} >= toDateTime({time_from}) AND {m[1]} <= toDateTime({time_to})",
                 sql)
    sql = sql.replace("$__fromTime", f"toDateTime({time_from})")
    sql = sql.replace("$__toTime", f"toDateTime({time_to})")
    sql = sql.replace("$__interval_s", str(interval_s))
    assert "$" not in sql, f"unexpanded macro or variable in {sql}"
    return sql


def test_expansion_follows_the_plugin():
    """$__timeFilter(c) is c >= toDateTime(from) AND c <= toDateTime(to); ${v:sqlstring} quotes
    and doubles single quotes."""
    assert expand("$__timeFilter(start) AND x = ${v:sqlstring} AND y = $w", {"v": "o'k", "w": "3"},
                  10, 20) == "start >= toDateTime(10) AND start <= toDateTime(20) AND x = 'o''k' AND y = 3"


def clickhouse_panels() -> list[tuple[str, dict[str, Any]]]:
    return [(uid, p) for uid, d in DASHBOARDS.items() for p in d["panels"]
            if p["datasource"]["type"] == "grafana-clickhouse-datasource"]


def panel(uid: str, title: str) -> str:
    for p in DASHBOARDS[uid]["panels"]:
        if p["title"] == title:
            return str(p["targets"][0]["rawSql"])
    raise KeyError(title)


# -- running it in chDB ------------------------------------------------------------------------

QUERY_SCRIPT = textwrap.dedent("""
    import json, sys
    from contracts.logs import configure_logging
    configure_logging("json")  # logs to stderr; stdout carries the answer
    from store.clickhouse import ClickHouseStore
    from store import queries
    from store.tenancy import Scope, ScopedReader
    job = json.load(sys.stdin)
    store = ClickHouseStore.connect(job["dsn"])
    # the tariffs' columns (migration 0002) get values as `pbxpipe rerate` would set them
    store.command("ALTER TABLE calls UPDATE cost = toDecimal64(talk_s / 60 * 0.1, 4),"
                  " destination = multiIf(startsWith(called, '00'), 'international',"
                  " startsWith(called, '0'), 'national', '') WHERE direction = 'outbound'",
                  settings={"mutations_sync": 2})
    for sql in job["setup"]:
        store.command(sql)
    out = {"sql": [], "history": [], "callback": None}
    for sql in job["sql"]:
        try:
            out["sql"].append({"rows": store.query(sql)})
        except Exception as e:
            out["sql"].append({"error": str(e)[:2000], "query": sql})
    reader = ScopedReader(store)
    for kw in job["history"]:
        scope = Scope.operator(tenant=kw.pop("pbx_id", None))
        out["history"].append([r["call_id"] for r in queries.call_history(reader, scope, **kw)])
    out["callback"] = queries.missed_not_called_back(reader, Scope.operator(), since=job["cb_from"],
                                                     until=job["cb_to"])
    json.dump(out, sys.stdout, default=str)
""")

HISTORY_CASES = [  # (dashboard variables, the same filter for store.queries.call_history)
    ({}, {}),
    ({"type": "missed"}, {"call_type": "missed"}),
    ({"type": "outgoing"}, {"call_type": "outgoing"}),
    ({"type": "internal"}, {"call_type": "internal"}),
    ({"extension": "103"}, {"extension": "103"}),
    ({"number": "601 234"}, {"number": "601 234"}),
    ({"type": "incoming", "extension": "101"}, {"call_type": "incoming", "extension": "101"}),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Any]:
    """Replays the capture into a fresh chDB directory, then runs every panel's expanded SQL (and
    the call-history cases) in one more process: chDB takes one data directory per process."""
    dsn = f"chdb:///{tmp_path_factory.mktemp('grafana') / 'ch'}"
    pbxpipe = [sys.executable, "-c", "from pbxpipe.cli import main; main()"]
    env = {"PATH": "/usr/bin:/bin", "PBXPIPE_LOG_FORMAT": "json"}
    replay = subprocess.run(
        [*pbxpipe, "replay", str(CAPTURE / "ami_raw.log"), "--pbx-profile",
         str(ROOT / "tests" / "fixtures" / "asterisk_profile.toml"), "--clickhouse", dsn],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert replay.returncode == 0, replay.stderr[-2000:]
    sqls = {f"{uid}/{p['title']}": expand(p["targets"][0]["rawSql"], DEFAULTS)
            for uid, p in clickhouse_panels()}
    for i, (variables, _) in enumerate(HISTORY_CASES):
        sqls[f"history/{i}"] = expand(panel("pbxpipe-call-history", "Calls"),
                                      {**DEFAULTS, **variables})
    sqls["tz"] = expand(panel("pbxpipe-load", "Calls by hour and weekday"),
                        {**DEFAULTS, "tz": "Europe/Warsaw"})
    sqls["legs"] = "SELECT count() AS n FROM call_legs FINAL WHERE extension != ''"
    sqls["callback"] = expand(panel("pbxpipe-call-history", "Missed calls to call back"),
                              DEFAULTS, CB_FROM, CB_TO)
    job = {"dsn": dsn, "sql": list(sqls.values()), "cb_from": CB_FROM, "cb_to": CB_TO,
           "setup": SETUP,
           "history": [{**kw, "since": FROM, "until": TO} for _, kw in HISTORY_CASES]}
    run = subprocess.run([sys.executable, "-c", QUERY_SCRIPT], input=json.dumps(job),
                         capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    by_name = dict(zip(sqls, out["sql"]))
    return {"sql": by_name, "history": out["history"], "callback": out["callback"]}


def rows(results: dict[str, Any], name: str) -> list[dict[str, Any]]:
    got = results["sql"][name]
    assert "error" in got or "rows" in got
    assert "error" not in got, f"{name}: {got.get('error')}\n{got.get('query')}"
    return list(got["rows"])


def test_every_clickhouse_panel_runs(results):
    """Every ClickHouse panel's expanded SQL runs against the replayed capture and returns rows."""
    for uid, p in clickhouse_panels():
        got = rows(results, f"{uid}/{p['title']}")
        assert got or p["title"] == "Missed calls to call back", f"{uid}/{p['title']}: no rows"


def test_call_history_shows_what_the_call_history_query_returns(results):
    """The Calls panel, for each filter (type, extension, number, combined), lists the same calls,
    in the same order, as store.queries.call_history."""
    for i, (variables, _) in enumerate(HISTORY_CASES):
        shown = [r["call_id"] for r in rows(results, f"history/{i}")]
        assert shown == results["history"][i], variables
        assert shown, variables
    everything = rows(results, "history/0")
    assert len(everything) == len(EXPECTED)
    assert set(everything[0]) == {"start_local", "type", "caller", "called", "status",
                                  "answered_by", "wait_s", "talk_s", "duration_s", "call_id"}
    missed = rows(results, "history/1")
    assert {r["type"] for r in missed} == {"missed"}
    assert len(missed) == sum(c["status"] == "missed" for c in EXPECTED.values())


def test_missed_calls_to_call_back_match_the_report(results):
    """The call-back panel lists the numbers store.queries.missed_not_called_back lists: none in
    the capture (every missed caller got a call back), two on the later day."""
    assert rows(results, "pbxpipe-call-history/Missed calls to call back") == []
    shown = rows(results, "callback")
    assert [r["number"] for r in shown] == ["+48666000333", "+48999000111"]
    assert [(r["number"], int(r["missed_calls"])) for r in shown] == \
        [(r["number"], int(r["missed_calls"])) for r in results["callback"]]


def test_load_panels(results):
    """Calls per hour and the hour × weekday heatmap count every call; the heatmap follows the
    time zone; answer rate and average wait are those of the incoming calls."""
    per_hour = rows(results, "pbxpipe-load/Calls per hour")
    assert sum(int(r["incoming"]) + int(r["outgoing"]) + int(r["internal"]) for r in per_hour) == len(EXPECTED)
    heat = rows(results, "pbxpipe-load/Calls by hour and weekday")
    assert {(int(r["weekday"]), int(r["hour"])) for r in heat} <= {(2, 16), (2, 17)}
    assert sum(int(r["calls"]) for r in heat) == len(EXPECTED)
    warsaw = rows(results, "tz")
    assert {(int(r["weekday"]), int(r["hour"])) for r in warsaw} <= {(2, 17), (2, 18)}
    concurrent = rows(results, "pbxpipe-load/Concurrent calls")
    assert 2 <= max(int(r["concurrent_calls"]) for r in concurrent) <= len(EXPECTED)
    inbound = [c for c in EXPECTED.values() if c["direction"] == "inbound"]
    rate = float(rows(results, "pbxpipe-load/Answer rate (incoming)")[0]["answer_rate"])
    assert rate == pytest.approx(sum(c["answered"] for c in inbound) / len(inbound), abs=1e-3)
    waits = [c["wait_s"] for c in inbound if c["answered"] and c["wait_s"] is not None]
    avg = float(rows(results, "pbxpipe-load/Average wait (answered incoming)")[0]["avg_wait_s"])
    assert avg == pytest.approx(sum(waits) / len(waits), abs=0.01)
    missed = int(rows(results, "pbxpipe-load/Missed incoming")[0]["missed_calls"])
    assert missed == sum(c["status"] == "missed" for c in inbound)


def test_team_load_counts_every_leg(results):
    """Per extension: every ringing leg counted once; answered plus not answered is rang."""
    team = rows(results, "pbxpipe-team/Per extension")
    assert sum(int(r["rang"]) for r in team) == int(rows(results, "legs")[0]["n"])
    by_ext = {r["extension"]: r for r in team}
    assert {"101", "102", "103"} <= set(by_ext)
    for r in team:
        assert int(r["answered_legs"]) + int(r["not_answered"]) == int(r["rang"])


def test_outbound_cost_covers_every_outbound_call(results):
    """Cost by destination and by extension each account for every outbound call once, unrated
    calls under "unrated" (cost and destination: the tariffs' columns, migration 0002)."""
    outbound = [c for c in EXPECTED.values() if c["direction"] == "outbound"]
    by_dest = rows(results, "pbxpipe-outbound-cost/Cost by destination")
    by_ext = rows(results, "pbxpipe-outbound-cost/Cost by extension")
    assert sum(int(r["calls"]) for r in by_dest) == len(outbound)
    assert sum(int(r["calls"]) for r in by_ext) == len(outbound)
    assert {r["extension"] for r in by_ext} == {c["caller"] for c in outbound}
    assert sum(float(r["cost"]) for r in by_dest) == pytest.approx(
        sum(float(r["cost"]) for r in by_ext), abs=0.05)
    assert {r["destination"] for r in by_dest} == {"international", "national", "unrated"}
    talk = sum(c["talk_s"] for c in outbound)
    assert sum(float(r["cost"]) for r in by_dest) == pytest.approx(talk / 60 * 0.1, abs=0.05)


# -- provisioning and the Prometheus dashboard -----------------------------------------------


def test_provisioned_data_sources_are_the_ones_the_dashboards_use():
    """ClickHouse via the grafana-clickhouse-datasource plugin (host, port, protocol, user in
    jsonData; the password only in secureJsonData) and Prometheus; every panel uses one of them."""
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "datasources.yaml").read_text())
    by_uid = {d["uid"]: d for d in sources["datasources"]}
    ch = by_uid["clickhouse"]
    assert ch["type"] == "grafana-clickhouse-datasource"
    assert {"host", "port", "protocol", "username", "defaultDatabase"} <= set(ch["jsonData"])
    assert ch["jsonData"]["protocol"] in ("http", "native")
    assert "password" not in ch["jsonData"] and ch["secureJsonData"]["password"].startswith("${")
    assert by_uid["prometheus"]["type"] == "prometheus"
    for uid, d in DASHBOARDS.items():
        assert d["uid"] == uid
        for p in d["panels"]:
            assert by_uid[p["datasource"]["uid"]]["type"] == p["datasource"]["type"], p["title"]
            for t in p["targets"]:
                assert t["datasource"] == p["datasource"]
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "pbxpipe.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboard_variables_are_defined():
    """Every ${var} a panel uses is a variable of its dashboard."""
    for uid, d in DASHBOARDS.items():
        defined = {v["name"] for v in d["templating"]["list"]}
        for p in d["panels"]:
            for t in p["targets"]:
                used = set(re.findall(r"\$\{(\w+)", t.get("rawSql", "")))
                assert used <= defined, (uid, p["title"], used - defined)


def test_pipeline_health_promql_parses_and_reads_declared_metrics(tmp_path):
    """Each Prometheus panel's expression is valid PromQL (promtool parses it as a recording
    rule) and reads only metrics declared in contracts/metrics.py."""
    exprs = [t["expr"] for p in DASHBOARDS["pbxpipe-pipeline"]["panels"] for t in p["targets"]]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"pbxpipe:panel{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    (tmp_path / "panels.yml").write_text(yaml.safe_dump(rules))
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make test` installs it (Debian package prometheus)"
    out = subprocess.run([promtool, "check", "rules", str(tmp_path / "panels.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    declared = set()
    for metric in REGISTRY.collect():
        declared.update(metric.name + s for s in ("", "_total", "_bucket", "_sum", "_count"))
    for e in exprs:
        assert set(re.findall(r"\bpbxpipe_[a-z0-9_]+", e)) <= declared, e
    needed = " ".join(exprs)
    for name in ("pbxpipe_ingest_ami_connected", "pbxpipe_enrich_open_calls",
                 "pbxpipe_kafka_consumer_lag_messages", "pbxpipe_store_insert_duration_seconds",
                 "pbxpipe_ingest_spool_bytes", "pbxpipe_recordings_files_total",
                 "pbxpipe_retention_job_last_success_timestamp_seconds"):
        assert name in needed


def test_time_range_constants_cover_the_capture():
    """The fixture's calls lie inside the test's dashboard time range."""
    starts = [c["start"] for c in EXPECTED.values()]
    assert FROM < min(starts) and max(starts) < TO
    assert datetime.fromtimestamp(min(starts), timezone.utc).isoweekday() == 2
