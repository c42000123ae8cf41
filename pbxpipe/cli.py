"""The `pbxpipe` command (placeholder until the stages are wired)."""


def main() -> None:
    raise SystemExit("not wired yet")
