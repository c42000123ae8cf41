"""What `pbxpipe reconcile` keeps of each run: the figures of one PBX and period, and the report."""

from __future__ import annotations

import msgspec


class ReconcileRun(msgspec.Struct, frozen=True, kw_only=True):
    """One comparison of the stored calls of a PBX with Asterisk's own records of a period."""

    run_id: str
    pbx_id: str
    run_at: float  # epoch seconds, UTC
    since: float  # the period compared: calls that started in [since, until)
    until: float
    source: str  # what Asterisk's side was read from (files, the raw topic)
    asterisk_calls: int  # calls in Asterisk's records
    stored_calls: int  # calls stored for the PBX in the period
    exact: int  # Asterisk's calls stored once, every compared field agreeing
    missing: int  # Asterisk's calls not stored
    phantoms: int  # stored calls Asterisk has no record of
    differing: int  # stored, but a field disagrees beyond the tolerance
    duplicates: int  # calls stored more than once (same call id in two rows under FINAL)
    rebuilt: int  # missing calls written from the CDR rows by this run
    rejected_rows: int  # rows of the sources that could not be read
    completeness: float  # exact / asterisk_calls (1 when Asterisk has none)
    report: str  # the whole report, JSON
