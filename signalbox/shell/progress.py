"""Progress of long evidence operations (export, verify): records done, rate and time left on
a terminal, nothing at all when the output is piped or redirected."""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from tqdm import tqdm


def records_bar(total: int | None, what: str, stream: TextIO | None = None) -> Any:
    """A progress bar of records on ``stream`` (stderr), shown only when it is a terminal."""
    out = stream if stream is not None else sys.stderr
    shown = out.isatty()
    size = _size(out)
    return tqdm(
        total=total,
        desc=what,
        unit=" records",
        unit_scale=True,
        file=out,
        disable=not shown,
        ncols=size[0] if shown else None,
        nrows=size[1] if shown else None,
        leave=False,
        mininterval=0.2,
    )


def _size(out: TextIO) -> tuple[int, int]:
    # A terminal that reports no size (a bare pty: 0 x 0) would get no bar at all.
    try:
        columns, lines = os.get_terminal_size(out.fileno())
    except (OSError, ValueError):
        columns = lines = 0
    return columns or 80, lines or 24
