"""Registers every built-in adapter. Importing this module is enough.

The registry is a table from provider type to adapter class, never a chain of
``if`` statements on provider names.
"""

from __future__ import annotations
