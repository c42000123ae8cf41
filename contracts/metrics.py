"""Every Prometheus metric of the pipeline, declared once: ``pbxpipe_<component>_<noun>_<unit>``.

Labels are bounded sets: event types are folded into a fixed list, never a call id or a number.
"""

from __future__ import annotations

from typing import Any

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


def observe_many(histogram: Histogram, values: Any) -> None:
    """``histogram.observe(v)`` for each of ``values`` (a NumPy array), in one vectorised pass:
    the store observes every call row of a batch, hundreds of thousands a second.

    prometheus_client has no bulk observe: this adds to the histogram's own bucket and sum values
    (non-cumulative buckets, ``v <= bound`` goes to the first such bound), as observe() does;
    tests/test_store_stage_arrow.py checks both give the same exposition.
    """
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    if not values.size:
        return
    bounds = np.asarray(histogram._upper_bounds, dtype=np.float64)
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    histogram._sum.inc(float(values.sum()))
    for bucket, n in zip(histogram._buckets, counts.tolist(), strict=False):
        if n:
            bucket.inc(n)


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
INGEST_PBX_OPEN = Gauge(
    "pbxpipe_ingest_pbx_open",
    "1 while the PBX is open (PBXPIPE_BUSINESS_HOURS in PBXPIPE_PBX_TIMEZONE), else 0: the hours "
    "in which a silent PBX alerts.", ["pbx"], registry=REGISTRY,
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

# kafka
KAFKA_PRODUCED = Counter(
    "pbxpipe_kafka_produced_messages_total", "Messages acknowledged by Kafka, by stage.",
    ["stage"], registry=REGISTRY,
)
KAFKA_CONSUMED = Counter(
    "pbxpipe_kafka_consumed_messages_total", "Messages fetched from Kafka, by stage.", ["stage"],
    registry=REGISTRY,
)
KAFKA_DEAD_LETTERS = Counter(
    "pbxpipe_kafka_dead_letters_total", "Poison messages sent to the dead-letter topic.",
    ["stage", "reason"], registry=REGISTRY,
)
KAFKA_COMMITS = Counter(
    "pbxpipe_kafka_commits_total", "Offset commits, by stage.", ["stage"], registry=REGISTRY,
)
KAFKA_PRODUCE_FAILURES = Counter(
    "pbxpipe_kafka_produce_failures_total", "Produce rounds that failed (Kafka unreachable).",
    ["stage"], registry=REGISTRY,
)
INGEST_SPOOL_BYTES = Gauge(
    "pbxpipe_ingest_spool_bytes", "Bytes waiting in the local spool for Kafka.", ["pbx"],
    registry=REGISTRY,
)
INGEST_SPOOL_DROPPED = Counter(
    "pbxpipe_ingest_spool_dropped_total", "Frames dropped because the spool was full.", ["pbx"],
    registry=REGISTRY,
)
INGEST_SPOOL_CURSOR_RECOVERIES = Counter(
    "pbxpipe_ingest_spool_cursor_recoveries_total",
    "Starts that found the spool's cursor unreadable (a machine crash): the spool was sent again "
    "from its oldest record; enrich drops what Kafka already had.", ["pbx"], registry=REGISTRY,
)
ENRICH_DUPLICATES = Counter(
    "pbxpipe_enrich_duplicate_events_total",
    "Envelopes seen twice (a re-sent produce batch), skipped.", ["pbx"], registry=REGISTRY,
)
STORE_PAUSED = Gauge(
    "pbxpipe_store_fetch_paused", "1 while fetching is paused because ClickHouse is down.",
    registry=REGISTRY,
)
STORE_CALL_LATENCY = Histogram(
    "pbxpipe_store_call_latency_seconds",
    "Seconds from a call's end (its last hangup) to its row's insert acknowledged by ClickHouse, "
    "observed by the store stage: how soon after it ended a call shows in the history. It includes "
    "enrich's grace period (call_grace_s) for late events.",
    buckets=(0.25, 0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 7.5, 10, 15, 30, 60, 120, 300, 900, 3600),
    registry=REGISTRY,
)

# retention
RECORDINGS = Counter(
    "pbxpipe_recordings_files_total",
    "Recording files handled, by outcome: uploaded, skipped_unanswered, missing, failed.",
    ["pbx", "outcome"], registry=REGISTRY,
)
RECORDINGS_BYTES = Counter(
    "pbxpipe_recordings_uploaded_bytes_total", "Bytes of recordings uploaded.", ["pbx"],
    registry=REGISTRY,
)
RECORDINGS_RETRIES = Counter(
    "pbxpipe_recordings_upload_retries_total", "Upload attempts that failed and were retried.",
    ["pbx"], registry=REGISTRY,
)
RECORDINGS_PENDING = Gauge(
    "pbxpipe_recordings_pending_files",
    "Recording files of stored calls not uploaded yet (still being written, over the pass's "
    "budget, or failing), as the last recordings pass found them.", ["pbx"], registry=REGISTRY,
)
RECORDINGS_MISSING = Gauge(
    "pbxpipe_recordings_missing_files",
    "Recording files named by calls within the lookback but absent from the spool for longer "
    "than recordings_missing_s, as the last recordings pass found them (retried every pass).",
    ["pbx"], registry=REGISTRY,
)
RETENTION_JOB_SUCCESS = Gauge(
    "pbxpipe_retention_job_last_success_timestamp_seconds",
    "When each retention job (apply, export, export_due, erase, hold, recordings_sync: a "
    "recordings pass) last succeeded.", ["job"],
    registry=REGISTRY,
)
RETENTION_EXPORTED_ROWS = Counter(
    "pbxpipe_retention_exported_rows_total", "Call rows written to exports.", ["format"],
    registry=REGISTRY,
)
RETENTION_ERASED = Counter(
    "pbxpipe_retention_erased_total", "Items removed by erasure requests, by kind.", ["kind"],
    registry=REGISTRY,
)

# ops: what operators alert on that the stages above do not already count
INGEST_FILTERED = Counter(
    "pbxpipe_ingest_filtered_events_total",
    "Events received that the pipeline does not use, ignored (AMI filters not installed?).",
    ["pbx", "reason"], registry=REGISTRY,
)
INGEST_GAPS = Counter(
    "pbxpipe_ingest_gaps_total",
    "Detected gaps in the event stream, by kind: reconnect (events between two AMI sessions are "
    "lost), seq (a jump in a session's frame numbers).", ["pbx", "kind"], registry=REGISTRY,
)
INGEST_SPOOL_CAPACITY = Gauge(
    "pbxpipe_ingest_spool_capacity_bytes", "Size at which the spool starts dropping frames.",
    ["pbx"], registry=REGISTRY,
)
KAFKA_CONSUMER_LAG = Gauge(
    "pbxpipe_kafka_consumer_lag_messages",
    "Messages between the partition's high watermark and the consumer's position.",
    ["stage", "partition"], registry=REGISTRY,
)
RETENTION_JOB_RUNS = Counter(
    "pbxpipe_retention_job_runs_total", "Retention and export job runs, by job and result.",
    ["job", "result"], registry=REGISTRY,
)
OPS_READY = Gauge(
    "pbxpipe_ops_ready", "1 while the process's readiness check passes (as /readyz answers).",
    ["component"], registry=REGISTRY,
)
BUILD_INFO = Gauge(
    "pbxpipe_build_info", "Always 1; the version and component of this process as labels.",
    ["version", "component"], registry=REGISTRY,
)

# tariffs
TARIFF_RATED_CALLS = Counter(
    "pbxpipe_tariffs_rated_calls_total",
    "Outbound calls by rating outcome: rated, unanswered, no_match, no_band, bad_number.",
    ["pbx", "outcome"], registry=REGISTRY,
)
TARIFF_ALERTS = Counter(
    "pbxpipe_tariffs_alerts_total",
    "Unusual-traffic alerts raised (spend or calls per hour to watched destinations), by kind.",
    ["pbx", "scope", "kind"], registry=REGISTRY,
)
TARIFF_RERATED_CALLS = Counter(
    "pbxpipe_tariffs_rerated_calls_total", "Calls whose cost changed when re-rated.",
    registry=REGISTRY,
)

# reconcile: Asterisk's own records against the stored calls (`pbxpipe reconcile`, a one-shot job:
# under `pbxpipe every` these gauges reach Prometheus through the scheduler, see JOB_GAUGES)
RECONCILE_COMPLETENESS = Gauge(
    "pbxpipe_reconcile_completeness_ratio",
    "Share of the calls in the PBX's own records (CDR) of the last reconciled period that are "
    "stored once and agree with them (1 when there were none).", ["pbx"], registry=REGISTRY,
)
RECONCILE_THRESHOLD = Gauge(
    "pbxpipe_reconcile_completeness_threshold_ratio",
    "Completeness below which PbxCallsIncomplete fires (reconcile_min_completeness).", ["pbx"],
    registry=REGISTRY,
)
RECONCILE_CALLS = Gauge(
    "pbxpipe_reconcile_calls",
    "Calls of the last reconciled period by outcome: asterisk (in the PBX's records), exact, "
    "missing, phantom, differing, duplicate, rebuilt (written from the CDR by that run).",
    ["pbx", "outcome"], registry=REGISTRY,
)
RECONCILE_REJECTED_ROWS = Gauge(
    "pbxpipe_reconcile_rejected_rows",
    "Rows of the last reconciliation's sources (CDR, CEL) that could not be read (kept in its "
    "report).", ["pbx"], registry=REGISTRY,
)
RECONCILE_LAST_RUN = Gauge(
    "pbxpipe_reconcile_last_run_timestamp_seconds", "When the PBX was last reconciled.", ["pbx"],
    registry=REGISTRY,
)
REDERIVE_REPLACED = Counter(
    "pbxpipe_rederive_replaced_calls_total",
    "Stored calls replaced by a new version when the enrich rules were re-run over their events "
    "(`pbxpipe rederive --apply`).", ["pbx"], registry=REGISTRY,
)
JOB_GAUGES = (RECONCILE_COMPLETENESS, RECONCILE_THRESHOLD, RECONCILE_CALLS,
              RECONCILE_REJECTED_ROWS, RECONCILE_LAST_RUN)
"""Gauges a one-shot job sets that `pbxpipe every` keeps on its own /metrics after each run."""

# api: the panel page
API_PANEL_SIGNINS = Counter(
    "pbxpipe_api_panel_signins_total",
    "Sign-ins to the panel page by outcome: started, refused (a wrong, expired or revoked key), "
    "cross_site (a form posted from another site).",
    ["outcome"], registry=REGISTRY,
)
