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


# --- (3) .env.example lists what compose reads, and nothing else --------------------------------

ENV_EXAMPLE = (ROOT / ".env.example").read_text()


def strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in strings(k) + strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return [node] if isinstance(node, str) else []


def interpolated(compose: dict[str, Any]) -> dict[str, str]:
    """Variable -> how compose.yaml reads it: required (${X:?…}), default (${X:-…}) or bare."""
    found: dict[str, str] = {}
    for s in strings(compose):
        s = s.replace("$$", "")  # an escaped $, left to the container's shell
        for braced, op, plain in re.findall(
                r"\$\{([A-Za-z_]\w*)(:?[?-]|)[^}]*\}|\$([A-Za-z_]\w*)", s):
            how = {"?": "required", "-": "default"}.get(op[-1:], "bare")
            found.setdefault(braced or plain, how)
    return found


def env_file(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#"))


def env_problems(compose: dict[str, Any], example_text: str) -> list[str]:
    """.env.example names every variable compose.yaml reads and nothing else; what compose
    requires is empty there (a copied file does not start until the operator fills it); a
    variable compose reads bare would be silently empty when unset."""
    used, example = interpolated(compose), env_file(example_text)
    problems = []
    for var, how in sorted(used.items()):
        if var not in example:
            problems.append(f"{var}: compose.yaml reads it ({how}); .env.example does not list it")
        elif how == "required" and example[var]:
            problems.append(f"{var}: required, but .env.example gives it a value: a copied file "
                            "would start with it")
        if how == "bare":
            problems.append(f"{var}: compose.yaml reads it with neither a default nor :?")
    problems += [f"{var}: in .env.example, not read by compose.yaml"
                 for var in sorted(set(example) - set(used))]
    return problems


def test_env_example_lists_every_variable_compose_reads(compose):
    """Each ${VAR:?} (the five passwords, the AMI host and secret, the price-list choice, the
    API's ClickHouse password) is in .env.example, empty; so are the optional ones."""
    used = interpolated(compose)
    assert {"CLICKHOUSE_PASSWORD", "CLICKHOUSE_API_PASSWORD", "GRAFANA_CLICKHOUSE_PASSWORD",
            "MINIO_ROOT_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "PBX1_AMI_HOST", "PBXPIPE_AMI_SECRET",
            "PBXPIPE_TARIFF_PATH"} <= {v for v, how in used.items() if how == "required"}
    assert "MINIO_ROOT_PASSWORD" in used and "$MINIO_ROOT_PASSWORD" in COMPOSE_TEXT
    assert env_problems(compose, ENV_EXAMPLE) == []


def test_the_env_check_catches_missing_extra_prefilled_and_bare_variables(compose):
    """A required variable missing from .env.example, one given a value there, a line compose
    never reads, and a ${VAR} without a default: each is named."""
    example = ENV_EXAMPLE.replace("\nPBX1_AMI_HOST=\n", "\n").replace(
        "\nGRAFANA_ADMIN_PASSWORD=\n", "\nGRAFANA_ADMIN_PASSWORD=admin\n") + "PBX2_AMI_HOST=\n"
    broken = copy.deepcopy(compose)
    broken["services"]["grafana"]["environment"]["GF_SERVER_ROOT_URL"] = "${GRAFANA_URL}"
    assert env_problems(broken, example) == [
        "GRAFANA_ADMIN_PASSWORD: required, but .env.example gives it a value: a copied file "
        "would start with it",
        "GRAFANA_URL: compose.yaml reads it (bare); .env.example does not list it",
        "GRAFANA_URL: compose.yaml reads it with neither a default nor :?",
        "PBX1_AMI_HOST: compose.yaml reads it (required); .env.example does not list it",
        "PBX2_AMI_HOST: in .env.example, not read by compose.yaml"]


# --- (4) every file a service mounts, or is told to read, is in the repository ------------------

def file_problems(compose: dict[str, Any]) -> list[str]:
    """Every repository file or directory a service mounts exists (Docker would create a missing
    one as an empty directory); every path inside such a mount that a service is told to read (in
    its command, entrypoint or environment) exists; every absolute path a pipeline setting names
    is mounted into its service."""
    problems = []
    for name, service in compose["services"].items():
        for m in mounts(service):
            if m.kind == "bind" and m.source.startswith(".") and not (ROOT / m.source).exists():
                problems.append(f"{name}: mounts {m.source}, which is not in the repository")
        told = strings([service.get("command", []), service.get("entrypoint", []),
                        service.get("environment", {})])
        for arg in told:
            path = arg.split("=", 1)[-1]
            host = repo_path(service, path) if path.startswith("/") else None
            if host is not None and not host.exists():
                problems.append(f"{name}: reads {path}, which is {host.relative_to(ROOT)}: not "
                                "in the repository")
        if name in built_services(compose):
            targets = [m.target for m in mounts(service)]
            for var, value in service.get("environment", {}).items():
                if (var.startswith("PBXPIPE_") and str(value).startswith("/")
                        and not any(under(value, t) for t in targets)):
                    problems.append(f"{name}: {var} is {value}, which is not mounted into it")
    return problems


def test_every_file_a_service_mounts_is_in_the_repository(compose):
    """Configuration, rules, dashboards, the ClickHouse init scripts, the Alertmanager entrypoint,
    the PBX profile and the price list: mounted from files that exist."""
    sources = {m.source for s in compose["services"].values() for m in mounts(s)}
    assert {"./deploy/pbx/profile.toml", "./deploy/tariffs", "./deploy/alertmanager",
            "./deploy/clickhouse", "./deploy/prometheus"} <= sources
    assert file_problems(compose) == []


def test_the_file_check_catches_missing_files_and_unmounted_paths(compose):
    """A mount of a file the repository lacks, a path read inside a mount that is not there, and a
    setting naming a path nothing is mounted at: each is named."""
    broken = copy.deepcopy(compose)
    enrich = broken["services"]["enrich"]
    enrich["volumes"] = ["./deploy/pbx/pbx1.toml:/etc/pbxpipe/profile.toml:ro"]
    enrich["environment"]["PBXPIPE_KAFKA_SPOOL_DIR"] = "/var/lib/pbxpipe/spool"
    broken["services"]["alertmanager"]["entrypoint"] = ["/bin/sh", "/etc/alertmanager/start.sh"]
    assert file_problems(broken) == [
        "enrich: mounts ./deploy/pbx/pbx1.toml, which is not in the repository",
        "enrich: reads /etc/pbxpipe/profile.toml, which is deploy/pbx/pbx1.toml: not in the repository",
        "enrich: PBXPIPE_KAFKA_SPOOL_DIR is /var/lib/pbxpipe/spool, which is not mounted into it",
        "alertmanager: reads /etc/alertmanager/start.sh, which is deploy/alertmanager/start.sh: "
        "not in the repository"]


def test_enrich_and_store_price_calls_with_the_deploy_profile_and_price_list(compose):
    """The PBX profile and the price list are explicit: enrich and store read
    deploy/pbx/profile.toml and, when .env chooses it, deploy/tariffs/ (the path .env.example
    offers); both are valid, and the profile's PBX id is an ingest's. The sample PLN list never
    applies by default: PBXPIPE_TARIFF_PATH is required."""
    from enrich.rating import load_tariff

    ids = {s["environment"].get("PBXPIPE_PBX_ID") for s in compose["services"].values()
           if isinstance(s.get("environment"), dict)}
    offered = re.search(r"^#\s+(/\S+)\s+the files in deploy/tariffs/", ENV_EXAMPLE, re.M)
    assert offered, ".env.example does not offer the deploy/tariffs/ choice"
    for name in ("enrich", "store"):
        service = compose["services"][name]
        env = service["environment"]
        profile = repo_path(service, env["PBXPIPE_PBX_PROFILE"])
        assert profile == ROOT / "deploy/pbx/profile.toml"
        assert load_profile(profile).pbx_id in ids
        assert interpolated({"v": env["PBXPIPE_TARIFF_PATH"]}) == {"PBXPIPE_TARIFF_PATH": "required"}
        assert repo_path(service, offered.group(1)) == ROOT / "deploy/tariffs"
    tariff = load_tariff(Settings(), str(ROOT / "deploy/tariffs"))
    assert tariff.rates and "off" in ENV_EXAMPLE


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
    assert rule_files_not_loaded(prom) == ["rules/pipeline.yml", "rules/reconcile.yml",
                                           "rules/recordings.yml", "rules/retention.yml",
                                           "rules/traffic.yml"]
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


# --- the first-run walk-through -----------------------------------------------------------------

GUIDE = (ROOT / "docs" / "operations.md").read_text()


def first_run(guide: str) -> str:
    return guide.split("\n## First run\n", 1)[1].split("\n## ", 1)[0]


def commands(section: str) -> list[str]:
    """Shell commands: the lines of ```sh blocks and inline code that starts with a command."""
    block = [line.strip() for b in re.findall(r"```sh\n(.*?)```", section, re.S)
             for line in b.splitlines() if line.strip()]
    inline = [c for c in re.findall(r"`([^`\n]+)`", section)
              if c.split()[0] in ("docker", "pbxpipe", "cp", "openssl")]
    return block + inline


COMPOSE_OPTIONS_WITH_VALUE = {"-e", "--env", "-u", "--user", "-w", "--workdir", "--entrypoint",
                              "--name", "-v", "--volume", "-p", "--publish", "--index", "--tail"}


def compose_command(argv: list[str]) -> tuple[str, list[str], list[str]]:
    """`docker compose VERB [options] [SERVICE…] [COMMAND…]` -> (verb, services, command)."""
    verb, rest = argv[2], argv[3:]
    i = 0
    while i < len(rest) and rest[i].startswith("-"):
        i += 2 if rest[i] in COMPOSE_OPTIONS_WITH_VALUE else 1
    words = rest[i:]
    if verb in ("exec", "run"):
        return verb, words[:1], words[1:]
    return verb, [w for w in words if not w.startswith("-")], []


def cli_problems(args: list[str], cli: Any, pbx_ids: set[str]) -> list[str]:
    """`pbxpipe ARGS`: each word a command of the CLI (a click group), each --flag one of its
    options, each --pbx a PBX id compose runs."""
    command = cli
    line = "pbxpipe " + " ".join(args)
    rest = list(args)
    while hasattr(command, "commands") and rest and not rest[0].startswith("-"):
        if rest[0] not in command.commands:
            return [f"{line}: no command {rest[0]!r}"]
        command, rest = command.commands[rest[0]], rest[1:]
    flags = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    problems = [f"{line}: no option {a.split('=')[0]}" for a in rest
                if a.startswith("--") and a.split("=")[0] not in flags]
    problems += [f"{line}: no PBX {v!r} in compose.yaml" for a, v in zip(rest, rest[1:])
                 if a == "--pbx" and v not in pbx_ids]
    return problems


@dataclass
class Named:
    """What a walk-through names that does not exist, per the service a command runs in."""

    problems: list[str] = field(default_factory=list)
    by_service: dict[str, list[str]] = field(default_factory=dict)


def walkthrough_problems(section: str, compose: dict[str, Any], example_text: str,
                         cli: Any) -> Named:
    """Every file (repository paths in backticks, paths inside a service's repository mounts),
    service, variable, command and local URL the walk-through names exists."""
    named = Named()
    services = compose["services"]
    example = env_file(example_text)
    env_keys = {k for s in services.values() if isinstance(s.get("environment"), dict)
                for k in s["environment"]}
    pbx_ids = {s["environment"]["PBXPIPE_PBX_ID"] for s in services.values()
               if isinstance(s.get("environment"), dict) and "PBXPIPE_PBX_ID" in s["environment"]}
    created = {argv[-1] for argv in map(shlex.split, commands(section)) if argv[0] == "cp"}
    for token in re.findall(r"`([^`\n]+)`", section):
        name = token.split("=")[0]
        if re.fullmatch(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+", name):
            if name not in example and name not in env_keys and name not in SETTINGS_ENV:
                named.problems.append(f"variable {name}: not in .env.example, compose.yaml or the settings")
        elif re.fullmatch(r"\.?[\w.-]*/[\w./-]*|\.?[\w-]+\.(?:ya?ml|toml|md|csv|sh|py|example)",
                          token) and not token.startswith("/"):
            if token not in created and not (ROOT / token).exists():
                named.problems.append(f"file {token}: not in the repository")
        elif re.fullmatch(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)+", token) and token not in services:
            named.problems.append(f"service {token}: not in compose.yaml")
    for line in commands(section):
        argv = shlex.split(line)
        if argv[:2] != ["docker", "compose"]:
            continue
        verb, names, command = compose_command(argv)
        for name in names:
            if name not in services:
                named.problems.append(f"{line}: no service {name!r} in compose.yaml")
        if not names or names[0] not in services:
            continue
        service = services[names[0]]
        found = named.by_service.setdefault(names[0], [])
        if verb == "exec" and command[:1] == ["pbxpipe"]:
            found += cli_problems(command[1:], cli, pbx_ids)
        elif verb == "run" and "build" in service:  # the image's entrypoint is pbxpipe
            found += cli_problems(command, cli, pbx_ids)
        for arg in command:
            host = repo_path(service, arg) if arg.startswith("/") else None
            if host is not None and not host.exists():
                found.append(f"{line}: {arg} is {host.relative_to(ROOT)}, not in the repository")
    published = {str(p).split(":")[1] for s in services.values() for p in s.get("ports", [])}
    for port in re.findall(r"http://localhost:(\d+)/", section):
        if port not in published:
            named.problems.append(f"http://localhost:{port}/: no service publishes port {port}")
    named.problems = list(dict.fromkeys(named.problems))  # each once, however often it is named
    return named


def the_cli() -> Any:
    """The `pbxpipe` command as a click group: subcommands in ``commands``, options in ``params``."""
    from pbxpipe.cli import app

    return typer.main.get_command(app)


CLI_HAS_API = {"api", "api-keys"} <= set(the_cli().commands)


def test_the_walkthrough_names_only_what_exists(compose):
    """docs/operations.md's first run: copy .env.example, set the secrets, edit the profile and
    price list, docker compose up -d, the first API key, Grafana and the panel. Every file,
    service, variable, command and URL it names exists (the API's own commands: next test)."""
    section = first_run(GUIDE)
    for step in ("cp .env.example .env", "docker compose up -d",
                 "docker compose exec api pbxpipe api-keys create --pbx pbx1 --role admin",
                 "http://localhost:3000/", "http://localhost:8080/"):
        assert step in section, step
    named = walkthrough_problems(section, compose, ENV_EXAMPLE, the_cli())
    assert named.problems == []
    assert {s: p for s, p in named.by_service.items() if s != "api" and p} == {}
    assert {"enrich", "api", "alertmanager", "clickhouse"} <= set(named.by_service)


def test_the_api_commands_the_deployment_runs_exist(compose):
    """The api service's command and the walk-through's `pbxpipe api-keys create --pbx …
    --role …` are commands of this pbxpipe, with those options."""
    assert CLI_HAS_API
    named = walkthrough_problems(first_run(GUIDE), compose, ENV_EXAMPLE, the_cli())
    assert named.by_service["api"] == []
    assert cli_problems(compose["services"]["api"]["command"], the_cli(), set()) == []


def test_the_walkthrough_check_catches_what_does_not_exist(compose):
    """A renamed file, variable, service, command, option, PBX id or port: each is named."""
    section = first_run(GUIDE)
    broken = (section.replace("`deploy/pbx/profile.toml`", "`deploy/pbx/pbx1.toml`")
              .replace("`CLICKHOUSE_API_PASSWORD`", "`CLICKHOUSE_API_PASSWD`")
              .replace("`recordings-pbx1`", "`recordings-pbx2`")
              .replace("docker compose logs alertmanager", "docker compose logs alertmgr")
              .replace("tariffs check /etc/pbxpipe/tariffs", "tariffs check --strict /etc/pbxpipe/tariffs/rates.tsv")
              .replace("http://localhost:3000/", "http://localhost:3001/")
              + "\n```sh\ndocker compose run --rm store rerate --pbx pbx2 --since 2026-01-01\n"
                "docker compose run --rm store tariff load\n```\n")
    named = walkthrough_problems(broken, compose, ENV_EXAMPLE, the_cli())
    assert sorted(named.problems) == [
        "docker compose logs alertmgr: no service 'alertmgr' in compose.yaml",
        "file deploy/pbx/pbx1.toml: not in the repository",
        "http://localhost:3001/: no service publishes port 3001",
        "service recordings-pbx2: not in compose.yaml",
        "variable CLICKHOUSE_API_PASSWD: not in .env.example, compose.yaml or the settings"]
    assert named.by_service["enrich"] == [
        "pbxpipe tariffs check --strict /etc/pbxpipe/tariffs/rates.tsv: no option --strict",
        "docker compose run --rm --no-deps enrich tariffs check --strict "
        "/etc/pbxpipe/tariffs/rates.tsv: /etc/pbxpipe/tariffs/rates.tsv is deploy/tariffs/rates.tsv, "
        "not in the repository"]
    assert named.by_service["store"] == [
        "pbxpipe rerate --pbx pbx2 --since 2026-01-01: no option --pbx",
        "pbxpipe rerate --pbx pbx2 --since 2026-01-01: no PBX 'pbx2' in compose.yaml",
        "pbxpipe tariff load: no command 'tariff'"]
