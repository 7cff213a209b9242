"""``python -m signalbox``: the same command as the ``signalbox`` console script (the shell's)."""

from __future__ import annotations

import sys

from signalbox.shell.cli import main

if __name__ == "__main__":
    sys.exit(main())
