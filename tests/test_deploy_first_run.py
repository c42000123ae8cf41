"""The compose deployment comes up the first time: each kind of mistake that would stop it, or
mislead the operator starting it, is caught here, and each check is shown failing on a broken copy.

No Docker engine runs here, so what Docker and Compose would do is read from the files: the
Dockerfile's final stage (which directories exist in the image, who owns them), compose.yaml,
.env.example, the Prometheus and Alertmanager configurations (amtool, from Debian's
prometheus-alertmanager) and the first-run walk-through in docs/operations.md.
"""

from __future__ import annotations

import copy
import fnmatch
import posixpath
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from contracts.config import Settings, env_name
from contracts.profile import load_profile

ROOT = Path(__file__).parent.parent
SETTINGS_ENV = {env_name(f) for f in Settings.__struct_fields__}
COMPOSE_TEXT = (ROOT / "compose.yaml").read_text()
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PROM_DIR = ROOT / "deploy" / "prometheus"
AM_DIR = ROOT / "deploy" / "alertmanager"


@pytest.fixture
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_TEXT)


def built_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services whose image is built from the Dockerfile (the pipeline's)."""
    return {n: s for n, s in compose["services"].items() if "build" in s}


# --- mounts -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mount:
    kind: str  # volume (named or anonymous) | bind
    source: str  # a volume name, a host path ("./…" is in the repository), or "" (anonymous)
    target: str  # the path inside the container
    read_only: bool


def mounts(service: dict[str, Any]) -> list[Mount]:
    """A service's volumes, short (`src:dst[:ro]`) or long syntax."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out.append(Mount(v.get("type", "volume"), v.get("source", ""), v["target"],
                             bool(v.get("read_only"))))
            continue
        parts = v.split(":")
        if len(parts) == 1:
            out.append(Mount("volume", "", parts[0], False))
            continue
        source, target, mode = parts[0], parts[1], parts[2:]
        kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
        out.append(Mount(kind, source, target, "ro" in ",".join(mode).split(",")))
    return out


def under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def repo_path(service: dict[str, Any], container_path: str) -> Path | None:
    """Where a path inside the container comes from in the repository (None: not a repo mount)."""
    for m in mounts(service):
        if m.kind == "bind" and m.source.startswith(".") and under(container_path, m.target):
            return ROOT / m.source / posixpath.relpath(container_path, m.target)
    return None


# --- (1) every volume is mounted where the image has a directory its user owns ------------------

@dataclass
class Image:
    """The final stage of a Dockerfile, as far as volumes care: directories and their owners."""

    user: str = "root"  # who its processes run as (the last USER)
    owners: dict[str, str] = field(default_factory=dict)  # directory -> owner
    uids: dict[str, str] = field(default_factory=lambda: {"root": "0"})  # user name -> uid

    def uid(self, user: str) -> str:
        name = user.split(":")[0]
        return self.uids.get(name, name)


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile's final stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in dockerfile.splitlines()
                                           if not line.lstrip().startswith("#")))
    stage: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        word, _, args = line.strip().partition(" ")
        if word.upper() == "FROM":
            stage = []
        else:
            stage.append((word.upper(), args.strip()))
    return stage


def _shell_commands(run: str) -> list[list[str]]:
    return [shlex.split(c) for c in re.split(r"&&|\|\||;", run) if c.strip()]


def _run(image: Image, argv: list[str]) -> None:
    """What one shell command of a RUN does to the directories (the commands the image uses)."""
    name, args = argv[0], argv[1:]
    flags = {a for a in args if a.startswith("-")}
    if name == "useradd":
        options = dict(zip(args, args[1:]))
        user = args[-1]
        image.uids[user] = options.get("--uid", options.get("-u", user))
        home = options.get("--home-dir", options.get("-d"))
        if home and flags & {"--create-home", "-m"}:
            image.owners[home] = user
    elif name == "mkdir":
        modes = {v for a, v in zip(args, args[1:]) if a in ("-m", "--mode")}
        for path in (a for a in args if not a.startswith("-") and a not in modes):
            image.owners.setdefault(path, image.user)  # made by whoever runs the RUN
    elif name == "chown":
        owner, *paths = [a for a in args if not a.startswith("-")]
        for path in paths:
            for known in list(image.owners):
                if known == path or ("-R" in flags and under(known, path)):
                    image.owners[known] = owner.split(":")[0]
            image.owners.setdefault(path, owner.split(":")[0])
    elif name == "rm":
        for path in (a for a in args if not a.startswith("-")):
            for known in [k for k in image.owners if under(k, path)]:
                del image.owners[known]


def read_image(dockerfile: str) -> Image:
    image = Image()
    for word, args in instructions(dockerfile):
        if word == "USER":
            image.user = args.split(":")[0]
        elif word == "RUN":
            for argv in _shell_commands(args):
                _run(image, argv)
        elif word == "WORKDIR":
            # created as root by the classic builder, as USER by BuildKit: only an explicit
            # mkdir and chown is the same everywhere
            image.owners.setdefault(args, "root")
        elif word in ("COPY", "ADD"):
            parts = shlex.split(args)
            chown = next((p.split("=", 1)[1] for p in parts if p.startswith("--chown=")), "root")
            image.owners[parts[-1].rstrip("/") or "/"] = chown.split(":")[0]
    return image


def volume_problems(compose: dict[str, Any], image: Image) -> list[str]:
    """Every volume of a service built from the Dockerfile is mounted at a directory the image
    creates, owned by the user the service runs as. Docker seeds a fresh volume with that
    directory's owner (a directory it has to create itself is root's), so a service running as
    another user could not write its own volume. Bind mounts are the host's to get right."""
    problems = []
    for name, service in built_services(compose).items():
        runs_as = image.uid(str(service.get("user", image.user)))
        for m in mounts(service):
            if m.kind != "volume":
                continue
            owner = image.owners.get(m.target)
            if owner is None:
                problems.append(f"{name}: volume {m.source or '(anonymous)'} is mounted at "
                                f"{m.target}, which the image does not create (it would be root's)")
            elif runs_as != "0" and image.uid(owner) != runs_as and not m.read_only:
                problems.append(f"{name}: runs as {service.get('user', image.user)} but "
                                f"{m.target} (volume {m.source}) is owned by {owner}")
    return problems


def test_every_volume_is_a_directory_of_the_image_its_user_owns(compose):
    """The ingest spool volume is mounted at a directory the Dockerfile creates and gives to the
    user the pipeline runs as, so a fresh volume is writable: ingest does not restart in a loop."""
    image = read_image(DOCKERFILE)
    assert image.user == "pbxpipe" and image.uid("pbxpipe") == "10001"
    assert image.owners["/var/lib/pbxpipe/spool"] == "pbxpipe"
    assert "spool-pbx1:/var/lib/pbxpipe/spool" in compose["services"]["ingest-pbx1"]["volumes"]
    assert volume_problems(compose, image) == []


def test_the_volume_check_catches_a_missing_or_foreign_directory(compose):
    """A volume at a directory the image lacks, one owned by root, or a service run as another
    user than the owner: each is named."""
    without = DOCKERFILE.replace(" \\\n && mkdir -p /var/lib/pbxpipe/spool", "").replace(
        " \\\n && chown pbxpipe:pbxpipe /var/lib/pbxpipe/spool", "")
    assert without != DOCKERFILE
    assert volume_problems(compose, read_image(without)) == [
        "ingest-pbx1: volume spool-pbx1 is mounted at /var/lib/pbxpipe/spool, which the image "
        "does not create (it would be root's)"]

    made_by_root = DOCKERFILE.replace(" \\\n && chown pbxpipe:pbxpipe /var/lib/pbxpipe/spool", "")
    assert volume_problems(compose, read_image(made_by_root)) == [
        "ingest-pbx1: runs as pbxpipe but /var/lib/pbxpipe/spool (volume spool-pbx1) is owned by root"]

    moved = copy.deepcopy(compose)
    moved["services"]["ingest-pbx1"]["volumes"] = ["spool-pbx1:/data/spool"]
    assert volume_problems(moved, read_image(DOCKERFILE)) == [
        "ingest-pbx1: volume spool-pbx1 is mounted at /data/spool, which the image does not "
        "create (it would be root's)"]

    other_user = copy.deepcopy(compose)
    other_user["services"]["ingest-pbx1"]["user"] = "10002:10002"
    assert volume_problems(other_user, read_image(DOCKERFILE)) == [
        "ingest-pbx1: runs as 10002:10002 but /var/lib/pbxpipe/spool (volume spool-pbx1) is "
        "owned by pbxpipe"]


# --- (2) every PBXPIPE_* variable is a setting ----------------------------------------------------

def unknown_settings(compose_text: str) -> list[str]:
    """PBXPIPE_* names anywhere in compose.yaml (environment keys, interpolated variables) that
    are no Settings field: a typo would leave the default silently in place."""
    return sorted(set(re.findall(r"\bPBXPIPE_[A-Z0-9_]+", compose_text)) - SETTINGS_ENV)


def test_every_pbxpipe_variable_in_compose_is_a_setting():
    """Every environment key and interpolated variable named PBXPIPE_* is a setting."""
    assert unknown_settings(COMPOSE_TEXT) == []


def test_the_settings_check_catches_a_misspelt_variable():
    """A misspelt environment key or interpolated variable is named."""
    broken = COMPOSE_TEXT.replace("PBXPIPE_KAFKA_SPOOL_DIR:", "PBXPIPE_KAFKA_SPOOL_DIRECTORY:")
    broken = broken.replace("${PBXPIPE_AMI_SECRET:?", "${PBXPIPE_AMI_SECRT:?")
    assert unknown_settings(broken) == ["PBXPIPE_AMI_SECRT", "PBXPIPE_KAFKA_SPOOL_DIRECTORY"]


# --- (5) every alert is loaded by Prometheus and reaches a person -------------------------------

def rule_files_not_loaded(prom: dict[str, Any]) -> list[str]:
    """Rule files in deploy/prometheus/rules/ that no rule_files pattern of prometheus.yml (paths
    relative to it) loads: their alerts would never fire."""
    patterns = prom.get("rule_files", [])
    return [f"rules/{f.name}" for f in sorted((PROM_DIR / "rules").glob("*"))
            if not any(fnmatch.fnmatch(f"rules/{f.name}", p) for p in patterns)]


def alerting_problems(prom: dict[str, Any], compose: dict[str, Any]) -> list[str]:
    """Prometheus sends alerts to an Alertmanager that compose runs, and reads its configuration
    and rules from the repository's deploy/prometheus."""
    targets = [t for am in prom.get("alerting", {}).get("alertmanagers", [])
               for sc in am.get("static_configs", []) for t in sc.get("targets", [])]
    problems = [] if targets else ["prometheus.yml sends alerts to no Alertmanager"]
    for t in targets:
        host = t.rsplit(":", 1)[0]
        if host not in compose["services"]:
            problems.append(f"prometheus.yml sends alerts to {t}: no such service in compose.yaml")
    service = compose["services"]["prometheus"]
    config = next(a.split("=", 1)[1] for a in service["command"] if a.startswith("--config.file="))
    if repo_path(service, config) != PROM_DIR / "prometheus.yml":
        problems.append(f"prometheus reads {config}, not deploy/prometheus/prometheus.yml")
    return problems


def test_every_rule_file_is_loaded_and_alerts_go_to_alertmanager(compose):
    """prometheus.yml loads every file of rules/ and has an `alerting:` block pointing at the
    compose alertmanager service."""
    prom = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    assert rule_files_not_loaded(prom) == []
    assert alerting_problems(prom, compose) == []


def test_the_prometheus_checks_catch_unloaded_rules_and_no_alertmanager(compose):
    """A rule file outside rule_files, no alerting block, a target compose does not run: named."""
    prom = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    prom["rule_files"] = ["rules/pbx.yml", "rules/s*.yml"]
    assert rule_files_not_loaded(prom) == ["rules/pipeline.yml", "rules/recordings.yml",
                                           "rules/retention.yml", "rules/traffic.yml"]
    del prom["alerting"]
    assert alerting_problems(prom, compose) == ["prometheus.yml sends alerts to no Alertmanager"]
    prom["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": ["alertmgr:9093"]}]}]}
    assert alerting_problems(prom, compose) == [
        "prometheus.yml sends alerts to alertmgr:9093: no such service in compose.yaml"]


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("amtool")
    assert path, "amtool missing: `make test` installs it (Debian package prometheus-alertmanager)"
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=60)


def entrypoint(template: Path, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """deploy/alertmanager/entrypoint.sh as compose runs it, `true` standing in for alertmanager."""
    return subprocess.run(["sh", str(AM_DIR / "entrypoint.sh"), str(template), str(out), "true"],
                          env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True,
                          timeout=60)


WEBHOOK = {"ALERTMANAGER_WEBHOOK_URL": 'https://hooks.example.com/pbx?team=ops&tag="voice"'}
EMAIL = {"ALERTMANAGER_EMAIL_TO": "noc@example.com", "ALERTMANAGER_EMAIL_FROM": "pbx@example.com",
         "ALERTMANAGER_SMTP_SMARTHOST": "smtp.example.com:587",
         "ALERTMANAGER_SMTP_USERNAME": "pbx", "ALERTMANAGER_SMTP_PASSWORD": 'p"ss\\word'}


def alerts() -> list[dict[str, str]]:
    """Every alert of the rule files, with the labels it fires with."""
    return [{"alertname": r["alert"], **r.get("labels", {})}
            for f in sorted((PROM_DIR / "rules").glob("*.yml"))
            for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"] if "alert" in r]


def alerts_reaching_nobody(config: Path, fired: list[dict[str, str]]) -> list[str]:
    """Alerts whose route (`amtool config routes test`) ends at a receiver with no integration."""
    receivers = {r["name"]: r for r in yaml.safe_load(config.read_text())["receivers"]}
    problems = []
    for labels in fired:
        out = amtool("config", "routes", "test", f"--config.file={config}",
                     *(f"{k}={v}" for k, v in labels.items()))
        assert out.returncode == 0, out.stdout + out.stderr
        for receiver in out.stdout.strip().split(","):
            if not any(k.endswith("_configs") and v for k, v in receivers[receiver].items()):
                problems.append(f"{labels['alertname']} goes to {receiver}, which notifies nobody")
    return problems


def test_the_alertmanager_configuration_is_valid_as_kept_and_as_run(tmp_path):
    """`amtool check-config` accepts alertmanager.yml as it is in the repository and as the
    entrypoint writes it: with a webhook, with e-mail, with both (values with quotes and
    ampersands intact)."""
    out = amtool("check-config", str(AM_DIR / "alertmanager.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    for name, env in (("webhook", WEBHOOK), ("email", EMAIL), ("both", {**WEBHOOK, **EMAIL})):
        written = tmp_path / f"{name}.yml"
        run = entrypoint(AM_DIR / "alertmanager.yml", written, env)
        assert run.returncode == 0, run.stderr
        out = amtool("check-config", str(written))
        assert out.returncode == 0, out.stdout + out.stderr
        operators = {r["name"]: r for r in yaml.safe_load(written.read_text())["receivers"]}["operators"]
        if "ALERTMANAGER_WEBHOOK_URL" in env:
            assert operators["webhook_configs"][0]["url"] == env["ALERTMANAGER_WEBHOOK_URL"]
        if "ALERTMANAGER_EMAIL_TO" in env:
            assert operators["email_configs"][0]["auth_password"] == env["ALERTMANAGER_SMTP_PASSWORD"]
            assert operators["email_configs"][0]["smarthost"] == "smtp.example.com:587"


def test_every_alert_reaches_the_operators(tmp_path):
    """Every alert of every rule file is routed (`amtool config routes test`) to a receiver that
    notifies someone, in the configuration Alertmanager runs with."""
    written = tmp_path / "alertmanager.yml"
    assert entrypoint(AM_DIR / "alertmanager.yml", written, WEBHOOK).returncode == 0
    fired = alerts()
    assert len(fired) >= 20 and {a.get("severity") for a in fired} == {"critical", "warning", "info"}
    assert alerts_reaching_nobody(written, fired) == []


def test_the_route_check_catches_an_alert_sent_to_nobody(tmp_path):
    """A route that sends critical alerts to a receiver without integrations is named, per alert."""
    text = (AM_DIR / "alertmanager.yml").read_text()
    broken = text.replace("""      receiver: operators
      repeat_interval: 1h""", """      receiver: nobody
      repeat_interval: 1h""").replace("receivers:\n", "receivers:\n  - name: nobody\n")
    assert broken != text
    template = tmp_path / "broken.yml"
    template.write_text(broken)
    written = tmp_path / "alertmanager.yml"
    assert entrypoint(template, written, WEBHOOK).returncode == 0
    fired = [{"alertname": "PbxDisconnected", "severity": "critical"},
             {"alertname": "SpoolFilling", "severity": "warning"}]
    assert alerts_reaching_nobody(written, fired) == ["PbxDisconnected goes to nobody, which notifies nobody"]


def test_alertmanager_will_not_start_without_a_receiver(tmp_path):
    """With neither a webhook nor an e-mail address, or an address but no SMTP server, the
    entrypoint exits non-zero with one line saying what to set, and starts nothing."""
    out = tmp_path / "alertmanager.yml"
    for env, says in (({}, "set ALERTMANAGER_WEBHOOK_URL and/or ALERTMANAGER_EMAIL_TO in .env"),
                      ({"ALERTMANAGER_EMAIL_TO": "noc@example.com"}, "ALERTMANAGER_SMTP_SMARTHOST")):
        run = entrypoint(AM_DIR / "alertmanager.yml", out, env)
        assert run.returncode != 0 and not out.exists()
        assert run.stderr.startswith("alertmanager: error: ") and run.stderr.count("\n") == 1
        assert says in run.stderr


def test_the_alertmanager_service_runs_the_entrypoint_with_its_environment(compose):
    """compose starts Alertmanager through the entrypoint, on the repository's configuration,
    giving it every ALERTMANAGER_* variable the entrypoint reads."""
    service = compose["services"]["alertmanager"]
    assert repo_path(service, service["entrypoint"][-1]) == AM_DIR / "entrypoint.sh"
    assert repo_path(service, service["command"][0]) == AM_DIR / "alertmanager.yml"
    assert service["command"][2] == "/bin/alertmanager"
    assert f"--config.file={service['command'][1]}" in service["command"]
    read = set(re.findall(r"\bALERTMANAGER_[A-Z_]+", (AM_DIR / "entrypoint.sh").read_text()))
    assert read and read == set(service["environment"])


# --- the API, the buckets, the users ----------------------------------------------------------

def test_the_api_is_a_service_on_the_same_network_with_its_health_check(compose):
    """`pbxpipe api` runs as the api service, on the default network with ClickHouse and MinIO,
    listening on 0.0.0.0:8080 in its container, published on localhost:8080, checked on /healthz,
    with its own ClickHouse user; Prometheus scrapes it."""
    api = compose["services"]["api"]
    env = api["environment"]
    assert api["command"] == ["api"] and "networks" not in api
    assert env["PBXPIPE_API_HOST"] == "0.0.0.0" and env["PBXPIPE_API_PORT"] == "8080"
    assert unknown_settings(COMPOSE_TEXT) == []  # PBXPIPE_API_HOST and _PORT are settings
    assert api["ports"] == ["127.0.0.1:8080:8080"]
    assert "http://127.0.0.1:8080/healthz" in " ".join(api["healthcheck"]["test"])
    assert env["PBXPIPE_CLICKHOUSE_DSN"].startswith("http://pbxpipe_api:${CLICKHOUSE_API_PASSWORD:?")
    assert api["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    assert "EXPOSE 9108 8080" in DOCKERFILE


def test_each_service_reads_clickhouse_as_its_own_user(compose):
    """The pipeline writes as pbxpipe, the API reads as pbxpipe_api, Grafana as grafana; the
    init scripts ClickHouse runs create the API's and Grafana's users with their rights, the API's
    holding the role the migrations' row policies confine to one tenant."""
    users = {}
    for name, s in compose["services"].items():
        dsn = (s.get("environment") or {}).get("PBXPIPE_CLICKHOUSE_DSN")
        if dsn:
            users[name] = re.match(r"http://([^:]+):", dsn).group(1)
    assert users.pop("api") == "pbxpipe_api" and set(users.values()) == {"pbxpipe"}
    assert compose["services"]["grafana"]["environment"]["GRAFANA_CLICKHOUSE_USER"] == "grafana"
    clickhouse = compose["services"]["clickhouse"]
    init = repo_path(clickhouse, "/docker-entrypoint-initdb.d")
    assert init == ROOT / "deploy/clickhouse"
    sql = (init / "20-api-user.sh").read_text()
    assert "CREATE USER IF NOT EXISTS pbxpipe_api" in sql
    assert re.findall(r"GRANT (\w+) ON \$\{CLICKHOUSE_DB\}\.(\S+) TO pbxpipe_api;", sql) == [
        ("SELECT", "*"), ("INSERT", "recording_access"), ("INSERT", "api_keys")]
    # the role the migrations' row policies confine to one tenant: the API's, by default
    migrations = "".join(f.read_text() for f in sorted((ROOT / "store/migrations").glob("*.sql")))
    confined = set(re.findall(r"TO ALL EXCEPT (\w+);", migrations))
    assert len(confined) == 1
    role = confined.pop()
    assert f"GRANT {role} TO pbxpipe_api;" in sql and f"SET DEFAULT ROLE {role} TO pbxpipe_api;" in sql
    assert f"CREATE ROLE IF NOT EXISTS {role};" in sql  # before the migrations create it
    for var in re.findall(r"\$\{(\w+)\}", sql):
        assert var in clickhouse["environment"], var
    assert "GRANT SELECT ON ${CLICKHOUSE_DB}.* TO grafana" in (init / "10-grafana-user.sh").read_text()


def test_the_recordings_bucket_is_made_with_object_lock(compose):
    """minio-setup creates the recordings bucket with --with-lock (object lock implies
    versioning), as the pipeline itself would."""
    script = " ".join(compose["services"]["minio-setup"]["command"])
    assert re.search(r"mc mb --ignore-existing --with-lock local/recordings\b", script)


def test_every_published_port_is_bound_to_loopback(compose):
    """The web pages (Grafana, the panel, Prometheus, Alertmanager) are published on 127.0.0.1
    only: nothing listens on the host's public addresses without a proxy in front."""
    ports = [p for s in compose["services"].values() for p in s.get("ports", [])]
    assert len(ports) == 4
    assert all(str(p).startswith("127.0.0.1:") for p in ports), ports
