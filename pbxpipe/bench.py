"""In-process stage benchmark: ``python -m pbxpipe.bench [--calls N]``.

Renders a seeded simulator capture, then measures each stage alone on it and prints figures:
framing (events/s), enrich (events/s, memory per open call), store (rows/s into chDB).
"""

from __future__ import annotations

import argparse
import gc
import logging
import tempfile
import time
import tracemalloc

from contracts import kafka as k
from contracts.envelope import (
    LINKEDID_HEADERS,
    Envelope,
    envelope_decoder,
    envelope_encoder,
)
from contracts.logs import configure_logging
from contracts.profile import DEFAULT_PROFILE
from contracts.records import CallRecord
from enrich.calls import CallBuilder
from enrich.events import DECODED_KINDS
from enrich.partition import PartitionEnricher
from ingest.framing import AmiFramer
from simulator.server import SimulatorConfig, render
from store.clickhouse import ClickHouseStore
from store.schema import batch_token


def open_call_memory(envelopes: list[Envelope]) -> tuple[int, int]:
    """Bytes held for open calls as the enrich stage holds them, and how many calls are open.

    Every event but the Hangups is folded, so every call stays open. Each envelope goes through
    msgpack as on the raw topic, so the strings and floats a call keeps are its own allocations
    (the capture's frames share them: they would not be counted), and through a
    PartitionEnricher with its message key, so the commit bookkeeping is counted too.
    """
    pe = PartitionEnricher(lambda pbx_id: CallBuilder(DEFAULT_PROFILE, pbx_id=pbx_id))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for offset, env in enumerate(envelopes):
        if env.name == "Hangup":
            continue
        if env.name in DECODED_KINDS:  # the others leave nothing behind
            env = envelope_decoder.decode(envelope_encoder.encode(env))
        linkedid = next((v for h in LINKEDID_HEADERS if (v := env.get(h))), "")
        pe.feed(offset, k.split_key(k.call_key(env.pbx_id, linkedid))[1], env)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held, pe.open_calls


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

    held, open_calls = open_call_memory(envelopes)
    print(f"enrich memory  : {held / max(open_calls, 1):>10,.0f} bytes per open call "
          f"({open_calls} open, commit bookkeeping included)")

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
