"""compose.yaml and the Dockerfile: valid Compose, every part present, the pipeline's settings real.

No Docker engine runs here: compose.yaml is validated against the Compose Specification's JSON
schema (vendored in tests/fixtures/compose/, see its README) with jsonschema.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from contracts.config import Settings, env_name

ROOT = Path(__file__).parent.parent
SCHEMA = json.loads((ROOT / "tests" / "fixtures" / "compose" / "compose-spec.json").read_text())
SETTINGS_ENV = {env_name(f) for f in Settings.__struct_fields__}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def pipeline_services(compose: dict) -> dict[str, dict]:
    return {name: s for name, s in compose["services"].items() if s.get("image") == "pbxpipe:latest"}


def test_compose_file_follows_the_compose_specification(compose):
    """compose.yaml validates against the Compose Specification's schema."""
    jsonschema.validate(compose, SCHEMA, cls=jsonschema.Draft7Validator)


def test_the_schema_rejects_what_compose_would_reject(compose):
    """The check has teeth: a misspelt service key fails validation."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["store"]["restart_policy"] = "always"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA, cls=jsonschema.Draft7Validator)


def test_every_part_is_there(compose):
    """Kafka, ClickHouse, MinIO (and its bucket setup), Prometheus, Alertmanager, Grafana, the
    pipeline's ingest, enrich, store, recordings and retention jobs, and the panel's API;
    long-running services restart and are health-checked."""
    services = compose["services"]
    assert {"kafka", "clickhouse", "minio", "minio-setup", "prometheus", "alertmanager", "grafana",
            "ingest-pbx1", "enrich", "store", "recordings-pbx1", "retention-apply", "export-due",
            "api", "reconcile-pbx1"} <= set(services)
    commands = {n: s["command"][0] for n, s in pipeline_services(compose).items()}
    assert commands == {"ingest-pbx1": "ingest", "enrich": "enrich", "store": "store",
                        "recordings-pbx1": "recordings", "retention-apply": "every",
                        "export-due": "every", "api": "api", "reconcile-pbx1": "every"}
    for name, s in services.items():
        if name == "minio-setup":
            continue
        assert s.get("restart") == "unless-stopped", name
        assert "healthcheck" in s, name
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]  # KRaft, no ZooKeeper
    assert services["recordings-pbx1"]["depends_on"]["minio-setup"]["condition"] == \
        "service_completed_successfully"
    declared_volumes = set(compose["volumes"])
    for s in services.values():
        for v in s.get("volumes", []):
            source = v.split(":", 1)[0]
            if not source.startswith(("/", ".")):
                assert source in declared_volumes, source


def test_pipeline_environment_names_real_settings(compose):
    """Every PBXPIPE_* variable given to a pipeline service is a Settings field (env_name over
    Settings.__struct_fields__), so a typo cannot silently leave a default in place."""
    for name, s in pipeline_services(compose).items():
        env = s["environment"]
        keys = set(env)
        assert keys, name
        assert keys <= SETTINGS_ENV, (name, sorted(keys - SETTINGS_ENV))
        assert env["PBXPIPE_METRICS_PORT"] == "9108" and env["PBXPIPE_LOG_FORMAT"] == "json"


def test_the_recordings_service_reads_the_pbx_spool_and_writes_to_minio(compose):
    """`recordings watch` runs with the PBX's recording directory mounted where
    PBXPIPE_RECORDINGS_SPOOL points (read-only unless it deletes the PBX's files), for the PBX
    ids it names, with the MinIO endpoint and credentials from the environment."""
    s = compose["services"]["recordings-pbx1"]
    assert s["command"] == ["recordings", "watch"]
    env = s["environment"]
    mounts = {v.split(":")[1]: v.split(":") for v in s["volumes"]}
    spool = env["PBXPIPE_RECORDINGS_SPOOL"]
    assert spool in mounts, "the spool is not mounted"
    read_only = mounts[spool][2:] == ["ro"]
    assert read_only == (env["PBXPIPE_RECORDINGS_DELETE_SOURCE"] == "false")
    assert env["PBXPIPE_RECORDINGS_SYNC_PBX_IDS"] == "pbx1"
    assert env["PBXPIPE_OBJECT_STORE"].startswith("http://minio:9000/")
    assert env["PBXPIPE_S3_ACCESS_KEY"] and env["PBXPIPE_S3_SECRET_KEY"].startswith("${")
    for name, other in pipeline_services(compose).items():  # nobody else needs the PBX's files
        if name != "recordings-pbx1":
            assert "PBXPIPE_RECORDINGS_SPOOL" not in other["environment"], name


def test_secrets_come_from_the_environment_not_the_file(compose):
    """Passwords and the AMI secret are ${VAR:?…} references (required), or ${VAR:-} for an
    optional one (the SMTP password): never a literal, never a default value."""
    text = (ROOT / "compose.yaml").read_text()
    secrets = 0
    for line in text.splitlines():
        m = re.match(r"\s*([A-Z_]*(PASSWORD|SECRET)[A-Z_]*):\s*(\S+)", line)
        if m:
            secrets += 1
            value = m.group(3)
            assert value.startswith("${") and (":?" in value or value.endswith(":-}")), line
    assert secrets >= 7


def test_prometheus_scrapes_every_pipeline_service(compose):
    """deploy/prometheus/prometheus.yml has a target for each pipeline service on its metrics port."""
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    for name in pipeline_services(compose):
        assert f"{name}:9108" in targets, name


def test_the_image_runs_pbxpipe_and_checks_its_health():
    """The Dockerfile installs the project, runs as a non-root user, exposes the ops port and
    checks /healthz."""
    docker = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["pbxpipe"]' in docker
    assert re.search(r"^USER pbxpipe$", docker, re.MULTILINE)
    assert "EXPOSE 9108" in docker and "/healthz" in docker
    packages = re.search(r"packages = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.DOTALL).group(1)
    for package in re.findall(r'"(\w+)"', packages):
        assert f"COPY {package} {package}" in docker, package
