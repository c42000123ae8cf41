"""deploy/prometheus: the scrape configuration and alert rules, checked and unit-tested by promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from contracts.metrics import REGISTRY

PROM = Path(__file__).parent.parent / "deploy" / "prometheus"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    assert path, "promtool missing: `make test` installs it (Debian package prometheus)"
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=60, cwd=PROM)


def our_metric_names() -> set[str]:
    names = set()
    for metric in REGISTRY.collect():
        names.add(metric.name)  # a counter's family name lacks _total; samples may not exist yet
        names.update(metric.name + suffix for suffix in ("_total", "_bucket", "_sum", "_count"))
    return names


def test_the_configuration_and_its_rule_files_are_valid():
    """`promtool check config` accepts prometheus.yml, loading every rule file it names."""
    out = promtool("check", "config", "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    for f in RULE_FILES:
        assert f"rules/{f.name}" in out.stdout


@pytest.mark.parametrize("rules", RULE_FILES, ids=lambda p: p.stem)
def test_each_rule_group_passes_its_unit_tests(rules):
    """Every rule group has deploy/prometheus/tests/<group>.yml covering each of its alerts, and
    `promtool test rules` passes it."""
    test_file = PROM / "tests" / rules.name
    assert test_file.exists(), f"no promtool unit test for {rules.name}"
    alerts = {r["alert"] for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"]}
    tests = yaml.safe_load(test_file.read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", [])}
    assert alerts <= tested, f"alerts without a test: {sorted(alerts - tested)}"
    out = promtool("test", "rules", f"tests/{rules.name}")
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_alerts_asked_for_exist():
    """A PBX disconnected, no events in business hours, lag growing, dead letters, inserts
    failing, the spool filling, uploads failing, a retention job not run, unusual outbound traffic."""
    alerts = {r["alert"] for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"]
              for r in g["rules"]}
    assert {"PbxDisconnected", "PbxNoEventsInBusinessHours", "ConsumerLagGrowing",
            "DeadLettersArriving", "InsertsFailing", "SpoolFilling", "RecordingUploadsFailing",
            "RetentionJobNotRun", "UnusualOutboundTraffic"} <= alerts


def test_rules_only_use_metrics_the_pipeline_declares():
    """Every pbxpipe_* series a rule reads is declared in contracts/metrics.py (a renamed metric
    would silently disable its alert)."""
    declared = our_metric_names()
    for f in RULE_FILES:
        for group in yaml.safe_load(f.read_text())["groups"]:
            for rule in group["rules"]:
                used = set(re.findall(r"\bpbxpipe_[a-z0-9_]+", rule["expr"]))
                assert used <= declared, (rule["alert"], sorted(used - declared))
