-- 0007 reconcile: calls rebuilt from Asterisk's CDR, reconciliation runs, re-derivation shadows.
--
-- calls.built_from says what a row was built from: 'ami' (the call's events, by enrich; every row
-- written before) or 'cdr' (rebuilt from the PBX's own CDR by `pbxpipe reconcile --write-missing`).
-- reconcile_runs keeps each reconciliation's figures and report (contracts.reconcile.ReconcileRun).
-- rederived_calls and rederived_legs are the shadow tables of `pbxpipe rederive`: the enrich rules
-- re-run over raw events, one run_id per run, compared with calls and call_legs and dropped after
-- 7 days. They are shaped as calls and call_legs when this migration runs (CREATE ... AS SELECT),
-- so a later migration adding a column there adds it to its shadow too; tests/test_store_schema.py
-- holds both to their Structs.
-- Every statement is idempotent.

ALTER TABLE calls ADD COLUMN IF NOT EXISTS built_from LowCardinality(String) DEFAULT 'ami' AFTER version;

CREATE TABLE IF NOT EXISTS reconcile_runs
(
    run_id String,
    pbx_id LowCardinality(String),
    run_at DateTime64(3, 'UTC'),
    since DateTime64(3, 'UTC'),
    until DateTime64(3, 'UTC'),
    source String,
    asterisk_calls UInt64,
    stored_calls UInt64,
    exact UInt64,
    missing UInt64,
    phantoms UInt64,
    differing UInt64,
    duplicates UInt64,
    rebuilt UInt64,
    rejected_rows UInt64,
    completeness Float64,
    report String CODEC(ZSTD(3))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(run_at)
ORDER BY (pbx_id, run_at, run_id);

CREATE TABLE IF NOT EXISTS rederived_calls
ENGINE = ReplacingMergeTree
ORDER BY (run_id, call_id)
TTL toDateTime(run_at) + toIntervalDay(7)
EMPTY AS SELECT toString('') AS run_id, toDateTime64(0, 3, 'UTC') AS run_at, * FROM calls;

CREATE TABLE IF NOT EXISTS rederived_legs
ENGINE = ReplacingMergeTree
ORDER BY (run_id, call_id, leg_id)
TTL toDateTime(run_at) + toIntervalDay(7)
EMPTY AS SELECT toString('') AS run_id, toDateTime64(0, 3, 'UTC') AS run_at, * FROM call_legs;
