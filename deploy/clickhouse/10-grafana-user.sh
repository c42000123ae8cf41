#!/bin/sh
# Runs once, on ClickHouse's first start (/docker-entrypoint-initdb.d): a read-only user for
# Grafana that may still change max_execution_time (the plugin sets it on every query).
set -eu
clickhouse client --user "$CLICKHOUSE_USER" --password "$CLICKHOUSE_PASSWORD" --multiquery <<SQL
CREATE SETTINGS PROFILE IF NOT EXISTS grafana_readonly SETTINGS readonly = 1,
    max_execution_time = 60 CHANGEABLE_IN_READONLY;
CREATE USER IF NOT EXISTS grafana IDENTIFIED WITH sha256_password BY '${GRAFANA_CLICKHOUSE_PASSWORD}'
    SETTINGS PROFILE 'grafana_readonly';
GRANT SELECT ON ${CLICKHOUSE_DB}.* TO grafana;
SQL
