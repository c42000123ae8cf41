"""Per-PBX profile: what each channel is, because Asterisk's events do not say it.

A profile is a list of channel rules, first match wins. Each rule names a role:

* ``trunk``  — a channel to or from the PSTN (``PJSIP/trunk-…``): an inbound call starts on one,
  an outbound call dials one;
* ``device`` — an employee's phone (``PJSIP/101-…``): internal and outbound calls start on one,
  inbound calls ring them; the extension is read from the regex group ``ext`` or, with
  ``extension = "callerid"``, from the channel's caller ID;
* ``local``  — a helper channel (Local pairs of queues, forwards, transfers): transparent;
* ``ignore`` — a channel that is not part of the PBX's call (the capture's simulated parties).

Channels that match no rule are ``local``.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Literal

import msgspec

from contracts.errors import ConfigError

Role = Literal["trunk", "device", "local", "ignore"]


class ChannelRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pattern: str
    role: Role
    extension: Literal["name", "callerid"] = "name"


class PbxProfile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, dict=True):
    pbx_id: str
    channels: tuple[ChannelRule, ...]
    internal_number: str = r"^\d{2,5}$"
    """Numbers an employee dials that are extensions (an internal call), not the PSTN."""
    # tariffs: how the PBX's users dial the PSTN, to read dialled numbers as E.164 (enrich.tariffs)
    country_code: str = "48"  # prepended to numbers dialled with the national prefix (or none)
    national_prefix: str = "0"  # "0601234567" -> +48601234567; "" when numbers are dialled bare
    international_prefix: str = "00"  # "0044…" -> +44…; a leading "+" is always international

    @cached_property
    def _compiled(self) -> tuple[tuple[re.Pattern[str], ChannelRule], ...]:
        return tuple((re.compile(r.pattern), r) for r in self.channels)

    @cached_property
    def _internal(self) -> re.Pattern[str]:
        return re.compile(self.internal_number)

    def classify(self, channel: str, callerid: str = "") -> tuple[Role, str]:
        """Role of a channel and, for devices, its extension number ("" when unknown)."""
        for rx, rule in self._compiled:
            m = rx.match(channel)
            if m is None:
                continue
            if rule.role != "device":
                return rule.role, ""
            if rule.extension == "callerid":
                return "device", callerid
            return "device", m.groupdict().get("ext") or ""
        return "local", ""

    def is_internal_number(self, number: str) -> bool:
        return bool(self._internal.match(number))


DEFAULT_PROFILE = PbxProfile(
    pbx_id="pbx1",
    channels=(
        ChannelRule(r"^(?:PJSIP|SIP|IAX2)/(?:trunk|pstn|carrier)[^/]*-[0-9a-f]+$", "trunk"),
        ChannelRule(r"^(?:DAHDI|Dongle)/", "trunk"),
        ChannelRule(r"^(?:PJSIP|SIP|IAX2)/(?P<ext>\d+)-[0-9a-f]+$", "device"),
    ),
)
"""A production-style PBX: PJSIP endpoints named by extension, trunks named ``trunk…``."""


def load_profile(path: str | Path) -> PbxProfile:
    """Read a profile from TOML; every mistake is a ConfigError that names the file."""
    p = Path(path)
    try:
        profile = msgspec.toml.decode(p.read_bytes(), type=PbxProfile)
        for rule in profile.channels:
            re.compile(rule.pattern)
        re.compile(profile.internal_number)
    except OSError as e:
        raise ConfigError(f"cannot read PBX profile {p}: {e.strerror}") from None
    except (msgspec.ValidationError, msgspec.DecodeError, re.error) as e:
        raise ConfigError(f"invalid PBX profile {p}: {e}") from None
    return profile
