"""Reconciliation with Asterisk's own records: its CDR (and CEL) against the stored calls, and
the enrich rules re-run over the raw events against what is stored."""
