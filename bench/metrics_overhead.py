"""What Prometheus metrics cost a request: the same node with ``--metrics-listen`` (every
request observed, as ``signalbox up`` runs it) and without, in one run, rounds alternating
(``bench/variants.py``). Printed per variant and level: the p50 and p99 the node adds over
the upstream and the node's CPU per request (medians over the rounds); then the difference
in CPU per request, as a share of the node's CPU without metrics (target: under 3 %).

    .venv/bin/python bench/metrics_overhead.py [--rounds 3] [--requests 2000] [--concurrency 1,8]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.variants import Variant, checked, compare, parser, run


def _metrics(on: bool) -> Variant:
    def configure(args: argparse.Namespace) -> None:
        args.metrics = on

    return configure


async def bench(args: argparse.Namespace) -> int:
    medians = await compare("metrics", {"on": _metrics(True), "off": _metrics(False)}, args)
    for concurrency in args.concurrency:
        on, off = medians["on", concurrency], medians["off", concurrency]
        print(
            f"metrics at concurrency {concurrency}: {(on[2] - off[2]) * 1000:+.0f} us node CPU per request "
            f"({(on[2] - off[2]) / off[2] * 100:+.1f} %), {(on[0] - off[0]) * 1000:+.0f} us p50 "
            f"(medians of {args.rounds} rounds each)"
        )
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return checked(parser(__doc__), argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run(bench, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
