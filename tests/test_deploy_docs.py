"""docs/operations.md: the operator's guide lists every setting and the real AMI event filters."""

from __future__ import annotations

import re
from pathlib import Path

from contracts.config import Settings, env_name
from ingest.ami import EVENT_FILTER, MIXMONITOR_FILTER

ROOT = Path(__file__).parent.parent
GUIDE = (ROOT / "docs" / "operations.md").read_text()


def test_the_settings_table_lists_every_setting_and_nothing_else():
    """Each Settings field has a row (PBXPIPE_<FIELD>); a row never names a setting that does not
    exist. Regenerate: python -c "from pbxpipe.ops import settings_table as t; print(t())"."""
    block = GUIDE.split("<!-- settings:begin -->")[1].split("<!-- settings:end -->")[0]
    listed = set(re.findall(r"^\| `(PBXPIPE_\w+)`", block, re.M))
    expected = {env_name(f) for f in Settings.__struct_fields__}
    assert not expected - listed, f"missing from docs/operations.md: {sorted(expected - listed)}"
    assert not listed - expected, f"not settings: {sorted(listed - expected)}"


def test_the_manager_conf_example_uses_the_filters_ingest_installs():
    """The eventfilter lines are exactly the filters ingest asks Asterisk for."""
    assert f"eventfilter = {EVENT_FILTER}\n" in GUIDE
    assert f"eventfilter = {MIXMONITOR_FILTER}\n" in GUIDE


def test_the_guide_covers_what_operators_need_and_is_linked():
    """Diagram, settings, Asterisk rights, scaling, upgrades, backups; the README links it."""
    for heading in ("## How the parts fit", "## Settings", "## The Asterisk side", "## Scaling",
                    "## Upgrades and schema migrations", "## Backups"):
        assert heading in GUIDE
    assert "read = call,cdr,agent,dialplan" in GUIDE
    assert "docs/operations.md" in (ROOT / "README.md").read_text()
