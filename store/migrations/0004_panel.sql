-- 0004 panel: what the customers' panel API searches by, and the rows it keeps.
--
-- calls.numbers: the keys of the call's caller and called numbers (their last 9 digits, see
-- store.queries.NUMBER_KEY_DIGITS), bloom-filtered, so a year's search for one number in a large
-- tenant reads the few granules that hold it. idx_call_id makes a call's page (one call id) a
-- lookup even without the day its id names (store.tenancy.day_hint).
-- api_keys, api_groups, tenants: written by the operator's commands (contracts.access).
-- recording_access: one row per play or download, kept as long as the calls.
-- Row policies (a ClickHouse server only; chDB has no users, so there the guard in
-- store/tenancy.py is the one wall): every tenant table shows a user holding the role
-- pbxpipe_tenant_reader only the rows of the tenant its query names in the custom setting
-- SQL_pbxpipe_tenant (the API sets it on every query), and every other user every row.
-- Every statement is idempotent.

ALTER TABLE calls ADD COLUMN IF NOT EXISTS numbers Array(String) MATERIALIZED arrayDistinct(arrayFilter(n -> n != '',
    [right(replaceRegexpAll(caller, '[^0-9]', ''), 9), right(replaceRegexpAll(called, '[^0-9]', ''), 9)]));
ALTER TABLE calls ADD INDEX IF NOT EXISTS idx_numbers numbers TYPE bloom_filter(0.01) GRANULARITY 1;
ALTER TABLE calls ADD INDEX IF NOT EXISTS idx_call_id call_id TYPE bloom_filter(0.01) GRANULARITY 1;
ALTER TABLE calls MATERIALIZE COLUMN numbers;
ALTER TABLE calls MATERIALIZE INDEX idx_numbers;
ALTER TABLE calls MATERIALIZE INDEX idx_call_id;

CREATE TABLE IF NOT EXISTS api_keys
(
    key_id String,
    pbx_id LowCardinality(String),
    role LowCardinality(String),
    extensions Array(String),
    group_name String,
    name String,
    secret_sha256 String,
    created_at DateTime64(3, 'UTC'),
    expires_at Nullable(DateTime64(3, 'UTC')),
    revoked_at Nullable(DateTime64(3, 'UTC')),
    created_by String,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY key_id;

CREATE TABLE IF NOT EXISTS api_groups
(
    pbx_id LowCardinality(String),
    name String,
    extensions Array(String),
    queues Array(String),
    updated_at DateTime64(3, 'UTC'),
    deleted Bool,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (pbx_id, name);

CREATE TABLE IF NOT EXISTS tenants
(
    pbx_id String,
    name String,
    timezone String,
    updated_at DateTime64(3, 'UTC'),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY pbx_id;

CREATE TABLE IF NOT EXISTS recording_access
(
    id String,
    pbx_id LowCardinality(String),
    at DateTime64(3, 'UTC'),
    subject String,
    role LowCardinality(String),
    call_id String,
    recording UInt32,
    object_key String,
    action LowCardinality(String),
    client String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (pbx_id, at, id)
TTL toDateTime(at) + toIntervalDay(365)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE ROLE IF NOT EXISTS pbxpipe_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS pbxpipe_tenant_calls ON calls USING pbx_id = getSetting('SQL_pbxpipe_tenant') TO pbxpipe_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS pbxpipe_tenant_call_legs ON call_legs USING pbx_id = getSetting('SQL_pbxpipe_tenant') TO pbxpipe_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS pbxpipe_tenant_recordings ON recordings USING pbx_id = getSetting('SQL_pbxpipe_tenant') TO pbxpipe_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS pbxpipe_tenant_recording_access ON recording_access USING pbx_id = getSetting('SQL_pbxpipe_tenant') TO pbxpipe_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS pbxpipe_all_calls ON calls USING 1 TO ALL EXCEPT pbxpipe_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS pbxpipe_all_call_legs ON call_legs USING 1 TO ALL EXCEPT pbxpipe_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS pbxpipe_all_recordings ON recordings USING 1 TO ALL EXCEPT pbxpipe_tenant_reader;
CREATE ROW POLICY IF NOT EXISTS pbxpipe_all_recording_access ON recording_access USING 1 TO ALL EXCEPT pbxpipe_tenant_reader;
