"""What the evidence path adds to a request: the same node with evidence on, with evidence
written but not shipped (``write``: what an air-gapped node pays), and "built" with it off (``bench/evidence_off/sitecustomize.py`` replaces the one evidence step with
nothing), in one run.

Each round starts the ``signalbox up`` process tree (pinned like ``infer_load.py``: the node
on CPU 0, everything else on CPU 1) for one variant, and measures at each concurrency level
the node's latency and the upstream's alone (``direct``); rounds alternate on, off, on, off,
... so the machine's drift falls on both. Printed per variant and level: the p50 and p99 the
node adds over the upstream (median over the rounds) and the node's CPU per request; then
the difference on - off, which is the evidence path's cost per request.

    .venv/bin/python bench/evidence_overhead.py [--rounds 3] [--requests 2000] [--concurrency 1,8]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.variants import Variant, checked, compare, parser, run

WRITE_ENV = {"SIGNALBOX_EVIDENCE_SHIP_MS": str(3_600_000)}
"""``write``: records written and fsynced as ever, shipped only in full batches (2,000
records; an hour's wait after a partial one): the node's own cost of its evidence, as an
air-gapped node pays it, without the control plane's ingest competing for the cores."""
OFF_ENV = {
    "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parent / "evidence_off"), os.environ.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep),
    "SIGNALBOX_BENCH_EVIDENCE_OFF": "1",
}


def _variant(env: dict[str, str]) -> Variant:
    def configure(args: argparse.Namespace) -> None:
        args.dataplane_env = env

    return configure


async def bench(args: argparse.Namespace) -> int:
    medians = await compare(
        "evidence", {"on": _variant({}), "write": _variant(WRITE_ENV), "off": _variant(OFF_ENV)}, args
    )
    for variant, what in (("on", "evidence path"), ("write", "evidence write (no shipping)")):
        for concurrency in args.concurrency:
            on, off = medians[variant, concurrency], medians["off", concurrency]
            print(
                f"{what} at concurrency {concurrency}: +{(on[0] - off[0]) * 1000:.0f} us p50, "
                f"+{(on[1] - off[1]) * 1000:.0f} us p99, +{(on[2] - off[2]) * 1000:.0f} us node CPU per request "
                f"(medians of {args.rounds} rounds each)"
            )
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return checked(parser(__doc__), argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run(bench, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
