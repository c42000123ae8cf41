"""AMI as Asterisk 22 writes it: frames, channel snapshots and the headers of every event type.

Pure: builds header tuples and bytes; no I/O, no clock. Header names and their order follow the
real capture in ``tests/fixtures/asterisk`` (``ami_events.jsonl``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

Headers = tuple[tuple[str, str], ...]

BANNER = b"Asterisk Call Manager/11.0.0\r\n"

STATE_DESC = {0: "Down", 4: "Ring", 5: "Ringing", 6: "Up", 7: "Busy"}
DOWN, RING, RINGING, UP, BUSY = 0, 4, 5, 6, 7

CAUSE_TEXT = {
    0: "Unknown",
    16: "Normal Clearing",
    17: "User busy",
    19: "User alerting, no answer",
    20: "Subscriber absent",
    26: "Answered elsewhere",
    34: "Circuit/channel congestion",
}

# Privilege of each event type, as sent with manager.conf read=all.
PRIVILEGE = {
    "FullyBooted": "system,all",
    "SuccessfulAuth": "security,all",
    "Cdr": "cdr,all",
    "Newexten": "dialplan,all",
    "VarSet": "dialplan,all",
    "DTMFBegin": "dtmf,all",
    "DTMFEnd": "dtmf,all",
    "QueueCallerJoin": "agent,all",
    "QueueCallerLeave": "agent,all",
    "QueueCallerAbandon": "agent,all",
    "QueueMemberStatus": "agent,all",
    "AgentCalled": "agent,all",
    "AgentConnect": "agent,all",
    "AgentComplete": "agent,all",
    "AgentRingNoAnswer": "agent,all",
}
DEFAULT_PRIVILEGE = "call,all"

BRIDGE_FIELDS = (
    "BridgeUniqueid", "BridgeType", "BridgeTechnology", "BridgeCreator", "BridgeName",
    "BridgeNumChannels", "BridgeVideoSourceMode",
)


def unknown(value: str) -> str:
    """Asterisk sends empty caller-ID fields as ``<unknown>``."""
    return value if value else "<unknown>"


@dataclass(slots=True)
class Chan:
    """A channel's live snapshot: what Asterisk prints in every event about it."""

    name: str
    uniqueid: str
    linkedid: str
    created: float  # offset in the call, seconds
    state: int = DOWN
    cid_num: str = ""
    cid_name: str = ""
    conn_num: str = ""
    conn_name: str = ""
    language: str = "en"
    accountcode: str = ""
    context: str = ""
    exten: str = ""
    priority: int = 1
    # not printed in events, kept for the record and for CoreShowChannels
    role: str = ""
    ext: str = ""
    app: str = ""
    appdata: str = ""
    bridge: str = ""
    hungup: float | None = None
    vars: dict[str, str] = field(default_factory=dict)

    def block(self, prefix: str = "") -> list[tuple[str, str]]:
        """The channel snapshot headers, optionally prefixed (``Dest``, ``LocalOne``…)."""
        p = prefix
        return [
            (p + "Channel", self.name),
            (p + "ChannelState", str(self.state)),
            (p + "ChannelStateDesc", STATE_DESC[self.state]),
            (p + "CallerIDNum", unknown(self.cid_num)),
            (p + "CallerIDName", unknown(self.cid_name)),
            (p + "ConnectedLineNum", unknown(self.conn_num)),
            (p + "ConnectedLineName", unknown(self.conn_name)),
            (p + "Language", self.language),
            (p + "AccountCode", self.accountcode),
            (p + "Context", self.context),
            (p + "Exten", self.exten),
            (p + "Priority", str(self.priority)),
            (p + "Uniqueid", self.uniqueid),
            (p + "Linkedid", self.linkedid),
        ]


@dataclass(slots=True)
class Bridge:
    uniqueid: str
    channels: list[Chan] = field(default_factory=list)

    def block(self, prefix: str = "") -> list[tuple[str, str]]:
        return [
            (prefix + "BridgeUniqueid", self.uniqueid),
            (prefix + "BridgeType", "basic"),
            (prefix + "BridgeTechnology", "simple_bridge"),
            (prefix + "BridgeCreator", "<unknown>"),
            (prefix + "BridgeName", "<unknown>"),
            (prefix + "BridgeNumChannels", str(len(self.channels))),
            (prefix + "BridgeVideoSourceMode", "none"),
        ]


def event_headers(name: str, timestamp: float | None, fields: Iterable[tuple[str, str]]) -> Headers:
    """``Event``, ``Privilege``, ``Timestamp`` (epoch.usec, as ``timestampevents=yes``), then fields."""
    head: list[tuple[str, str]] = [("Event", name), ("Privilege", PRIVILEGE.get(name, DEFAULT_PRIVILEGE))]
    if timestamp is not None:
        head.append(("Timestamp", f"{timestamp:.6f}"))
    head.extend(fields)
    return tuple(head)


def render_frame(headers: Iterable[tuple[str, str]]) -> bytes:
    """One AMI frame: ``Key: value\\r\\n`` lines and a blank line, UTF-8."""
    return ("\r\n".join(map(": ".join, headers)) + "\r\n\r\n").encode("utf-8")


def frame_text(headers: Iterable[tuple[str, str]]) -> str:
    """The frame as text without the final blank line: what manager filters are matched against."""
    return "\r\n".join(map(": ".join, headers)) + "\r\n"


def cdr_time(epoch: float) -> str:
    """cdr_manager's StartTime/AnswerTime/EndTime: local time (the PBX runs on UTC), 1 s."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def fully_booted(uptime: int = 9) -> Headers:
    """Sent right after a successful Login; the only event without ``Timestamp``."""
    return event_headers(
        "FullyBooted", None,
        (("Uptime", str(uptime)), ("LastReload", str(uptime)), ("Status", "Fully Booted")),
    )
