"""Run Alembic programmatically: the control plane upgrades to head on start.

The scripts are the package ``controlplane.migrations`` (``migrations/`` in the
repository, mapped by setup.py), found through the installed package so a wheel
install needs neither a checkout nor alembic.ini.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from controlplane.db.session import normalize_url

MIGRATIONS_PACKAGE = "controlplane.migrations"


def migrations_dir() -> Path:
    """The directory of the installed ``controlplane.migrations`` package (Alembic needs a path)."""
    location = Path(str(resources.files(MIGRATIONS_PACKAGE)))
    if not (location / "env.py").is_file():
        raise RuntimeError(f"{MIGRATIONS_PACKAGE} has no env.py at {location}: a broken install")
    return location


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at the migrations and ``url``; no alembic.ini needed."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("file_template", "%%(year)d-%%(month).2d-%%(day).2d_%%(slug)s_%%(rev)s")
    # ConfigParser interpolation would choke on '%' in URLs.
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def upgrade_head(url: str) -> None:
    """Bring the database to the newest revision. Blocking; run it in a thread."""
    command.upgrade(alembic_config(url), "head")


def heads() -> tuple[str, ...]:
    return tuple(ScriptDirectory.from_config(alembic_config("postgresql://x/x")).get_heads())


def current_revision(url: str) -> str | None:
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
