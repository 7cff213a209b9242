"""``bench/metrics_overhead.py`` compares a node with metrics on against one without: the
variants must really start the node with and without ``--metrics-listen``."""

from __future__ import annotations

import sys
from pathlib import Path

from signalbox.shell.up import StackConfig

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_the_variants_turn_the_nodes_metrics_on_and_off(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH.parent))
    try:
        from bench.metrics_overhead import _metrics, parse_args
    finally:
        sys.path.remove(str(BENCH.parent))
    args = parse_args(["--rounds", "1"])
    _metrics(False)(args)
    assert args.metrics is False
    off = StackConfig.ephemeral(tmp_path, dataplane_metrics_listen=None)
    assert off.dataplane_metrics_listen is None
    _metrics(True)(args)
    assert args.metrics is True
    on = StackConfig.ephemeral(tmp_path)
    # On, on a port the node binds itself (picked here, it could be taken before the node binds).
    assert on.dataplane_metrics_listen == "127.0.0.1:0"
