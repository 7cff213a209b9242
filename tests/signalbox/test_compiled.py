"""The modules compiled with mypyc (pyproject.toml, ``[tool.signalbox] compiled``): the suite runs
them compiled, a stale or stray extension is named, and compiled or not they give the same
answers (the pure-Python build, ``SIGNALBOX_COMPILE=0``, is a supported install)."""

from __future__ import annotations

import importlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from controlplane.evidence import records
from dataplane.chat import ChatRequest, Message, Role, TextPart, ToolCall
from dataplane.config.model import TenantConfig
from dataplane.governance import detect
from dataplane.governance.detectors import BUILT_IN
from dataplane.governance.enforce import Governance
from dataplane.snapshot.compile import compile_payload
from tests import compiled
from tests.dataplane.conftest import snapshot
from tests.dataplane.governance import corpus_report

PROFILE: dict[str, Any] = {
    "input": {
        "rules": [
            {"name": "email", "detector": "email", "action": "mask"},
            {"name": "phone", "detector": "phone", "action": "redact"},
            {"name": "card", "detector": "payment_card", "action": "redact"},
            {"name": "iban", "detector": "iban", "action": "classify", "data_class": "confidential"},
            {"name": "iban-mask", "detector": "iban", "action": "mask"},
            {"name": "id", "detector": "national_id", "action": "redact"},
            {"name": "credential", "detector": "credential", "action": "redact"},
            {"name": "ip", "detector": "ip_address", "action": "flag"},
        ]
    }
}

# In a child process: the listed modules imported from their sources, then ``answers()``.
PURE = """
import importlib.abc, importlib.util, json, sys
sources = json.loads(sys.argv[1])
class Sources(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        return importlib.util.spec_from_file_location(name, sources[name]) if name in sources else None
sys.meta_path.insert(0, Sources())
from tests.signalbox import test_compiled
for name in sources:
    assert sys.modules[name].__spec__.origin.endswith(".py"), name
print(json.dumps(test_compiled.answers()))
"""


def texts() -> list[str]:
    """Every corpus text, each corpus glued into longer texts, and the governance bench's prompts."""
    corpus = [
        sample["text"]
        for path in sorted(corpus_report.CORPUS.glob("*.jsonl"))
        for sample in corpus_report.load(path.stem)
    ]
    rng = random.Random(20261130)
    glued = [" ".join(rng.sample(corpus, 12)) for _ in range(150)]
    paragraph = (
        "Send the order to jane.doe@example.com. Payment to DE89370400440532013000, card "
        "4111 1111 1111 1111, call +49 30 901820, host 192.0.2.17, é€ 2026-11-30 10:15. "
    )
    return corpus + glued + [paragraph * n for n in (3, 12, 90)]


def options() -> dict[str, list[dict[str, Any]]]:
    """Each built-in detector's option sets: its defaults where it has them, and the corpus's."""
    found: dict[str, list[dict[str, Any]]] = {name: [] for name in BUILT_IN}
    for name in BUILT_IN:
        path = corpus_report.CORPUS / f"{name}.jsonl"
        seen = [{}] + ([s.get("options", {}) for s in corpus_report.load(name)] if path.exists() else [])
        for opts in seen:
            if opts in found[name]:
                continue
            try:
                detect.build(name, opts)
            except detect.DetectorConfigError:
                continue
            found[name].append(opts)
    return found


def answers() -> dict[str, Any]:
    """What the detectors find in ``texts()`` and what the input step does to requests made of them."""
    sample = texts()
    spans = {
        f"{name} {json.dumps(opts, sort_keys=True)}": [
            [[s.start, s.end, s.kind] for s in detect.build(name, opts).find(text)] for text in sample
        ]
        for name, option_sets in options().items()
        for opts in option_sets
    }
    snap = snapshot(1, "http://127.0.0.1:9")
    snap.governance_profiles.add(id="gp", tenant_id="", version=1, document_json=json.dumps(PROFILE))
    config = compile_payload(snap.SerializeToString())
    governance = Governance()
    steps = []
    for i in range(0, len(sample) - 2, 3):
        body = ChatRequest(
            (
                Message(Role.SYSTEM, (TextPart(sample[i]),)),
                Message(Role.USER, (TextPart(sample[i + 1]), TextPart(sample[i + 2]))),
                Message(
                    Role.ASSISTANT, tool_calls=(ToolCall("c1", "f", json.dumps({"note": sample[i + 1]})),)
                ),
            )
        )
        actions: list[dict[str, Any]] = []
        governor = governance.begin(config, TenantConfig("t-acme", "acme"))
        assert governor is not None
        out = governor.govern_input(body, actions)
        assert isinstance(out, ChatRequest)
        steps.append(
            {
                "actions": actions,
                "texts": [[p.text for p in m.content if isinstance(p, TextPart)] for m in out.messages],
                "arguments": [c.arguments for m in out.messages for c in m.tool_calls],
                "data_class": governor.data_class.name,
            }
        )
    return {"spans": spans, "steps": steps}


def test_the_suite_runs_the_listed_modules_compiled() -> None:
    """``make test`` compiles them (``make native``); ``SIGNALBOX_COMPILE=0`` is pure Python."""
    pure = os.environ.get("SIGNALBOX_COMPILE") == "0"
    for path in compiled.listed():
        origin = importlib.import_module(compiled.module_name(path)).__spec__.origin
        assert origin is not None
        assert origin.endswith(".py" if pure else ".so"), (path, origin)
    # A Cython module has no source Python can import: without its extension, its twin runs.
    assert compiled.cython_listed() == ["controlplane/evidence/_rows.pyx"]
    assert (records._rows is None) == pure


def test_compiled_and_pure_python_give_the_same_answers() -> None:
    sources = {compiled.module_name(p): str(compiled.ROOT / p) for p in compiled.listed()}
    result = subprocess.run(
        [sys.executable, "-c", PURE, json.dumps(sources)],
        cwd=compiled.ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    pure = json.loads(result.stdout)
    mine = json.loads(json.dumps(answers()))
    assert pure["spans"].keys() == mine["spans"].keys()
    for key in mine["spans"]:
        assert pure["spans"][key] == mine["spans"][key], key
    assert pure["steps"] == mine["steps"]
    # The sample is worth comparing: every detector finds something, every action is taken.
    assert all(any(found) for found in mine["spans"].values())
    taken = {a["action"] for step in mine["steps"] for a in step["actions"]}
    assert taken >= {"mask", "redact", "classify", "flag"}


def _tree(tmp_path: Path, modules: list[str]) -> Path:
    (tmp_path / "pyproject.toml").write_text(f"[tool.signalbox]\ncompiled = {json.dumps(modules)}\n")
    for module in ("dataplane/a.py", "dataplane/b.py"):
        (tmp_path / module).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / module).write_text("")
    return tmp_path


def _touch(path: Path, when: float) -> None:
    path.write_bytes(b"")
    os.utime(path, (when, when))


def test_a_pure_checkout_is_not_stale(tmp_path: Path) -> None:
    assert compiled.stale(_tree(tmp_path, ["dataplane/a.py"])) == []


def test_an_up_to_date_build_is_not_stale(tmp_path: Path) -> None:
    root = _tree(tmp_path, ["dataplane/a.py"])
    later = (root / "dataplane/a.py").stat().st_mtime + 10
    _touch(root / "dataplane/_native__mypyc.cpython-311-x86_64-linux-gnu.so", later)
    _touch(root / "dataplane/a.cpython-311-x86_64-linux-gnu.so", later)
    assert compiled.stale(root) == []


@pytest.mark.parametrize(
    ("modules", "shared_offset", "extensions", "problem"),
    [
        (["dataplane/a.py"], -10, ["a"], "dataplane/a.py changed after it was compiled"),
        (
            ["dataplane/a.py"],
            10,
            ["a", "b"],
            "dataplane/b.cpython-311-x86_64-linux-gnu.so is compiled but its module is not listed",
        ),
        (["dataplane/a.py", "dataplane/b.py"], 10, ["a"], "dataplane/b.py is listed but not compiled"),
        (["dataplane/a.py"], None, ["a"], "dataplane/_native__mypyc*.so is missing"),
    ],
)
def test_a_stale_or_stray_extension_is_named(
    tmp_path: Path, modules: list[str], shared_offset: float | None, extensions: list[str], problem: str
) -> None:
    root = _tree(tmp_path, modules)
    now = (root / "dataplane/a.py").stat().st_mtime
    if shared_offset is not None:
        _touch(root / "dataplane/_native__mypyc.cpython-311-x86_64-linux-gnu.so", now + shared_offset)
    for name in extensions:
        _touch(root / f"dataplane/{name}.cpython-311-x86_64-linux-gnu.so", now + 10)
    assert problem in compiled.stale(root)


def test_a_cython_module_changed_after_it_was_compiled_is_named(tmp_path: Path) -> None:
    root = _tree(tmp_path, ["dataplane/a.py"])
    with (root / "pyproject.toml").open("a") as f:
        f.write('cython = ["dataplane/c.pyx"]\n')
    now = (root / "dataplane/a.py").stat().st_mtime
    for name in ("_native__mypyc", "a"):
        _touch(root / f"dataplane/{name}.cpython-311-x86_64-linux-gnu.so", now + 10)
    _touch(root / "dataplane/c.pyx", now)
    assert compiled.stale(root) == ["dataplane/c.pyx is listed but not compiled"]
    _touch(root / "dataplane/c.cpython-311-x86_64-linux-gnu.so", now + 10)
    assert compiled.stale(root) == []
    _touch(root / "dataplane/c.pyx", now + 20)
    assert compiled.stale(root) == ["dataplane/c.pyx changed after it was compiled"]
