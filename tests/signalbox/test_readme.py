"""The README lists every setting: a flag added anywhere without documenting it fails here.

Regenerate the table after adding a setting::

    .venv/bin/python -m tests.signalbox.test_readme
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from signalbox import settings
from signalbox.shell.cli import REGISTRARS, build_parser

README = Path(__file__).resolve().parents[2] / "README.md"
START = "<!-- settings-table:start (generated: python -m tests.signalbox.test_readme) -->"
END = "<!-- settings-table:end -->"


def key(setting: settings.Setting) -> str:
    """The start of a setting's row: what must match exactly on every machine."""
    return f"| `{setting.command}` | `{setting.flag}` | `{setting.env}` |"


def registered() -> list[settings.Setting]:
    """Every setting, in the order ``signalbox --help`` lists the commands, then each
    command's own order: a command line that names one command (``main`` in this
    process) registers that command's settings first."""
    build_parser()  # registers every subcommand's settings
    order = {name: i for i, (names, _) in enumerate(REGISTRARS) for name in names}
    return sorted(settings.REGISTRY.values(), key=lambda s: order[s.command.split()[0]])


def render_table() -> str:
    """The Markdown table of every registered setting (``registered``)."""
    rows = [
        "| Command | Flag | Environment variable | Default | Meaning |",
        "|---------|------|----------------------|---------|---------|",
    ]
    host = socket.gethostname()
    for s in registered():
        # Some defaults derive from the machine (node-<hostname>); the README shows the rule.
        shown = str(s.default).replace(host, "<hostname>") if host else str(s.default)
        default = "" if s.default in (None, "", False) else f"`{shown}`"
        meaning = s.help.replace("|", "\\|")
        rows.append(f"{key(s)} {default} | {meaning} |")
    return "\n".join(rows)


def current_table(text: str) -> str:
    start, end = text.index(START) + len(START), text.index(END)
    return text[start:end].strip()


def test_every_setting_is_in_the_readme() -> None:
    build_parser()
    text = README.read_text()
    assert settings.REGISTRY, "no settings registered"

    missing = [s.env for s in settings.REGISTRY.values() if f"`{s.env}`" not in text]

    assert not missing, f"README.md lacks {missing}; run: .venv/bin/python -m tests.signalbox.test_readme"


def test_the_settings_table_is_current() -> None:
    documented = [row.rsplit("|", 3)[0] + "|" for row in current_table(README.read_text()).splitlines()[2:]]
    keys = [key(s) for s in registered()]

    # Same settings in the same order; defaults and meanings may differ per machine or wording.
    assert [" ".join(r.split()) for r in documented] == [" ".join(r.split()) for r in keys], (
        "README.md's settings table is stale; run: .venv/bin/python -m tests.signalbox.test_readme"
    )


def test_the_table_does_not_depend_on_which_command_registered_first() -> None:
    # A fresh interpreter: in this one every command may be registered already.
    probe = (
        "from signalbox.shell import cli; cli.build_parser(['up']); cli.build_parser(['controlplane']); "
        "from tests.signalbox import test_readme as t; "
        "assert t.render_table() == t.current_table(t.README.read_text()), 'order changed'"
    )
    subprocess.run([sys.executable, "-c", probe], cwd=README.parent, check=True, timeout=60)


def test_readme_starts_with_the_two_commands() -> None:
    head = README.read_text().split("\n## ", 1)[0]

    assert "make run" in head
    assert "make test" in head


def write_table() -> None:
    text = README.read_text()
    start, end = text.index(START) + len(START), text.index(END)
    README.write_text(f"{text[:start]}\n{render_table()}\n{text[end:]}")


if __name__ == "__main__":
    write_table()
    sys.exit(0)
