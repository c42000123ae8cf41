"""Framing throughput on a raw AMI capture: ``python -m bench.framing [capture] [chunk_size…]``.

Prints frames/s for a cold header-line memo (the first pass over the capture) and a warm one
(the same capture again), best of a few runs, per read size.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.harness import frame
from ingest import framing

DEFAULT_CAPTURE = Path(__file__).parent.parent / "tests/fixtures/asterisk/ami_raw.log"
DEFAULT_SIZES = (65536, 8192, 2048)
RUNS = 7


def frames_per_second(data: bytes, chunk_size: int) -> tuple[int, float]:
    n, seconds = frame(data, chunk_size)
    return n, n / seconds


def main(argv: list[str]) -> None:
    path = Path(argv[0]) if argv else DEFAULT_CAPTURE
    sizes = [int(a) for a in argv[1:]] or list(DEFAULT_SIZES)
    data = path.read_bytes()
    for size in sizes:
        cold, warm = 0.0, 0.0
        for _ in range(RUNS):
            framing._LINES.reset()  # the memo's cold state: a process's first pass
            n, rate = frames_per_second(data, size)
            cold = max(cold, rate)
            warm = max(warm, frames_per_second(data, size)[1])
        print(f"reads of {size:>6} B: {n} frames, cold {cold:,.0f}/s, warm {warm:,.0f}/s")


if __name__ == "__main__":
    main(sys.argv[1:])
