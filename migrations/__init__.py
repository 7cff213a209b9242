"""Alembic migrations of the control plane's database.

Installed as the package ``controlplane.migrations`` (see setup.py), where
``controlplane.db.migrate`` finds them with importlib.resources.
"""
