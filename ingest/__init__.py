"""AMI listener: Asterisk Manager Interface bytes -> typed envelopes (the pipeline source)."""
