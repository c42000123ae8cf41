"""A panel API over real data, for the tests: the captured Asterisk calls replayed as two tenants
(the same linkedids under two PBX ids), their recordings uploaded to a directory store, keys for
every role, and the app behind Litestar's test client."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from conftest import CAPTURE, FIXTURES

from api.app import create_app
from api.runtime import Runtime
from api.server import build_runtime
from contracts.config import Settings, load_settings
from contracts.profile import load_profile
from contracts.records import CallRecord
from pbxpipe.pipeline import open_store, replay

TENANTS = ("acme", "beta")
NOW = 1_795_600_000.0  # a day after the capture (2026-11-24): inside every retention


@dataclass
class Clock:
    now: float = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class Api:
    runtime: Runtime
    settings: Settings
    clock: Clock
    keys: dict[str, str] = field(default_factory=dict)  # role name -> key


def settings_for(tmp: Path, **extra: object) -> Settings:
    return load_settings({"clickhouse_dsn": f"chdb://{tmp}/clickhouse",
                          "object_store": f"dir://{tmp}/objects", "api_key_cache_s": 0,
                          "api_signing_secret": "test-signing-secret", **extra}, environ={})


def load_tenants(tmp: Path) -> None:
    """The real capture through the pipeline once per tenant, recordings included."""
    profile = load_profile(FIXTURES / "asterisk_profile.toml")
    for pbx in TENANTS:
        s = settings_for(tmp, pbx_id=pbx, recordings_spool=str(CAPTURE / "recordings"))
        with open_store(s) as store:
            replay([CAPTURE / "ami_raw.log"], s, profile, store)


def make_api(tmp: Path, clock: Callable[[], float] | None = None, **extra: object) -> Api:
    clk = clock if isinstance(clock, Clock) else Clock()
    settings = settings_for(tmp, **extra)
    rt = build_runtime(settings, clock=clk)
    api = Api(rt, settings, clk)
    keys = rt.keys
    rt.keys.set_group("acme", "support", ["104"], ["support"])
    for name, kw in {
        "admin": {"pbx_id": "acme", "role": "admin"},
        "supervisor": {"pbx_id": "acme", "role": "supervisor", "group": "support"},
        "user": {"pbx_id": "acme", "role": "user", "extensions": ["101"]},
        "billing": {"pbx_id": "acme", "role": "billing"},
        "beta_admin": {"pbx_id": "beta", "role": "admin"},
        "beta_user": {"pbx_id": "beta", "role": "user", "extensions": ["101"]},
    }.items():
        _, api.keys[name] = keys.create_key(**kw)  # type: ignore[arg-type]
    return api


def app_of(api: Api):  # type: ignore[no-untyped-def]
    return create_app(api.runtime)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


HOSTILE_NAME = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
"""A caller name (Asterisk passes CallerIDName through from the caller) written as markup."""


def add_missed_call(api: Api, pbx: str, linkedid: str, start: float, caller: str,
                    caller_name: str, called: str = "+48221234501") -> str:
    """An inbound call nobody answered, written straight to the store as enrich would write it:
    the capture has no caller whose name is markup, and no number still waiting for a call back."""
    rec = CallRecord(
        call_id=f"{pbx}:{linkedid}", pbx_id=pbx, linkedid=linkedid, direction="inbound",
        caller=caller, caller_name=caller_name, called=called, answered=False,
        first_answered_by=None, last_answered_by=None, status="missed", start=start, answer=None,
        end=start + 12, duration_s=12.0, wait_s=None, talk_s=0.0, hangup_cause=16,
        hangup_cause_text="Normal Clearing", hangup_by="caller", extensions_rang=("101",),
        queue="", transferred=False, forwarded=False, recordings=(), disposition="NO ANSWER",
        incomplete=False, version=1,
    )
    with api.runtime.pool.lease() as store:
        store.write_calls([rec], f"test:{rec.call_id}")
    return rec.call_id
