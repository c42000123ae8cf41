"""The source: Asterisk Manager Interface bytes -> frames, and the ingest process that sends them
to the raw topic (stage.py). framing.py and routing.py are pure."""
