"""Who is asking: a bearer credential (an API key or a JWT from the operator's identity provider),
or the panel's signed session cookie, turned into a :class:`~api.access.Principal`.

Credentials travel in the ``Authorization`` header only: a request that carries one in its query
string is refused before anything else (such URLs end up in proxies' and browsers' logs). Nothing
here logs a credential. Every failure says the same for a wrong, unknown, expired or revoked key,
so the answer tells an attacker nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt
import structlog

from api.access import Principal
from api.keys import KeyStore, secret_matches, split_key
from api.signing import Signer
from contracts.access import ROLES, ApiKey
from contracts.config import Settings
from contracts.errors import BadParameter, Unauthorised, Unavailable

log = structlog.get_logger("api.auth")

SESSION_COOKIE = "pbxpipe_session"

CREDENTIAL_PARAMETERS = frozenset({
    "access_token", "token", "api_key", "apikey", "key", "jwt", "auth", "authorization",
    "bearer", "id_token", "session",
})
"""Query parameters that would carry a credential: refused wherever they appear."""

_BAD_KEY = "invalid, expired or revoked API key"


def refuse_credentials_in_url(query_keys: set[str]) -> None:
    for name in query_keys:
        if name.lower() in CREDENTIAL_PARAMETERS:
            raise BadParameter(name, "credentials go in the Authorization header, never in the URL")


class Authenticator:
    def __init__(self, keys: KeyStore, settings: Settings, signer: Signer,
                 clock: Callable[[], float] = time.time) -> None:
        self.keys = keys
        self.settings = settings
        self.signer = signer
        self.clock = clock
        self._jwks: jwt.PyJWKClient | None = None
        if settings.api_jwt_issuer:
            if not settings.api_jwt_jwks_url:
                from contracts.errors import ConfigError

                raise ConfigError("api_jwt_issuer is set but api_jwt_jwks_url is not "
                                  "(PBXPIPE_API_JWT_JWKS_URL)")
            self._jwks = jwt.PyJWKClient(settings.api_jwt_jwks_url, cache_keys=True,
                                         cache_jwk_set=True,
                                         lifespan=max(1, settings.api_jwt_jwks_cache_s),
                                         timeout=5)
        self._algorithms = [a.strip() for a in settings.api_jwt_algorithms.split(",") if a.strip()]
        if any(a.upper().startswith("HS") or a.lower() == "none" for a in self._algorithms):
            from contracts.errors import ConfigError

            raise ConfigError("api_jwt_algorithms: only public-key algorithms (RS*, PS*, ES*, "
                              "EdDSA) are accepted with a JWKS")

    # -- bearer -----------------------------------------------------------------------------

    def bearer(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer …`` header (blocking: may read ClickHouse
        or fetch the identity provider's keys; call it off the event loop)."""
        if not authorization:
            raise Unauthorised("send Authorization: Bearer <API key or token>")
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthorised("send Authorization: Bearer <API key or token>")
        if credential.startswith("pbx_"):
            return self._key_principal(credential)
        return self._jwt_principal(credential)

    def key_for(self, credential: str) -> ApiKey:
        """The key row of a valid, unexpired, unrevoked API key."""
        parts = split_key(credential)
        if parts is None:
            raise Unauthorised(_BAD_KEY)
        key_id, secret = parts
        row = self.keys.key(key_id)
        if (row is None or not secret_matches(secret, row.secret_sha256) or not self._live(row)):
            raise Unauthorised(_BAD_KEY)
        return row

    def _key_principal(self, credential: str) -> Principal:
        return _principal(self.key_for(credential), "key")

    def _live(self, row: ApiKey) -> bool:
        now = self.clock()
        return row.revoked_at is None and (row.expires_at is None or row.expires_at > now)

    def _jwt_principal(self, token: str) -> Principal:
        if self._jwks is None or len(token) > 8192 or token.count(".") != 2:
            raise Unauthorised("invalid token")
        s = self.settings
        try:
            signing_key = self._jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError:
            log.warning("jwks_fetch_failed", url=s.api_jwt_jwks_url)
            raise Unavailable("the identity provider's signing keys cannot be fetched now") from None
        except (jwt.PyJWKClientError, jwt.InvalidTokenError):
            raise Unauthorised("invalid token") from None
        try:
            claims = jwt.decode(
                token, signing_key.key, algorithms=self._algorithms, issuer=s.api_jwt_issuer,
                audience=s.api_jwt_audience or None, leeway=30,
                options={"require": ["exp", "iss"], "verify_aud": bool(s.api_jwt_audience)},
            )
        except jwt.InvalidTokenError as e:
            raise Unauthorised(f"invalid token: {_reason(e)}") from None
        return self._claims_principal(claims)

    def _claims_principal(self, claims: Mapping[str, Any]) -> Principal:
        s = self.settings
        tenant = claims.get(s.api_jwt_tenant_claim)
        role = claims.get(s.api_jwt_role_claim)
        if not isinstance(tenant, str) or not tenant:
            raise Unauthorised(f"invalid token: no {s.api_jwt_tenant_claim} claim")
        if role not in ROLES:
            raise Unauthorised(f"invalid token: {s.api_jwt_role_claim} is not one of {', '.join(ROLES)}")
        raw = claims.get(s.api_jwt_extensions_claim) or ()
        if isinstance(raw, str):
            raw = [e.strip() for e in raw.split(",") if e.strip()]
        if not isinstance(raw, (list, tuple)) or not all(isinstance(e, str) for e in raw):
            raise Unauthorised(f"invalid token: {s.api_jwt_extensions_claim} is not a list of extensions")
        group = claims.get(s.api_jwt_group_claim) or ""
        if not isinstance(group, str):
            raise Unauthorised(f"invalid token: {s.api_jwt_group_claim} is not a name")
        subject = claims.get("sub")
        return Principal(tenant=tenant, role=role, subject=f"jwt:{subject if isinstance(subject, str) else '?'}"[:200],
                         extensions=tuple(raw), group=group, via="jwt")

    # -- the panel's session ---------------------------------------------------------------

    def session_for(self, credential: str) -> tuple[str, float]:
        """A session cookie's value for a valid API key, and when it expires."""
        row = self.key_for(credential)
        expires = self.clock() + self.settings.api_session_s
        if row.expires_at is not None:
            expires = min(expires, row.expires_at)
        return self.signer.sign("session", {"k": row.key_id}, expires), expires

    def session(self, cookie: str | None) -> Principal:
        """The principal of a session cookie; its key is checked again, so a revoked key's
        sessions end within the key cache's lifetime."""
        data = self.signer.verify("session", cookie or "", self.clock())
        if data is None or not isinstance(data.get("k"), str):
            raise Unauthorised("sign in again")
        row = self.keys.key(data["k"])
        if row is None or not self._live(row):
            raise Unauthorised("sign in again")
        return _principal(row, "session")


def _principal(row: ApiKey, via: str) -> Principal:
    return Principal(tenant=row.pbx_id, role=row.role, subject=row.key_id,
                     extensions=row.extensions, group=row.group_name, via=via)  # type: ignore[arg-type]


def _reason(e: jwt.InvalidTokenError) -> str:
    if isinstance(e, jwt.ExpiredSignatureError):
        return "expired"
    if isinstance(e, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(e, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(e, jwt.MissingRequiredClaimError):
        return f"no {e.claim} claim"
    return "bad signature or format"
