"""The shell loads the control plane only when its extra is installed, and hides no other error."""

from __future__ import annotations

import argparse
import subprocess
import sys
from types import ModuleType

import pytest

from signalbox.shell import cli, extras


def commands(parser: argparse.ArgumentParser) -> set[str]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


def _import_fails_with(monkeypatch: pytest.MonkeyPatch, error: ImportError) -> None:
    def fake(name: str) -> ModuleType:
        assert name == "controlplane.cli"
        raise error

    monkeypatch.setattr(extras, "import_module", fake)


def test_a_full_install_has_every_command() -> None:
    parser = cli.build_parser()

    assert {"dataplane", "controlplane", "admin", "infer", "up", "simulator"} <= commands(parser)
    assert parser.epilog is None


@pytest.mark.parametrize(
    "missing", ["sqlalchemy", "sqlalchemy.ext.asyncio", "alembic", "psycopg", "pgserver"]
)
def test_a_missing_controlplane_dependency_leaves_out_only_the_controlplane(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    _import_fails_with(monkeypatch, ModuleNotFoundError(f"No module named {missing!r}", name=missing))

    parser = cli.build_parser()

    names = commands(parser)
    assert "controlplane" not in names
    # The admin CLI is a pure gRPC client: it works without the control plane's dependencies.
    assert {"dataplane", "admin", "infer", "up", "simulator"} <= names
    assert parser.epilog is not None
    assert "signalbox[controlplane]" in parser.epilog


def test_an_uninstalled_extra_is_seen_without_importing_the_controlplane(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_find_spec = extras.find_spec
    monkeypatch.setattr(
        extras, "find_spec", lambda name: None if name == "pgserver" else real_find_spec(name)
    )
    _import_fails_with(monkeypatch, ImportError("controlplane.cli must not be imported"))

    assert extras.missing_controlplane_extra() == ["pgserver"]
    assert "controlplane" not in commands(cli.build_parser())


@pytest.mark.parametrize(
    "error",
    [
        ModuleNotFoundError("No module named 'controlplane.nope'", name="controlplane.nope"),
        ModuleNotFoundError("No module named 'yaml'", name="yaml"),
        ImportError("cannot import name 'thing' from 'controlplane.app'", name="controlplane.app"),
    ],
    ids=["own-module", "base-dependency", "import-error"],
)
def test_any_other_import_error_propagates(monkeypatch: pytest.MonkeyPatch, error: ImportError) -> None:
    _import_fails_with(monkeypatch, error)

    with pytest.raises(ImportError) as raised:
        cli.build_parser()
    assert raised.value is error


def test_a_named_command_loads_only_its_own_module() -> None:
    # A fresh interpreter: this one has every plane imported already.
    probe = (
        "import sys; from signalbox.shell import cli; "
        "parser = cli.build_parser(['admin', 'tenants', 'list']); "
        "print(sorted(parser._subparsers._group_actions[0].choices)); "
        "print(sorted({m.partition('.')[0] for m in sys.modules} & {'controlplane', 'aiohttp', 'sqlalchemy'})); "
        "print('dataplane.serve_cli' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.splitlines() == ["['admin']", "[]", "False"], result.stdout + result.stderr


@pytest.mark.parametrize(
    "argv",
    [[], ["--help"], ["-h", "admin"], ["bogus"], ["--bogus"]],
    ids=["none", "help", "help-first", "unknown", "flag"],
)
def test_help_no_command_or_an_unknown_one_lists_every_command(argv: list[str]) -> None:
    assert {"dataplane", "controlplane", "admin", "infer", "evidence", "up", "simulator"} == commands(
        cli.build_parser(argv)
    )


def test_a_named_but_uninstalled_controlplane_lists_the_rest_with_the_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _import_fails_with(monkeypatch, ModuleNotFoundError("No module named 'pgserver'", name="pgserver"))

    parser = cli.build_parser(["controlplane", "serve"])

    assert "controlplane" not in commands(parser)
    assert "admin" in commands(parser)
    assert parser.epilog is not None
    assert "signalbox[controlplane]" in parser.epilog
