"""An S3 server for the tests: moto's, plus the presigned-URL expiry moto does not check.

Run as ``python tests/s3server.py PORT``, or by the tests with :func:`serving`. Real S3 and MinIO refuse a presigned request after
``X-Amz-Date + X-Amz-Expires``; moto serves it regardless, so a thin WSGI layer enforces it.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

EXPIRED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
           b"<Message>Request has expired</Message></Error>")


def expiring(app: Any) -> Any:
    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        q = parse_qs(environ.get("QUERY_STRING", ""))
        if "X-Amz-Expires" in q and "X-Amz-Date" in q:
            signed = datetime.strptime(q["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            if (datetime.now(UTC) - signed).total_seconds() > int(q["X-Amz-Expires"][0]):
                start_response("403 Forbidden", [("Content-Type", "application/xml")])
                return [EXPIRED]
        return app(environ, start_response)

    return wrapped


@contextlib.contextmanager
def serving() -> Iterator[str]:
    """This server in a child process on a free loopback port, for the tests: its URL."""
    from tests.net import free_port, wait_listening

    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        wait_listening(port, timeout=10)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def main() -> None:
    port = int(sys.argv[1])
    app = expiring(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
