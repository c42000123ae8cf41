"""Every Prometheus metric of the pipeline, declared once: ``pbxpipe_<component>_<noun>_<unit>``.

Labels are bounded sets: event types are folded into a fixed list, never a call id or a number.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

KNOWN_EVENT_TYPES = frozenset(
    {
        "Newchannel", "Newstate", "Hangup", "HangupRequest", "SoftHangupRequest", "DialBegin",
        "DialState", "DialEnd", "BridgeCreate", "BridgeEnter", "BridgeLeave", "BridgeDestroy",
        "BridgeMerge", "LocalBridge", "NewCallerid", "NewConnectedLine", "Newexten", "VarSet",
        "Cdr", "QueueCallerJoin", "QueueCallerLeave", "QueueCallerAbandon", "AgentCalled",
        "AgentConnect", "AgentComplete", "AgentRingNoAnswer", "BlindTransfer",
        "AttendedTransfer", "MixMonitorStart", "MixMonitorStop", "Hold", "Unhold",
        "OriginateResponse", "DeviceStateChange", "FullyBooted",
    }
)


def event_type_label(name: str) -> str:
    """Bounded label for an AMI event type."""
    return name if name in KNOWN_EVENT_TYPES else "other"


# ingest
INGEST_EVENTS = Counter(
    "pbxpipe_ingest_events_total", "AMI frames received, by event type.", ["pbx", "type"],
    registry=REGISTRY,
)
INGEST_QUARANTINED = Counter(
    "pbxpipe_ingest_quarantined_total", "Frames that could not be read, kept in quarantine.",
    ["pbx", "reason"], registry=REGISTRY,
)
INGEST_BYTES = Counter(
    "pbxpipe_ingest_received_bytes_total", "Bytes read from AMI.", ["pbx"], registry=REGISTRY
)
AMI_CONNECTED = Gauge(
    "pbxpipe_ingest_ami_connected", "1 while logged in to the PBX's AMI.", ["pbx"],
    registry=REGISTRY,
)
AMI_RECONNECTS = Counter(
    "pbxpipe_ingest_ami_reconnects_total", "AMI connection attempts after the first.", ["pbx"],
    registry=REGISTRY,
)

# enrich
ENRICH_OPEN_CALLS = Gauge(
    "pbxpipe_enrich_open_calls", "Calls with channels still up or within their grace period.",
    ["pbx"], registry=REGISTRY,
)
ENRICH_CALLS = Counter(
    "pbxpipe_enrich_calls_total", "Call records emitted, by status.", ["pbx", "status"],
    registry=REGISTRY,
)
ENRICH_INCOMPLETE = Counter(
    "pbxpipe_enrich_incomplete_calls_total",
    "Calls closed by timeout or end of input before every channel hung up.", ["pbx"],
    registry=REGISTRY,
)
ENRICH_REJECTED = Counter(
    "pbxpipe_enrich_rejected_events_total", "Events enrich could not use, by reason.",
    ["pbx", "reason"], registry=REGISTRY,
)

# store
STORE_ROWS = Counter(
    "pbxpipe_store_rows_written_total", "Rows written to ClickHouse, by table.", ["table"],
    registry=REGISTRY,
)
STORE_BATCH_ROWS = Histogram(
    "pbxpipe_store_batch_rows", "Rows per insert.", ["table"],
    buckets=(1, 10, 100, 1_000, 10_000, 100_000), registry=REGISTRY,
)
STORE_INSERT_SECONDS = Histogram(
    "pbxpipe_store_insert_duration_seconds", "Insert latency.", ["table"], registry=REGISTRY
)
STORE_INSERT_FAILURES = Counter(
    "pbxpipe_store_insert_failures_total", "Failed insert attempts (retried).", ["table"],
    registry=REGISTRY,
)
