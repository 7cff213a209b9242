"""``python -m signalbox``: the same command as the ``signalbox`` console script (the shell's)."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    try:
        from signalbox.shell.cli import main
    except KeyboardInterrupt:  # Ctrl-C while the CLI itself is imported: as in main()
        sys.exit(130)
    sys.exit(main())
