"""Each stage alone, in process, on a seeded simulator capture (``python -m bench`` runs it).

Prints framing (events/s), enrich (events/s, memory per open call), store (rows/s into chDB).
"""

from __future__ import annotations

import gc
import tracemalloc

from bench.harness import chdb_store, figure, frame, quiet_logs, stopwatch
from contracts import kafka as k
from contracts.envelope import (
    LINKEDID_HEADERS,
    Envelope,
    envelope_decoder,
    envelope_encoder,
)
from contracts.profile import DEFAULT_PROFILE
from contracts.records import CallRecord
from enrich.calls import CallBuilder
from enrich.events import DECODED_KINDS
from enrich.partition import PartitionEnricher
from store.schema import batch_token

STORE_BATCH = 10_000  # call rows per insert


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


def run(data: bytes) -> None:
    """The in-process figures of a capture."""
    frames: list[object] = []
    n, seconds = frame(data, into=frames)
    figure("ingest framing", n / seconds, "events/s")

    envelopes = [Envelope("pbx1", 0, i, 0.0, f) for i, f in enumerate(frames)
                 if isinstance(f, tuple)]
    builder = CallBuilder(DEFAULT_PROFILE)
    gc.collect()
    outputs = []
    with stopwatch() as t:
        for env in envelopes:
            outputs += builder.feed(env)
        outputs += builder.flush()
    records = [o for o in outputs if isinstance(o, CallRecord)]
    figure("enrich", len(envelopes) / t.seconds, "events/s", f" ({len(records)} calls)")

    held, open_calls = open_call_memory(envelopes)
    figure("enrich memory", held / max(open_calls, 1), "bytes per open call",
           f" ({open_calls} open, commit bookkeeping included)")

    quiet_logs()
    with chdb_store() as store:
        store.write_calls(records[:100], "warm-up")  # the engine's first insert costs ~0.25 s
        with stopwatch() as t:
            for i in range(0, len(records), STORE_BATCH):
                rows = records[i : i + STORE_BATCH]
                store.write_calls(rows, batch_token("calls", rows))
        figure("store (chDB)", len(records) / t.seconds, "call rows/s")
