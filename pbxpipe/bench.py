"""In-process stage benchmark: ``python -m pbxpipe.bench [--calls N]``.

Renders a seeded simulator capture, then measures each stage alone on it and prints figures:
framing (events/s), enrich (events/s, memory per open call), store (rows/s into chDB).
"""

from __future__ import annotations

import argparse
import logging
import gc
import tempfile
import time
import tracemalloc

from contracts.envelope import Envelope
from contracts.logs import configure_logging
from contracts.profile import DEFAULT_PROFILE
from contracts.records import CallRecord
from enrich.calls import CallBuilder
from ingest.framing import AmiFramer
from simulator.server import SimulatorConfig, render
from store.clickhouse import ClickHouseStore
from store.schema import batch_token


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kafka", action="store_true",
                   help="also run the stages as processes through Kafka (a local Tansu broker "
                        "unless PBXPIPE_KAFKA_BOOTSTRAP is set), with ceilings and end-to-end latency")
    p.add_argument("--rate", type=float, default=500.0, help="end to end: new calls per second")
    p.add_argument("--seconds", type=float, default=20.0, help="end to end: how long to place calls")
    p.add_argument("--grace", type=float, default=0.3,
                   help="end to end: call_grace_s (the wait for late events after the last Hangup)")
    args = p.parse_args()

    t = time.perf_counter()
    rendered = render(SimulatorConfig(total_calls=args.calls, seed=args.seed,
                                      calls_per_second=50.0, max_concurrency=2000))
    data = rendered.capture
    print(f"capture: {args.calls} calls, {rendered.events} events, {len(data) / 1e6:.1f} MB "
          f"(rendered in {time.perf_counter() - t:.1f} s)")

    framer = AmiFramer()
    t = time.perf_counter()
    frames = []
    for i in range(0, len(data), 65536):
        frames.extend(framer.feed(data[i : i + 65536]))
    dt = time.perf_counter() - t
    print(f"ingest framing : {len(frames) / dt:>10,.0f} events/s")

    envelopes = [Envelope("pbx1", 0, n, 0.0, f) for n, f in enumerate(frames)
                 if isinstance(f, tuple)]
    builder = CallBuilder(DEFAULT_PROFILE)
    gc.collect()
    t = time.perf_counter()
    outputs = []
    for env in envelopes:
        outputs += builder.feed(env)
    outputs += builder.flush()
    dt = time.perf_counter() - t
    records = [o for o in outputs if isinstance(o, CallRecord)]
    print(f"enrich         : {len(envelopes) / dt:>10,.0f} events/s ({len(records)} calls)")

    # memory of open calls: fold every event but the Hangups, then measure the held state
    hangups = {"Hangup"}
    builder = CallBuilder(DEFAULT_PROFILE)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for env in envelopes:
        if env.name not in hangups:
            builder.feed(env)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    print(f"enrich memory  : {held / max(builder.open_calls, 1):>10,.0f} bytes per open call "
          f"({builder.open_calls} open)")

    configure_logging("console", level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        store = ClickHouseStore.connect(f"chdb:///{tmp}")
        store.migrate()
        store.write_calls(records[:100], "warm-up")  # the engine's first insert costs ~0.25 s
        t = time.perf_counter()
        batch = 10_000
        for i in range(0, len(records), batch):
            rows = records[i : i + batch]
            store.write_calls(rows, batch_token("calls", rows))
        dt = time.perf_counter() - t
        print(f"store (chDB)   : {len(records) / dt:>10,.0f} call rows/s")
        store.close()

    if args.kafka:
        from pbxpipe.bench_kafka import run_kafka_bench

        run_kafka_bench(data, rendered.events, args)


if __name__ == "__main__":
    main()
