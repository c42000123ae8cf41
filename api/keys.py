"""API keys, supervisors' groups and tenants' settings in ClickHouse, with a short read cache.

A key is ``pbx_<key id>_<secret>``: the key id is public (it names the key in lists, logs and the
access log), the secret is 256 random bits shown once at creation; only its SHA-256 is stored.
A revocation or a change writes a new version of the row. The API reads each row through a cache
of ``api_key_cache_s`` seconds, so a revoked key is refused at most that long after.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from contracts.access import ROLES, AccessGroup, ApiKey, Role, Tenant
from contracts.errors import ConfigError
from store.clickhouse import ClickHouseStore
from store.schema import API_GROUPS, API_KEYS, TENANTS

KEY_PREFIX = "pbx_"
_KEY = re.compile(r"^pbx_([a-z2-7]{12})_([A-Za-z0-9_-]{43})$")
_EXTENSION = re.compile(r"^[A-Za-z0-9*#+_.-]{1,32}$")
_NAME = re.compile(r"^[A-Za-z0-9 _.@:-]{1,64}$")
_TENANT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

T = TypeVar("T")


def new_key() -> tuple[str, str, str]:
    """A fresh key: (key id, the whole key to hand out once, the SHA-256 of its secret)."""
    key_id = base64.b32encode(secrets.token_bytes(10)).decode().lower()[:12]
    secret = secrets.token_urlsafe(32)
    return key_id, f"{KEY_PREFIX}{key_id}_{secret}", secret_hash(secret)


def split_key(key: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    m = _KEY.match(key)
    return (m.group(1), m.group(2)) if m else None


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(secret_hash(secret), stored_hash)


def check_tenant(pbx_id: str) -> str:
    if not _TENANT.match(pbx_id):
        raise ConfigError(f"a PBX id is 1-64 of A-Z a-z 0-9 _ . -, got {pbx_id!r}")
    return pbx_id


def check_extensions(extensions: list[str]) -> tuple[str, ...]:
    for e in extensions:
        if not _EXTENSION.match(e):
            raise ConfigError(f"not an extension: {e!r}")
    return tuple(sorted(set(extensions)))


def check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(f"a {what} is 1-64 of letters, digits, space and _ . @ : -, got {name!r}")
    return name


def _ms(t: float | None) -> int | None:
    return None if t is None else round(t * 1000)


class KeyStore:
    """Keys, groups and tenants: written by the operator's commands, read by the API."""

    def __init__(self, store: ClickHouseStore, *, cache_s: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.cache_s = cache_s
        self.clock = clock
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}
        self._lock = threading.Lock()

    # -- writes (the operator's commands) ------------------------------------------------------

    def create_key(self, *, pbx_id: str, role: str, extensions: list[str] | None = None,
                   group: str = "", name: str = "", expires_at: float | None = None,
                   created_by: str = "") -> tuple[ApiKey, str]:
        """A new key; returns its row and the key itself (shown once, never stored)."""
        check_tenant(pbx_id)
        role_of(role)
        exts = check_extensions(extensions or [])
        if role == "user" and not exts:
            raise ConfigError("a user key needs --extensions (the user's own extensions)")
        if role != "user" and exts:
            raise ConfigError(f"--extensions is for user keys; a {role} sees "
                              + ("a group" if role == "supervisor" else "the whole tenant"))
        if role == "supervisor":
            check_name(group, "group name")
        elif group:
            raise ConfigError("--group is for supervisor keys")
        now = self.clock()
        if expires_at is not None and expires_at <= now:
            raise ConfigError("--expires is in the past")
        key_id, key, digest = new_key()
        row = ApiKey(key_id=key_id, pbx_id=pbx_id, role=role_of(role),
                     extensions=exts, group_name=group, name=check_name(name, "key name") if name else "",
                     secret_sha256=digest, created_at=now, expires_at=expires_at, revoked_at=None,
                     created_by=created_by, version=_ms(now) or 0)
        self.store.write_structs(API_KEYS, [row], f"api_keys:{key_id}:{row.version}")
        return row, key

    def revoke_key(self, key_id: str) -> ApiKey:
        row = self._read_key(key_id)
        if row is None:
            raise ConfigError(f"no API key {key_id!r}")
        if row.revoked_at is not None:
            return row
        now = self.clock()
        new = msgspec.structs.replace(row, revoked_at=now, version=max(row.version + 1, _ms(now) or 0))
        self.store.write_structs(API_KEYS, [new], f"api_keys:{key_id}:{new.version}")
        self._forget("key", key_id)
        return new

    def list_keys(self, pbx_id: str | None = None) -> list[ApiKey]:
        where = " WHERE pbx_id = {p:String}" if pbx_id else ""
        rows = self.store.query(f"SELECT {_fields(ApiKey)} FROM api_keys FINAL{where} "
                                "ORDER BY pbx_id, created_at", {"p": pbx_id or ""})
        return [_struct(ApiKey, r) for r in rows]

    def set_group(self, pbx_id: str, name: str, extensions: list[str], queues: list[str],
                  *, deleted: bool = False) -> AccessGroup:
        check_tenant(pbx_id)
        check_name(name, "group name")
        for q in queues:
            check_name(q, "queue name")
        now = self.clock()
        row = AccessGroup(pbx_id=pbx_id, name=name, extensions=check_extensions(extensions),
                          queues=tuple(sorted(set(queues))), updated_at=now, deleted=deleted,
                          version=_ms(now) or 0)
        self.store.write_structs(API_GROUPS, [row], f"api_groups:{pbx_id}:{name}:{row.version}")
        self._forget("group", f"{pbx_id}\x00{name}")
        return row

    def list_groups(self, pbx_id: str | None = None) -> list[AccessGroup]:
        where = " WHERE pbx_id = {p:String}" if pbx_id else ""
        rows = self.store.query(f"SELECT {_fields(AccessGroup)} FROM api_groups FINAL{where} "
                                "ORDER BY pbx_id, name", {"p": pbx_id or ""})
        return [g for g in (_struct(AccessGroup, r) for r in rows) if not g.deleted]

    def set_tenant(self, pbx_id: str, *, name: str, timezone: str) -> Tenant:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        check_tenant(pbx_id)
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"unknown time zone {timezone!r}") from None
        now = self.clock()
        row = Tenant(pbx_id=pbx_id, name=name, timezone=timezone, updated_at=now,
                     version=_ms(now) or 0)
        self.store.write_structs(TENANTS, [row], f"tenants:{pbx_id}:{row.version}")
        self._forget("tenant", pbx_id)
        return row

    def list_tenants(self) -> list[Tenant]:
        rows = self.store.query(f"SELECT {_fields(Tenant)} FROM tenants FINAL ORDER BY pbx_id")
        return [_struct(Tenant, r) for r in rows]

    # -- reads (the API, cached) --------------------------------------------------------------

    def key(self, key_id: str) -> ApiKey | None:
        return self._cached("key", key_id, lambda: self._read_key(key_id))

    def group(self, pbx_id: str, name: str) -> AccessGroup | None:
        def read() -> AccessGroup | None:
            rows = self.store.query(
                f"SELECT {_fields(AccessGroup)} FROM api_groups FINAL "
                "WHERE pbx_id = {p:String} AND name = {n:String}", {"p": pbx_id, "n": name})
            group = _struct(AccessGroup, rows[0]) if rows else None
            return None if group is None or group.deleted else group

        return self._cached("group", f"{pbx_id}\x00{name}", read)

    def tenant(self, pbx_id: str) -> Tenant | None:
        def read() -> Tenant | None:
            rows = self.store.query(f"SELECT {_fields(Tenant)} FROM tenants FINAL "
                                    "WHERE pbx_id = {p:String}", {"p": pbx_id})
            return _struct(Tenant, rows[0]) if rows else None

        return self._cached("tenant", pbx_id, read)

    def call_days(self, pbx_id: str, default_days: int) -> int:
        """How long the tenant's calls are kept (its retention policy, else the default)."""
        def read() -> int:
            rows = self.store.query("SELECT call_days FROM retention_policies FINAL "
                                    "WHERE customer = {c:String}", {"c": pbx_id})
            return int(rows[0]["call_days"]) if rows else default_days

        return int(self._cached("retention", pbx_id, read))

    def _read_key(self, key_id: str) -> ApiKey | None:
        rows = self.store.query(f"SELECT {_fields(ApiKey)} FROM api_keys FINAL "
                                "WHERE key_id = {k:String}", {"k": key_id})
        return _struct(ApiKey, rows[0]) if rows else None

    def _cached(self, kind: str, key: str, read: Callable[[], T]) -> T:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get((kind, key))
        if hit is not None and now - hit[0] < self.cache_s:
            return hit[1]  # type: ignore[no-any-return]
        value = read()
        with self._lock:
            if len(self._cache) > 10_000:  # a flood of made-up key ids must not grow it forever
                self._cache.clear()
            self._cache[(kind, key)] = (now, value)
        return value

    def _forget(self, kind: str, key: str) -> None:
        with self._lock:
            self._cache.pop((kind, key), None)


_TIMES = {"created_at", "expires_at", "revoked_at", "updated_at"}


def _fields(struct: type[msgspec.Struct]) -> str:
    return ", ".join(f"toUnixTimestamp64Milli({f}) AS {f}" if f in _TIMES else f
                     for f in struct.__struct_fields__)


def _struct(struct: type[T], row: dict[str, Any]) -> T:
    fields = {k: (None if v is None else v / 1000) if k in _TIMES else v for k, v in row.items()}
    return msgspec.convert(fields, struct)


def role_of(value: str) -> Role:
    for role in ROLES:
        if role == value:
            return role
    raise ConfigError(f"role must be one of {', '.join(ROLES)}, got {value!r}")
