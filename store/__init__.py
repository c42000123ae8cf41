"""Sinks: call records into ClickHouse (clickhouse-connect; chDB embedded by default)."""
