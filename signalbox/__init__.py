"""Signalbox: an open, model-agnostic AI orchestrator.

This package is in two layers. The foundation is what both planes share and
neither owns: the generated API code (``signalbox.api``), settings
(``signalbox.settings``), the shared error base (``signalbox.errors``) and the
code generator. The shell (``signalbox.shell``) is the ``signalbox`` command
and the tools it runs; it sits on top of both planes, and nothing in the
foundation, ``dataplane`` or ``controlplane`` imports it.
"""

__version__ = "0.1.0"
