"""The shell: the ``signalbox`` command and the tools people run from it.

    cli.py         assembles the command from each plane's subcommands and the tools below
    client_cli.py  ``signalbox infer``: one request to a node's Infer API
    admin_cli/     ``signalbox admin ...``: the Admin API from a shell (a pure gRPC client)
    up/            ``signalbox up``: the whole system locally, seeded, with one demo request
    simulator/     ``signalbox simulator serve``: the simulated OpenAI-compatible upstream

The shell sits on top: it may import the foundation (``signalbox.api``,
``signalbox.settings``, ...), ``dataplane`` and ``controlplane``; none of them
imports it. The control plane is optional here: an install without the
``[controlplane]`` extra has no ``signalbox controlplane`` commands.
"""
