"""``python -m bench [--calls N] [--seed S] [--kafka] [--rate R] [--seconds S] [--grace G]``.

Framing on the recorded capture, then a seeded simulator capture of ``--calls`` calls through each
stage in process; with ``--kafka`` the stages as processes through Kafka (a local Tansu broker
unless PBXPIPE_KAFKA_BOOTSTRAP is set), with ceilings and end-to-end latency.
"""

from __future__ import annotations

import argparse

from bench import framing, stages
from bench.harness import render_capture


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
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

    framing.main([])
    capture = render_capture(args.calls, args.seed)
    stages.run(capture)
    if args.kafka:
        from bench.kafka_stages import run_kafka_bench

        run_kafka_bench(capture, args)


if __name__ == "__main__":
    main()
