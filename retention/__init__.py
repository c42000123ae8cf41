"""Retention: recordings uploads, policies and jobs (expiry, legal hold, export, erasure)."""
