-- 0001 initial schema: calls, call_legs, quarantine.
--
-- Column names and order follow contracts.records (CallRecord, CallLeg, Quarantined); store/schema.py
-- derives the insert column lists from those Structs and tests/test_store_schema.py checks that every
-- table here has exactly the Struct's fields plus the extra columns documented in store/schema.py.
--
-- Idempotency: ReplacingMergeTree(version) on a sorting key that is fixed for a given call/leg/item,
-- so a replayed record collapses (read with FINAL); non_replicated_deduplication_window makes an
-- insert re-sent with the same insert_deduplication_token a no-op.
-- Partitions are monthly on the record's own time, so the 365-day retention (a later migration:
-- ALTER TABLE ... MODIFY TTL, with ttl_only_drop_parts) drops whole parts.
-- Every statement is idempotent (IF NOT EXISTS): ClickHouse DDL is not transactional, so a migration
-- interrupted half-way is simply applied again.

CREATE TABLE IF NOT EXISTS calls
(
    call_id String,
    pbx_id LowCardinality(String),
    linkedid String,
    direction LowCardinality(String),
    caller String,
    caller_name String,
    called String,
    answered Bool,
    first_answered_by Nullable(String),
    last_answered_by Nullable(String),
    status LowCardinality(String),
    start DateTime64(3, 'UTC'),
    answer Nullable(DateTime64(3, 'UTC')),
    `end` DateTime64(3, 'UTC'),
    duration_s Float64,
    wait_s Nullable(Float64),
    talk_s Float64,
    hangup_cause Int32,
    hangup_cause_text LowCardinality(String),
    hangup_by LowCardinality(String),
    extensions_rang Array(String),
    queue LowCardinality(String),
    transferred Bool,
    forwarded Bool,
    recordings Array(String),
    disposition LowCardinality(String),
    incomplete Bool,
    version UInt64,
    -- Every extension or number that took part: the call-history "extension" filter is one has()
    -- on this column, so a single bloom filter serves what would otherwise be an OR over 5 columns.
    parties Array(String) MATERIALIZED arrayDistinct(arrayFilter(p -> p != '',
        arrayConcat([caller, called, ifNull(first_answered_by, ''), ifNull(last_answered_by, '')], extensions_rang))),
    INDEX idx_caller caller TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_called called TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_extensions_rang extensions_rang TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_parties parties TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(start)
-- start is fixed when the call's first channel appears, so the key is stable across versions.
ORDER BY (pbx_id, toDate(start), call_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS call_legs
(
    leg_id String,
    call_id String,
    pbx_id LowCardinality(String),
    linkedid String,
    kind LowCardinality(String),
    extension LowCardinality(String),
    channel String,
    start DateTime64(3, 'UTC'),
    answer Nullable(DateTime64(3, 'UTC')),
    `end` DateTime64(3, 'UTC'),
    ring_s Float64,
    talk_s Float64,
    outcome LowCardinality(String),
    answered Bool,
    version UInt64,
    INDEX idx_extension extension TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_call_id call_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(start)
ORDER BY (pbx_id, toDate(start), call_id, leg_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS quarantine
(
    id String,  -- store.schema.quarantine_id(): a hash of the item, so a replay collapses
    pbx_id LowCardinality(String),
    received_at DateTime64(3, 'UTC'),
    reason LowCardinality(String),
    detail String,
    raw String CODEC(ZSTD(3))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (pbx_id, toDate(received_at), id)
SETTINGS non_replicated_deduplication_window = 1000;
