"""A PBX's business hours, in its own time zone: what the silence alert watches."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contracts.config import load_settings
from contracts.errors import ConfigError
from contracts.hours import parse_business_hours


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_hours_are_the_pbxs_local_time_across_daylight_saving() -> None:
    """Warsaw opens at 07:00 local: 06:00 UTC in winter, 05:00 UTC in summer (DST began on
    Sunday 2026-03-29); 17:00 local is closed."""
    hours = parse_business_hours("Mon-Fri 07:00-17:00", "Europe/Warsaw")
    assert not hours.open_at(utc(2026, 3, 27, 5, 59))  # Friday, 06:59 CET
    assert hours.open_at(utc(2026, 3, 27, 6, 0))  # 07:00 CET
    assert hours.open_at(utc(2026, 3, 27, 15, 59))  # 16:59 CET
    assert not hours.open_at(utc(2026, 3, 27, 16, 0))  # 17:00 CET
    assert not hours.open_at(utc(2026, 3, 30, 4, 59))  # Monday, 06:59 CEST
    assert hours.open_at(utc(2026, 3, 30, 5, 0))  # 07:00 CEST
    assert not hours.open_at(utc(2026, 3, 28, 10, 0))  # Saturday


def test_several_spans_ranges_over_the_week_end_and_the_days_end() -> None:
    hours = parse_business_hours("Mon-Fri 08:00-18:00, Sat 09:00-13:00, fri-mon 22:00-24:00",
                                 "UTC")
    assert hours.open_at(utc(2026, 11, 28, 12, 59))  # Saturday
    assert not hours.open_at(utc(2026, 11, 28, 13, 0))
    assert hours.open_at(utc(2026, 11, 29, 23, 59))  # Sunday, in Fri-Mon
    assert not hours.open_at(utc(2026, 11, 25, 23, 0))  # Wednesday night
    assert hours.open_at(utc(2026, 11, 30, 22, 0))  # Monday, in Fri-Mon
    assert not parse_business_hours("", "UTC").open_at(utc(2026, 11, 25, 12, 0))  # never open


@pytest.mark.parametrize(("hours", "zone", "says"), [
    ("Mon-Fri 07:00-17:00", "Europe/Nowhere", "unknown time zone 'Europe/Nowhere'"),
    ("Mon-Fri", "UTC", "is not 'Mon-Fri 07:00-17:00'"),
    ("Mon-Fry 07:00-17:00", "UTC", "unknown day"),
    ("Mon 07:00-25:00", "UTC", "'25:00' is not a time of day"),
    ("Mon 17:00-07:00", "UTC", "ends before it starts"),
])
def test_bad_business_hours_are_a_config_error_naming_the_settings(hours: str, zone: str,
                                                                   says: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(environ={"PBXPIPE_BUSINESS_HOURS": hours, "PBXPIPE_PBX_TIMEZONE": zone})
    assert says in str(e.value)
    assert "PBXPIPE_BUSINESS_HOURS" in str(e.value) and "PBXPIPE_PBX_TIMEZONE" in str(e.value)


def test_ingest_tells_prometheus_whether_its_pbx_is_open_at_each_scrape() -> None:
    """The listener's gauge is read at scrape time, from its clock, in the PBX's zone."""
    from contracts.metrics import REGISTRY
    from ingest.ami import AmiListener

    now = [utc(2026, 11, 25, 13, 59).timestamp()]  # Wednesday, 08:59 in New York
    settings = load_settings({"pbx_id": "ny", "pbx_timezone": "America/New_York",
                              "business_hours": "Mon-Fri 09:00-17:00"}, environ={})
    AmiListener(settings, lambda e: None, lambda q: None, clock=lambda: now[0])

    def gauge() -> float | None:
        return REGISTRY.get_sample_value("pbxpipe_ingest_pbx_open", {"pbx": "ny"})

    assert gauge() == 0.0
    now[0] += 60
    assert gauge() == 1.0
