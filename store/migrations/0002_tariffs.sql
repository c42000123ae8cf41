-- 0002 tariffs: the cost of outbound calls (contracts.tariffs, enrich/tariffs.py).
--
-- calls gains the Rating fields, after `version` and in the same order as CallRecord (defaults =
-- not rated, so rows written before are valid). Money is Decimal(18, 4): exact, like the price list.
-- tariffs holds every price-list version loaded (a content hash), so dashboards join calls on
-- (tariff_version, tariff_plan, tariff_prefix); tariff_alerts keeps unusual-traffic alerts.
-- `pbxpipe rerate` writes new versions of calls rows (rating revision in the high 32 bits of
-- version, see enrich.tariffs.RATING_REVISION_SHIFT), so the re-rated row wins in FINAL reads.
-- Every statement is idempotent.

ALTER TABLE calls ADD COLUMN IF NOT EXISTS cost Decimal(18, 4) DEFAULT 0 AFTER version;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS cost_buy Decimal(18, 4) DEFAULT 0 AFTER cost;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS margin Decimal(18, 4) DEFAULT 0 AFTER cost_buy;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS currency LowCardinality(String) DEFAULT '' AFTER margin;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS billed_s UInt32 DEFAULT 0 AFTER currency;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS rating LowCardinality(String) DEFAULT '' AFTER billed_s;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS called_e164 String DEFAULT '' AFTER rating;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS tariff_plan LowCardinality(String) DEFAULT '' AFTER called_e164;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS tariff_version LowCardinality(String) DEFAULT '' AFTER tariff_plan;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS tariff_prefix String DEFAULT '' AFTER tariff_version;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS destination LowCardinality(String) DEFAULT '' AFTER tariff_prefix;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS destination_category LowCardinality(String) DEFAULT '' AFTER destination;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS tariff_band LowCardinality(String) DEFAULT '' AFTER destination_category;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS rate Decimal(18, 4) DEFAULT 0 AFTER tariff_band;
ALTER TABLE calls ADD COLUMN IF NOT EXISTS increments LowCardinality(String) DEFAULT '' AFTER rate;

CREATE TABLE IF NOT EXISTS tariffs
(
    version String,
    source String,
    line UInt32,
    plan LowCardinality(String),
    prefix String,
    destination String,
    category LowCardinality(String),
    band LowCardinality(String),
    days String,
    hours String,
    valid_from Nullable(DateTime64(3, 'UTC')),
    valid_to Nullable(DateTime64(3, 'UTC')),
    sell_per_min Decimal(18, 4),
    connection_fee Decimal(18, 4),
    min_charge Decimal(18, 4),
    short_call_fee Decimal(18, 4),
    increments String,
    free_s UInt32,
    buy_per_min Decimal(18, 4),
    buy_connection_fee Decimal(18, 4),
    buy_increments String,
    rounding LowCardinality(String),
    decimals UInt32,
    currency LowCardinality(String)
)
ENGINE = ReplacingMergeTree
ORDER BY (version, plan, prefix, line);

CREATE TABLE IF NOT EXISTS tariff_alerts
(
    alert_id String,
    pbx_id LowCardinality(String),
    scope LowCardinality(String),
    key String,
    hour DateTime64(3, 'UTC'),
    kind LowCardinality(String),
    threshold Decimal(18, 4),
    calls UInt32,
    cost Decimal(18, 4),
    currency LowCardinality(String),
    categories String,
    call_id String,
    at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (pbx_id, hour, alert_id)
SETTINGS non_replicated_deduplication_window = 1000;
