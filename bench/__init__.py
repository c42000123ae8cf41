"""Benchmarks: commands that print figures; nothing in ``make test`` is timed.

``python -m bench`` runs what ``make bench`` runs: framing (:mod:`bench.framing`), each stage in
process (:mod:`bench.stages`) and, with ``--kafka``, each stage as its own process through Kafka
with ceilings (:mod:`bench.kafka_stages`) and the live path end to end (:mod:`bench.end_to_end`).
:mod:`bench.store_insert` compares insert paths. All share :mod:`bench.harness`. The pipeline never
imports this package (tests/test_layout.py checks it); it runs from the repository's root.
"""
