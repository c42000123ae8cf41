"""Retention policies and jobs: expiry, export, erasure (see issue 5; nothing here yet)."""
