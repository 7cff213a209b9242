"""``python -m signalbox``: the same command as the ``signalbox`` console script."""

from __future__ import annotations

import sys

from signalbox.cli import main

if __name__ == "__main__":
    sys.exit(main())
