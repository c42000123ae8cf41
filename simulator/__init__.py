"""A PBX simulator speaking AMI as Asterisk 22 does, for the demo, tests and benchmarks."""
