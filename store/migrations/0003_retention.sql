-- 0003 retention: recordings, per-customer policies, legal holds, exports, erasure audit, TTLs.
--
-- Call data expires after 365 days by default: TTL on the row's own time with ttl_only_drop_parts,
-- and the tables are partitioned by month (0001), so expiry drops whole parts, no mutations.
-- `pbxpipe retention apply` rewrites these TTLs when customers have their own policies.
-- Held rows are copied to held_rows (no TTL) as JSON, so a hold survives schema changes of calls.
-- Every statement is idempotent.

CREATE TABLE IF NOT EXISTS recordings
(
    call_id String,
    pbx_id LowCardinality(String),
    start DateTime64(3, 'UTC'),
    source String,
    key String,
    size_bytes UInt64,
    duration_s Nullable(Float64),
    sha256 String,
    content_type LowCardinality(String),
    uploaded_at DateTime64(3, 'UTC'),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(start)
ORDER BY (pbx_id, call_id, key)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS retention_policies
(
    customer String,
    call_days UInt32,
    recording_days UInt32,
    updated_at DateTime64(3, 'UTC'),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY customer;

CREATE TABLE IF NOT EXISTS legal_holds
(
    hold_id String,
    kind LowCardinality(String),
    value String,
    reason String,
    created_by String,
    created_at DateTime64(3, 'UTC'),
    released_at Nullable(DateTime64(3, 'UTC')),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY hold_id;

CREATE TABLE IF NOT EXISTS held_rows
(
    hold_id String,
    source_table LowCardinality(String),
    call_id String,
    pbx_id LowCardinality(String),
    start DateTime64(3, 'UTC'),
    row_id String,
    row String CODEC(ZSTD(3)),
    held_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (hold_id, source_table, call_id, row_id);

CREATE TABLE IF NOT EXISTS exports
(
    customer String,
    month String,
    destination String,
    rows UInt64,
    manifest_sha256 String,
    exported_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (customer, month);

CREATE TABLE IF NOT EXISTS erasure_audit
(
    at DateTime64(3, 'UTC'),
    actor String,
    number_sha256 String,
    dry_run Bool,
    calls UInt64,
    legs UInt64,
    recordings UInt64,
    quarantined UInt64,
    held_calls Array(String),
    erased_calls Array(String)
)
ENGINE = MergeTree
ORDER BY at;

ALTER TABLE calls MODIFY SETTING ttl_only_drop_parts = 1;
ALTER TABLE call_legs MODIFY SETTING ttl_only_drop_parts = 1;
ALTER TABLE quarantine MODIFY SETTING ttl_only_drop_parts = 1;
ALTER TABLE recordings MODIFY SETTING ttl_only_drop_parts = 1;
ALTER TABLE calls MODIFY TTL toDateTime(start) + toIntervalDay(365);
ALTER TABLE call_legs MODIFY TTL toDateTime(start) + toIntervalDay(365);
ALTER TABLE quarantine MODIFY TTL toDateTime(received_at) + toIntervalDay(365);
ALTER TABLE recordings MODIFY TTL toDateTime(start) + toIntervalDay(365);
