"""`pbxpipe replay` + `pbxpipe calls` on the real capture: the stored history equals expected_calls.json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import CAPTURE, FIXTURES

pytestmark = pytest.mark.integration

PBXPIPE = [sys.executable, "-c", "from pbxpipe.cli import main; main()"]


def pbxpipe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PBXPIPE, *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PBXPIPE_LOG_FORMAT": "json"})


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> tuple[str, list[dict]]:
    dsn = f"chdb:///{tmp_path_factory.mktemp('replay')}"
    for _ in range(2):  # replaying twice must leave the same rows
        done = pbxpipe("replay", str(CAPTURE / "ami_raw.log"), "--pbx-profile",
                       str(FIXTURES / "asterisk_profile.toml"), "--clickhouse", dsn)
        assert done.returncode == 0, done.stderr
        assert "26 calls" in done.stdout
    shown = pbxpipe("calls", "--clickhouse", dsn, "--format", "json")
    assert shown.returncode == 0, shown.stderr
    return dsn, json.loads(shown.stdout)


def test_every_captured_call_is_stored_once_as_expected(replayed, expected_calls):
    """All 26 calls, one row each, fields equal to expected_calls.json (times within 1 s)."""
    _, rows = replayed
    by_linkedid = {r["linkedid"]: r for r in rows}
    assert len(rows) == len(by_linkedid) == len(expected_calls) == 26
    for name, want in expected_calls.items():
        got = by_linkedid[want["linkedid"]]
        for f in ("direction", "caller", "called", "answered", "first_answered_by",
                  "last_answered_by", "status"):
            assert got[f] == want[f], (name, f)
        for f in ("start", "end", "duration_s", "wait_s", "talk_s"):
            if want[f] is None:
                assert got[f] is None, (name, f)
            else:
                assert got[f] == pytest.approx(want[f], abs=1.0), (name, f)
        assert got["disposition"] == want["asterisk_last_disposition"], name
        assert got["call_id"] == f"acme:{want['linkedid']}"


def test_replay_twice_leaves_no_duplicate_rows(replayed):
    """The second replay's batches carry the same dedup tokens: not even unmerged copies remain."""
    dsn, _ = replayed
    script = (
        "import clickhouse_connect, sys;"
        f"c = clickhouse_connect.get_client(dsn={dsn!r});"
        "print(c.query('SELECT count() FROM calls').result_rows[0][0],"
        " c.query('SELECT count() FROM call_legs').result_rows[0][0])"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["26", "34"], out.stderr


def test_calls_filters_by_type_and_extension(replayed, expected_calls):
    """The history's filters, through the command line."""
    dsn, _ = replayed
    n_missed = sum(1 for x in expected_calls.values() if x["status"] == "missed")
    missed = json.loads(pbxpipe("calls", "--clickhouse", dsn, "--type", "missed",
                                "--format", "json").stdout)
    assert len(missed) == n_missed and {r["status"] for r in missed} == {"missed"}
    ext = json.loads(pbxpipe("calls", "--clickhouse", dsn, "--extension", "103",
                             "--format", "json").stdout)
    assert ext and all("103" in (r["caller"], r["called"], r["last_answered_by"],
                                 r["first_answered_by"], *r["extensions_rang"]) for r in ext)
    bad = pbxpipe("calls", "--clickhouse", dsn, "--since", "yesterday")
    assert bad.returncode != 0 and "not an ISO date" in bad.stderr


BAD_FRAMES = (
    b"Event: Newchannel\r\nthis line has no colon\r\n\r\n",
    b"Event: NewCallerid\r\nCallerIDName: \xc5\x81ukasz \xff\xfe\r\nLinkedid: 1.1\r\n\r\n",
    b"Event: VarSet\r\nValue: " + b"x" * (2 << 20) + b"\r\n\r\n",
    b"Event: Hangup\r\nChannel: PJSIP/101-00000001\r\nUniqueid: 9.9\r\nCause: 16\r\n\r\n",
    b"Event: TotallyNewEvent\r\nFoo: bar\r\n\r\n",
)


def test_bad_input_is_quarantined_and_the_rest_still_flows(tmp_path, expected_calls):
    """Malformed, non-UTF-8, oversized and unroutable frames land in the quarantine table with
    their reason; an unknown event is ignored; every real call around them is still stored."""
    raw = (CAPTURE / "ami_raw.log").read_bytes()
    middle = raw.index(b"\r\n\r\n", len(raw) // 2) + 4
    capture = tmp_path / "bad.log"
    capture.write_bytes(raw[:middle] + b"".join(BAD_FRAMES) + raw[middle:])
    dsn = f"chdb:///{tmp_path / 'ch'}"
    done = pbxpipe("replay", str(capture), "--pbx-profile", str(FIXTURES / "asterisk_profile.toml"),
                   "--clickhouse", dsn)
    assert done.returncode == 0, done.stderr
    assert "26 calls" in done.stdout and "4 quarantined" in done.stdout
    script = (
        "import clickhouse_connect, json;"
        f"c = clickhouse_connect.get_client(dsn={dsn!r});"
        "print(json.dumps(c.query('SELECT reason, length(raw) FROM quarantine ORDER BY reason')"
        ".result_rows))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    rows = json.loads(out.stdout)
    assert [r[0] for r in rows] == ["invalid_utf8", "malformed_frame", "missing_linkedid",
                                    "oversized_frame"]
    assert all(r[1] > 0 for r in rows)
