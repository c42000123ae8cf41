"""Short signed tokens the API hands out itself: the panel's session cookie and a recording's
link. An HMAC-SHA-256 over a small JSON payload with its expiry; nothing secret inside."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any

import msgspec

_MAX_TOKEN = 2048


class Signer:
    def __init__(self, secret: str) -> None:
        # an empty secret: a random one, so tokens die with the process
        self._key = (secret or secrets.token_urlsafe(32)).encode()

    def sign(self, purpose: str, payload: dict[str, Any], expires_at: float) -> str:
        body = _b64(msgspec.json.encode({"p": purpose, "x": round(expires_at, 3), "d": payload}))
        return f"{body}.{_b64(self._mac(body))}"

    def verify(self, purpose: str, token: str, now: float) -> dict[str, Any] | None:
        """The payload of a token signed here for ``purpose`` and not expired at ``now``."""
        if not isinstance(token, str) or len(token) > _MAX_TOKEN or token.count(".") != 1:
            return None
        body, mac = token.split(".")
        try:
            if not hmac.compare_digest(_unb64(mac), self._mac(body)):
                return None
            data = msgspec.json.decode(_unb64(body))
        except (ValueError, msgspec.DecodeError):
            return None
        if (not isinstance(data, dict) or data.get("p") != purpose
                or not isinstance(data.get("x"), (int, float)) or data["x"] <= now
                or not isinstance(data.get("d"), dict)):
            return None
        return data["d"]  # type: ignore[no-any-return]

    def _mac(self, body: str) -> bytes:
        return hmac.new(self._key, body.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
