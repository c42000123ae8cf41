"""Tariffs through the command line on the real capture: `replay` rates outbound calls with the
sample price list, `calls` shows the cost, `rerate` applies a price change once, `tariffs check`
explains what is wrong with a file. Subprocesses: chDB allows one data directory per process."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from conftest import CAPTURE, FIXTURES
from test_tariffs import CAPTURE_COSTS

pytestmark = pytest.mark.integration

PBXPIPE = [sys.executable, "-c", "from pbxpipe.cli import main; main()"]
ENV = {"PATH": "/usr/bin:/bin", "PBXPIPE_LOG_FORMAT": "json",
       # unusual traffic: more than 1 international/premium call, or 0.01 PLN, per extension and hour
       "PBXPIPE_TARIFF_ALERT_CALLS_PER_HOUR": "1", "PBXPIPE_TARIFF_ALERT_COST_PER_HOUR": "0.01"}


def pbxpipe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PBXPIPE, *args], capture_output=True, text=True, timeout=120, env=ENV)


def sql(dsn: str, query: str) -> list[list]:
    script = ("import clickhouse_connect, json;"
              f"c = clickhouse_connect.get_client(dsn={dsn!r});"
              f"print(json.dumps(c.query({query!r}).result_rows, default=str))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def outbound(dsn: str) -> dict[str, dict]:
    shown = pbxpipe("calls", "--clickhouse", dsn, "--type", "outgoing", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    return {r["linkedid"]: r for r in json.loads(shown.stdout)}


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> str:
    dsn = f"chdb:///{tmp_path_factory.mktemp('tariffs')}"
    done = pbxpipe("replay", str(CAPTURE / "ami_raw.log"), "--pbx-profile",
                   str(FIXTURES / "asterisk_profile.toml"), "--clickhouse", dsn)
    assert done.returncode == 0, done.stderr
    return dsn


@pytest.fixture(scope="module")
def raised_price_list(tmp_path_factory) -> Path:
    """The sample list with plan business's national rate doubled (0.06 -> 0.12 PLN/min)."""
    target = tmp_path_factory.mktemp("pricelist")
    for name in ("rates.csv", "customers.csv", "holidays.csv"):
        src = resources.files("enrich").joinpath("data", "tariffs_pl", name)
        (target / name).write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    rates = target / "rates.csv"
    text = rates.read_text()
    old = "business,48,Poland fixed,national,,,,,,0.0600,"
    assert text.count(old) == 1
    rates.write_text(text.replace(old, "business,48,Poland fixed,national,,,,,,0.1200,"))
    return target


def test_replay_rates_every_outbound_call_of_the_capture(replayed, expected_calls):
    """The stored calls carry cost, plan, version, prefix, rate and increments; money as text."""
    rows = outbound(replayed)
    assert len(rows) == len(CAPTURE_COSTS)
    for name, (rating, prefix, cost, billed) in CAPTURE_COSTS.items():
        got = rows[expected_calls[name]["linkedid"]]
        assert (got["rating"], got["tariff_prefix"], got["cost"], got["billed_s"]) == (
            rating, prefix, cost, billed), name
        assert got["tariff_plan"] == "business" and len(got["tariff_version"]) == 12, name
    s16 = rows[expected_calls["s16_out_mobile_0601_recorded"]["linkedid"]]
    assert (s16["called_e164"], s16["destination"], s16["rate"], s16["increments"], s16["currency"]) == (
        "+48601234567", "Poland mobile", "0.08", "1/1", "PLN")


def test_calls_shows_cost_as_a_column_and_a_csv_field(replayed):
    table = pbxpipe("calls", "--clickhouse", replayed, "--type", "outgoing")
    assert table.returncode == 0 and "cost" in table.stdout and "0.05" in table.stdout
    csv_out = pbxpipe("calls", "--clickhouse", replayed, "--format", "csv").stdout.splitlines()
    header = csv_out[0].split(",")
    assert {"cost", "cost_buy", "margin", "currency", "tariff_version"} <= set(header)


def test_price_list_and_alerts_are_in_clickhouse(replayed):
    """The price list is loaded once per version; the unusual-traffic rule raised its alerts:
    103 made 2 international calls in one hour, 102 spent 0.03 PLN on the UK."""
    versions = sql(replayed, "SELECT version, count() FROM tariffs GROUP BY version")
    assert len(versions) == 1 and versions[0][1] == 73
    alerts = sql(replayed, "SELECT key, kind, calls, toString(cost) FROM tariff_alerts FINAL ORDER BY key, kind")
    assert alerts == [["acme/102", "spend", 1, "0.03"], ["acme/103", "calls", 2, "0.01"]]
    joined = sql(replayed, "SELECT count() FROM calls AS c FINAL INNER JOIN tariffs AS t ON "
                           "c.tariff_version = t.version AND c.tariff_plan = t.plan AND c.tariff_prefix = t.prefix "
                           "WHERE c.rating = 'rated'")
    assert joined[0][0] >= 6


def test_rerate_applies_a_price_change_once(replayed, raised_price_list, expected_calls):
    """After a price change, rerate writes a new version of each changed call and reports the
    totals before and after; a second run with the same list changes nothing."""
    args = ("rerate", "--since", "2026-11-24", "--until", "2026-11-25", "--tariff",
            str(raised_price_list), "--pbx-profile", str(FIXTURES / "asterisk_profile.toml"),
            "--clickhouse", replayed, "--json")
    first = pbxpipe(*args)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    # every outbound call records the new version; only s12 (national, 20 s) costs more
    assert (report["calls"], report["changed"]) == (10, 10)
    assert (report["cost_before"], report["cost_after"]) == ({"PLN": "0.11"}, {"PLN": "0.13"})
    second = json.loads(pbxpipe(*args).stdout)
    assert (second["changed"], second["cost_before"], second["cost_after"]) == (0, {"PLN": "0.13"}, {"PLN": "0.13"})

    rows = outbound(replayed)
    s12 = rows[expected_calls["s12_out_national_0048_remote_hangs"]["linkedid"]]
    assert (s12["cost"], s12["rate"], s12["tariff_version"]) == ("0.04", "0.12", report["tariff_version"])
    assert s12["version"] > 2**32  # the rating revision, above every version the pipeline writes
    assert sql(replayed, "SELECT count() FROM calls FINAL") == [[26]]
    only_standard = json.loads(pbxpipe(*args, "--plan", "standard").stdout)
    assert only_standard["calls"] == 0  # acme is on plan business

    table = pbxpipe(*args[:-1])
    assert table.returncode == 0 and "cost before" in table.stdout and "0 calls changed" in table.stdout


def test_tariffs_check_names_line_column_and_reason(tmp_path):
    bad = tmp_path / "rates.csv"
    bad.write_text("plan,prefix,destination,category,sell_per_min,currency\n"
                   "default,48,Poland,national,0.10,PLN\n"
                   "default,4860,Mobile,mobil,0.1O,PLN\n")
    out = pbxpipe("tariffs", "check", str(bad))
    assert out.returncode == 1
    assert f"{bad}:3: category: must be one of national, mobile" in out.stderr
    assert f"{bad}:3: sell_per_min: not a decimal number: '0.1O'" in out.stderr
    good = pbxpipe("tariffs", "check", str(resources.files("enrich").joinpath("data", "tariffs_pl")))
    assert good.returncode == 0 and good.stdout.startswith("ok: 73 rates in 2 plans")


def test_tariffs_show_explains_a_number():
    out = pbxpipe("tariffs", "show", "0221234567", "--at", "2026-11-24T19:00", "--seconds", "59,60,61")
    assert out.returncode == 0, out.stderr
    assert "+48221234567" in out.stdout and "plan standard" in out.stdout
    assert "band peak: mon-fri, 08:00-18:00  (does not apply now)" in out.stdout
    assert "-> line 7: 48 Poland fixed (national), band offpeak" in out.stdout
