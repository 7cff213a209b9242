"""What a plane's process loads before it serves: only what every start needs.

A node or control plane starts hundreds of times in a fleet's life (restarts, scale-out, each
worker) and ~800 times in this suite. Each library below costs 0.08-0.2 s of CPU to import
and is needed only by an opt-in feature: aiohttp by ``--metrics-listen``, PyJWT by a snapshot
with JWT issuers (and the first JWT a caller sends), jsonschema by the process that checks
the schemas requests carry. httpx is not used by either plane at all (the upstream client's
failures are ``dataplane.upstream.errors``). Fresh interpreters: this one has them loaded.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

OPT_IN = ("aiohttp", "jwt", "jsonschema", "httpx")


def _loaded(module: str) -> list[str]:
    probe = (
        f"import sys, {module}; "
        f"print(' '.join(sorted({{m.partition('.')[0] for m in sys.modules}} & {set(OPT_IN)!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout.split()


@pytest.mark.parametrize("module", ["dataplane.app", "dataplane.serve_cli", "controlplane.app"])
def test_a_plane_loads_no_opt_in_library_before_it_is_asked_for(module: str) -> None:
    assert _loaded(module) == []


def test_each_opt_in_library_still_loads_where_its_feature_runs() -> None:
    # The lazy imports are real: the code paths that need them find them.
    probe = (
        "import sys\n"
        "from prometheus_client import CollectorRegistry\n"
        "from signalbox.metrics_http import render\n"
        "from dataplane.validation import _schema_problem\n"
        "from dataplane.snapshot.identities import parse_jwks\n"
        "render(CollectorRegistry(), '')\n"
        "assert _schema_problem({'type': 'object'}) is None\n"
        "assert 'not a valid JSON Schema' in _schema_problem({'type': 5})\n"
        "jwk = {'kty': 'EC', 'crv': 'P-256', 'kid': 'k1',"
        " 'x': 'f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU', 'y': 'x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0'}\n"
        "assert set(parse_jwks(__import__('json').dumps({'keys': [jwk]}))) == {'k1'}\n"
        "print(' '.join(sorted({m.partition('.')[0] for m in sys.modules} & {'aiohttp', 'jsonschema', 'jwt'})))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["aiohttp", "jsonschema", "jwt"]
