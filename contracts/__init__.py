"""Shared contracts of pbx-pipeline: event envelope, records, profile, settings, errors, logs, metrics.

Depends on nothing else in the project; every other package depends on it.
"""
