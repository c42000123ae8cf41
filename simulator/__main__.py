"""``python -m simulator``: serve the simulated PBX on AMI, or write its calls to a file."""

from __future__ import annotations

import argparse
import json
import sys

from contracts.errors import ConfigError
from contracts.logs import configure_logging
from simulator.server import SimulatorConfig, render, run_simulator


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    p.add_argument("--port", type=int, default=5038)
    p.add_argument("--username", default="pbxpipe")
    p.add_argument("--secret", default="pbxpipe")
    p.add_argument("--calls", type=int, default=0, help="total calls (0: forever)")
    p.add_argument("--cps", type=float, default=2.0, help="calls placed per real second, on average")
    p.add_argument("--speed", type=float, default=1.0, help="virtual seconds per real second")
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mix", default="", help="kind=weight,… (default: a business PBX)")
    p.add_argument("--talk-time", default="exp:90")
    p.add_argument("--ring-time", default="uniform:2:15")
    p.add_argument("--start-time", type=float, default=0.0, help="virtual epoch of the day (0: now)")
    p.add_argument("--load-curve", default="office", help="office | flat | 24 weights by local hour")
    p.add_argument("--timezone", default="Europe/Warsaw", help="the PBX's local time, for the load curve")
    p.add_argument("--customers", type=int, default=120, help="size of the customer book (0: none)")
    p.add_argument("--customer-skew", type=float, default=0.5, help="Zipf exponent of customer popularity")
    p.add_argument("--unknown-callers", type=float, default=0.1, help="share of inbound calls from one-off numbers")
    p.add_argument("--callback-probability", type=float, default=0.6, help="a missed call is called back")
    p.add_argument("--redial-probability", type=float, default=0.15, help="a missed caller calls again")
    p.add_argument("--callback-delay", default="exp:1800", help="virtual seconds after the missed call")
    p.add_argument("--redial-delay", default="exp:600")
    p.add_argument("--manifest", default="", help="JSON Lines of the expected call records")
    p.add_argument("--render", default="", help="write the raw AMI stream to this file and exit")
    a = p.parse_args(argv)
    from simulator.scenarios import parse_mix

    try:
        config = SimulatorConfig(
            port=a.port, username=a.username, secret=a.secret, total_calls=a.calls, calls_per_second=a.cps,
            speed=a.speed, max_concurrency=a.concurrency, seed=a.seed, mix=parse_mix(a.mix) if a.mix else {},
            talk_time=a.talk_time, ring_time=a.ring_time, start_time=a.start_time, manifest_path=a.manifest,
            load_curve=a.load_curve, timezone=a.timezone, customers=a.customers, customer_skew=a.customer_skew,
            unknown_callers=a.unknown_callers, callback_probability=a.callback_probability,
            redial_probability=a.redial_probability, callback_delay=a.callback_delay, redial_delay=a.redial_delay,
        )
        if a.render:
            out = render(config)
            with open(a.render, "wb") as f:
                f.write(out.capture)
            if a.manifest:
                with open(a.manifest, "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(c, ensure_ascii=False) + "\n" for c in out.calls)
            return 0
        configure_logging()
        run_simulator(config)
    except (ConfigError, ValueError) as e:
        print(f"simulator: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
