"""The sinks: call records into ClickHouse (clickhouse-connect; chDB embedded by default) and
objects into storage; the store process on Kafka (stage.py). queries.py and schema.py are pure."""
