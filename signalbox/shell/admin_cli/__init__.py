"""``signalbox admin --target ADDR --token TOKEN <resource> <verb>``: the Admin API from a shell.

Human-readable tables by default, ``--json`` for machines. A gRPC error becomes
one line on stderr and an exit code from ``EXIT_CODES``.

The package::

    parser.py    the command line: global options, one subcommand per resource and verb
    commands/    one coroutine per resource and verb, a module per resource family: request in,
                 Output back
    output.py    Output, the tables, one row per Admin API object, the route explanation
    run.py       the handler: channel, token, deadline, printing, exit codes
"""

from signalbox.shell.admin_cli.output import Output, explanation
from signalbox.shell.admin_cli.parser import COMMAND, register
from signalbox.shell.admin_cli.run import EXIT_CODES, admin_command

__all__ = ["COMMAND", "EXIT_CODES", "Output", "admin_command", "explanation", "register"]
