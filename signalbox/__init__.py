"""Signalbox: an open, model-agnostic AI orchestrator.

This package holds what both planes share and what neither owns: the
generated API code (``signalbox.api``), the ``signalbox`` command line, and the
simulated upstream used by ``signalbox up``, tests and benchmarks. It never
imports ``controlplane`` at module level, so a data-plane-only install works.
"""

__version__ = "0.1.0"
