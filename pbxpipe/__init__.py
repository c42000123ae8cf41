"""The composition root: the `pbxpipe` command wires ingest, enrich and store."""
