"""``python -m signalbox.shell.simulator serve ...``: the simulator alone, without loading either plane."""

import sys

from signalbox.shell.simulator.cli import main

sys.exit(main())
