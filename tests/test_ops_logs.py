"""Logs: JSON lines in production, bound context, and no secret from the settings ever printed."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys

import pytest
import structlog

from contracts.config import load_settings
from contracts.logs import bound, configure_logging, register_secrets, scrub, secret_values

AMI_SECRET = "ami-Secret-4711"
CH_PASSWORD = "ch-Pass-4711"
S3_SECRET = "s3-Secret-4711"
SASL_PASSWORD = "sasl-Pass-4711"
SECRETS = (AMI_SECRET, CH_PASSWORD, S3_SECRET, SASL_PASSWORD)
ENVIRON = {
    "PBXPIPE_AMI_SECRET": AMI_SECRET,
    "PBXPIPE_CLICKHOUSE_DSN": f"http://pbxpipe:{CH_PASSWORD}@clickhouse:8123/pbx",
    "PBXPIPE_S3_SECRET_KEY": S3_SECRET,
    "PBXPIPE_KAFKA_SASL_PASSWORD": SASL_PASSWORD,
}


@pytest.fixture
def json_logs(capsys):
    """Logging configured as in production (JSON on stderr); the previous setup restored after."""
    saved = structlog.get_config()
    root_handlers = list(logging.getLogger().handlers)
    configure_logging("json")
    yield lambda: [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    structlog.configure(**saved)
    logging.getLogger().handlers[:] = root_handlers


def test_secret_values_are_the_settings_secrets():
    """secret_values() finds the AMI secret, the DSN's password, the S3 and SASL secrets."""
    settings = load_settings(environ=ENVIRON)
    assert set(secret_values(settings)) == set(SECRETS)


def test_no_secret_of_the_settings_appears_in_any_log_line(json_logs):
    """Once the settings' secrets are registered, they are masked in keys, values, URLs,
    exception tracebacks and other libraries' stdlib records alike."""
    settings = load_settings(environ=ENVIRON)
    register_secrets(secret_values(settings))
    log = structlog.get_logger("test")
    log.info("settings_loaded", **{f: getattr(settings, f) for f in settings.__struct_fields__})
    log.warning("ami_login_failed", message=f"Authentication failed for secret {AMI_SECRET}")
    try:
        raise ConnectionError(f"cannot reach {settings.clickhouse_dsn}")
    except ConnectionError:
        log.exception("store_unreachable")
    logging.getLogger("aiokafka").warning("SASL auth with %s failed", SASL_PASSWORD)
    log.info("nested", detail={"s3": {"secret": S3_SECRET}, "args": [AMI_SECRET]})
    lines = json_logs()
    assert [line["event"] for line in lines] == [
        "settings_loaded", "ami_login_failed", "store_unreachable",
        "SASL auth with *** failed", "nested"]
    text = json.dumps(lines)
    for secret in SECRETS:
        assert secret not in text
    assert lines[0]["ami_user"] == "pbxpipe" and lines[0]["ami_secret"] == "***"
    assert lines[0]["clickhouse_dsn"] == "http://pbxpipe:***@clickhouse:8123/pbx"
    assert lines[3]["logger"] == "aiokafka" and lines[3]["level"] == "warning"


def test_url_passwords_are_masked_even_when_not_registered():
    """A DSN's password never shows, registered or not; the rest of the URL stays readable."""
    assert scrub("connect http://u:unregistered-pw@h:8123/db failed") == \
        "connect http://u:***@h:8123/db failed"
    assert scrub("plain text, no url") == "plain text, no url"


def test_bound_context_is_on_every_line_inside(json_logs):
    """bound(pbx=, call=, partition=) adds the context to each line logged within, then drops it."""
    log = structlog.get_logger("test")
    with bound(pbx="acme", call="acme:1700000000.1", partition=3):
        log.info("batch_flushed", rows=10)
    log.info("pipeline_idle")
    first, second = json_logs()
    assert (first["pbx"], first["call"], first["partition"], first["rows"]) == \
        ("acme", "acme:1700000000.1", 3, 10)
    assert "pbx" not in second and second["level"] == "info" and "timestamp" in second


@pytest.mark.integration
def test_the_running_command_never_prints_a_secret(tmp_path):
    """`pbxpipe run` with every secret set, failing to reach its PBX: stderr is JSON lines and
    holds none of the secrets."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connection refused
    env = {**ENVIRON, "PATH": "/usr/bin:/bin", "PBXPIPE_LOG_FORMAT": "json",
           "PBXPIPE_CLICKHOUSE_DSN": f"chdb:///{tmp_path / 'ch'}", "PBXPIPE_AMI_MAX_RETRIES": "0",
           "PBXPIPE_AMI_PORT": str(port), "PBXPIPE_AMI_HOST": "127.0.0.1"}
    run = subprocess.run([sys.executable, "-c", "from pbxpipe.cli import main; main()", "run"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stderr
    events = [json.loads(line)["event"] for line in run.stderr.splitlines() if line.startswith("{")]
    assert "pipeline_started" in events and "ami_gave_up" in events
    for secret in (AMI_SECRET, S3_SECRET, SASL_PASSWORD):
        assert secret not in run.stderr + run.stdout
