"""Call correlation: envelopes -> call records and legs. Pure: no I/O, no clock."""
