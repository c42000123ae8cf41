"""The composition root: the `pbxpipe` command (cli.py, app.py, cmd_*.py, demo.py), the
operations endpoint its processes serve (ops.py) and the in-process wiring (pipeline.py)."""
