"""What each role may do, and which calls a principal sees. Pure.

    admin       the whole tenant: list, play, download, export, costs (sell and buy), load,
                missed calls, the recording access log
    supervisor  the calls of a named group of extensions and queues: list, play, load, missed calls
    user        the calls in which their own extensions took part: list, play, missed calls
    billing     the whole tenant's calls and costs (sell), export; no recordings

Anything outside a principal's scope answers exactly as if it did not exist; a right the role
lacks is refused (403).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import msgspec

from contracts.access import ROLES, Role
from contracts.errors import Forbidden
from store.tenancy import Scope

Right = Literal["list", "play", "download", "export", "costs", "costs_buy", "load", "missed", "audit"]

RIGHTS: Mapping[Role, frozenset[Right]] = {
    "admin": frozenset({"list", "play", "download", "export", "costs", "costs_buy", "load",
                        "missed", "audit"}),
    "supervisor": frozenset({"list", "play", "load", "missed"}),
    "user": frozenset({"list", "play", "missed"}),
    "billing": frozenset({"list", "export", "costs"}),
}
assert set(RIGHTS) == set(ROLES)


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who is asking: a tenant, a role and what narrows it (a user's extensions, a supervisor's
    group). ``subject`` is what the access log records: the key id, or the token's subject."""

    tenant: str
    role: Role
    subject: str
    extensions: tuple[str, ...] = ()
    group: str = ""
    via: Literal["key", "jwt", "session"] = "key"

    def may(self, right: Right) -> bool:
        return right in RIGHTS[self.role]

    def require(self, right: Right) -> None:
        if not self.may(right):
            raise Forbidden(f"the {self.role} role may not {_WHAT[right]}")


_WHAT: Mapping[Right, str] = {
    "list": "list calls", "play": "play recordings", "download": "download recordings",
    "export": "export calls", "costs": "see costs", "costs_buy": "see buy prices",
    "load": "see the load statistics", "missed": "see missed calls",
    "audit": "read the recording access log",
}


def scope_of(principal: Principal, *, group_extensions: tuple[str, ...] = (),
             group_queues: tuple[str, ...] = (), not_before_ms: int | None = None) -> Scope:
    """The calls a principal sees: a user's own extensions, a supervisor's group (its extensions
    and queues, as the tenant's group says; an unknown group sees nothing), everyone else the
    whole tenant; never what is past the tenant's retention."""
    if principal.role == "user":
        return Scope(tenant=principal.tenant, extensions=frozenset(principal.extensions),
                     not_before_ms=not_before_ms)
    if principal.role == "supervisor":
        return Scope(tenant=principal.tenant, extensions=frozenset(group_extensions),
                     queues=frozenset(group_queues) if group_extensions or group_queues else frozenset(),
                     not_before_ms=not_before_ms)
    return Scope(tenant=principal.tenant, not_before_ms=not_before_ms)
