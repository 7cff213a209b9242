"""``signalbox up``: the whole system on one machine, seeded, with one real request.

One process tree on localhost: the simulated upstream (in process), the control
plane (a child, which starts embedded PostgreSQL under its data dir) and one
data-plane node (a child that gets only the control plane's address and its
trust key, exactly as a node on another machine would). The control plane is
seeded through its own Admin API, never behind its back.

:class:`LocalStack` is the reusable part: the benchmark builds the same tree,
with each process pinned to a core.

The package::

    stack.py  LocalStack and StackConfig: start, seed, watch and stop the process tree
    demo.py   what is seeded: the demo tenant, key, provider, models and policy
    cli.py    the ``signalbox up`` command (it also registers ``signalbox simulator``)
"""

from signalbox.ports import free_port
from signalbox.shell.up.cli import COMMAND, register, run
from signalbox.shell.up.demo import (
    DEMO_MODELS,
    DEMO_POLICY,
    DEMO_PROMPT,
    PROVIDER,
    PROVIDER_TYPE,
    TENANT,
    DemoModel,
)
from signalbox.shell.up.stack import NODE_ID, LocalStack, StackConfig, StackError

__all__ = [
    "COMMAND",
    "DEMO_MODELS",
    "DEMO_POLICY",
    "DEMO_PROMPT",
    "NODE_ID",
    "PROVIDER",
    "PROVIDER_TYPE",
    "TENANT",
    "DemoModel",
    "LocalStack",
    "StackConfig",
    "StackError",
    "free_port",
    "register",
    "run",
]
