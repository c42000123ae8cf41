#!/bin/sh
# Runs once, on ClickHouse's first start (/docker-entrypoint-initdb.d): the panel API's user
# (`pbxpipe api`). It reads the call history and writes only what the API records itself: who
# opened which recording, and its API keys. It holds the role pbxpipe_tenant_reader, so the row
# policies of the store's migrations show it only the tenant its query names. The tables and the
# policies come later, with the migrations; ClickHouse grants by name, so the grants apply once
# they exist.
set -eu
clickhouse client --user "$CLICKHOUSE_USER" --password "$CLICKHOUSE_PASSWORD" --multiquery <<SQL
CREATE ROLE IF NOT EXISTS pbxpipe_tenant_reader;
CREATE USER IF NOT EXISTS pbxpipe_api IDENTIFIED WITH sha256_password BY '${CLICKHOUSE_API_PASSWORD}';
GRANT SELECT ON ${CLICKHOUSE_DB}.* TO pbxpipe_api;
GRANT INSERT ON ${CLICKHOUSE_DB}.recording_access TO pbxpipe_api;
GRANT INSERT ON ${CLICKHOUSE_DB}.api_keys TO pbxpipe_api;
GRANT pbxpipe_tenant_reader TO pbxpipe_api;
SET DEFAULT ROLE pbxpipe_tenant_reader TO pbxpipe_api;
SQL
