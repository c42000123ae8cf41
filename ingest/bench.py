"""Framing throughput on a raw AMI capture: ``python -m ingest.bench [capture] [chunk_size…]``.

Prints frames/s for a cold header-line memo (the first pass over the capture) and a warm one
(the same capture again), best of a few runs, per read size.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ingest import framing
from ingest.framing import AmiFramer

DEFAULT_CAPTURE = Path(__file__).parent.parent / "tests/fixtures/asterisk/ami_raw.log"


def frames_per_second(data: bytes, chunk_size: int) -> tuple[int, float]:
    start = time.perf_counter()
    framer = AmiFramer()
    n = 0
    for i in range(0, len(data), chunk_size):
        n += len(framer.feed(data[i : i + chunk_size]))
    return n, n / (time.perf_counter() - start)


def main(argv: list[str]) -> None:
    path = Path(argv[0]) if argv else DEFAULT_CAPTURE
    sizes = [int(a) for a in argv[1:]] or [65536, 8192, 2048]
    data = path.read_bytes()
    for size in sizes:
        cold, warm = 0.0, 0.0
        for _ in range(7):
            framing._LINES.reset()
            n, rate = frames_per_second(data, size)
            cold = max(cold, rate)
            warm = max(warm, frames_per_second(data, size)[1])
        print(f"reads of {size:>6} B: {n} frames, cold {cold:,.0f}/s, warm {warm:,.0f}/s")


if __name__ == "__main__":
    main(sys.argv[1:])
