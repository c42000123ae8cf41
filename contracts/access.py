"""Who may use the panel API and what they did with recordings: the rows the API keeps.

A tenant is a PBX (its ``pbx_id``). Keys, groups and tenant settings are written by the operator's
commands (``pbxpipe api-keys``, ``pbxpipe groups``, ``pbxpipe tenants``) and read by the API; the
recording access log is written by the API, one row per play or download, and read by the
tenant's admins. Times are epoch seconds (UTC).
"""

from __future__ import annotations

from typing import Literal

import msgspec

Role = Literal["admin", "supervisor", "user", "billing"]
ROLES: tuple[Role, ...] = ("admin", "supervisor", "user", "billing")

RecordingAction = Literal["play", "download"]


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """An API key: the secret itself is never stored, only its SHA-256 (the secret is 256 random
    bits, so a fast hash is as good as a slow one)."""

    key_id: str  # public half of the key: "pbx_<key_id>_<secret>"
    pbx_id: str
    role: Role
    extensions: tuple[str, ...]  # a user's own extensions
    group_name: str  # a supervisor's group (AccessGroup.name)
    name: str  # what the operator called it
    secret_sha256: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    created_by: str
    version: int  # a revocation is a new version


class AccessGroup(msgspec.Struct, frozen=True, kw_only=True):
    """A named group of extensions and queues a supervisor sees."""

    pbx_id: str
    name: str
    extensions: tuple[str, ...]
    queues: tuple[str, ...]
    updated_at: float
    deleted: bool
    version: int


class Tenant(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's own settings: the name the panel shows and the time zone its hours are in."""

    pbx_id: str
    name: str
    timezone: str  # tz database name
    updated_at: float
    version: int


class RecordingAccess(msgspec.Struct, frozen=True, kw_only=True):
    """One play or download of a recording, as the API granted it."""

    id: str  # unique per access
    pbx_id: str
    at: float
    subject: str  # the key id, or the token's subject
    role: Role
    call_id: str
    recording: int  # the recording's number within the call (1-based)
    object_key: str
    action: RecordingAction
    client: str  # the client's address
