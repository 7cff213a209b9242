"""The fuzz suite's hypothesis profiles and its node.

``ci`` (the default) keeps the suite to about 30 seconds; ``HYPOTHESIS_PROFILE=nightly``
runs many more examples. The node runs on its own event loop in a thread, so the
property tests (plain functions, as hypothesis wants them) call it over a blocking
gRPC channel, exactly as an outside caller would.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, settings

from dataplane.app import DataPlaneNode
from dataplane.config.model import Scope
from dataplane.node_settings import NodeSettings
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.shell.simulator import Simulator
from tests.controlplane.conftest import Admin
from tests.dataplane.conftest import envelope, snapshot, write_public_key
from tests.fixtures.postgres import RunningControlPlane

T = TypeVar("T")

_COMMON: dict[str, Any] = {
    "deadline": None,
    "database": None,
    "print_blob": True,
    "suppress_health_check": [
        # The admin suite's examples share one real control plane per test, on purpose.
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
}
settings.register_profile("ci", max_examples=600, **_COMMON)
settings.register_profile("nightly", max_examples=20_000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ADMIN_EXAMPLES = 40 if settings.default.max_examples <= 600 else 2_000
"""Admin examples each cost a real database round trip: fewer per test than the node's."""
NODE_FACING_EXAMPLES = 25 if settings.default.max_examples <= 600 else 2_000
"""Node-facing examples (tests/fuzz/test_node_facing_fuzz.py) each cost a few database round
trips and a legitimate call after them: the fewest per test, to keep the module to a minute."""
LONG_PROFILE_TIMEOUT_S = 4 * 3600
"""A test's time limit under a profile longer than ``ci``: the suite's 120 s (pyproject.toml)
is ``ci``'s, and 20,000 examples of one test take ~15 minutes."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if settings.default.max_examples <= 600:
        return
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.timeout(LONG_PROFILE_TIMEOUT_S))


@dataclass
class FuzzNode:
    address: str
    data_dir: Path


class _LoopThread:
    """An event loop running in a thread; ``run`` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-node", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.loop.shutdown_asyncgens())
        self.run(self.loop.shutdown_default_executor())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzNode]:
    """A real node serving snapshot 1 against the simulator, on its own loop and thread."""
    tmp = tmp_path_factory.mktemp("fuzz")
    key = Ed25519PrivateKey.generate()
    trust = write_public_key(tmp / "trust.pem", key)
    loop = _LoopThread()
    simulator = Simulator()
    loop.run(simulator.start())
    node = DataPlaneNode(
        NodeSettings(
            listen="127.0.0.1:0",
            trust_keys=(trust,),
            node_id="node-fuzz",
            data_dir=tmp / "node",
            drain_seconds=1.0,
            scope=Scope(deployment="test"),
        )
    )
    try:
        loop.run(node.start())
        result = loop.run(node.store.apply(envelope(snapshot(1, simulator.base_url), key)))
        assert result.accepted, result.reason
        yield FuzzNode(node.address, tmp / "node")
    finally:
        loop.run(node.stop(0))
        loop.run(simulator.stop())
        loop.close()


@pytest.fixture
async def seeded(control_plane: RunningControlPlane) -> AsyncIterator[Admin]:
    """A control plane with tenant ``acme``, provider ``sim``, models ``small`` and ``large``,
    and acme's policy: what the Admin API fuzz modules start from."""
    async with grpc.aio.insecure_channel(control_plane.address) as channel:
        admin = Admin(admin_pb2_grpc.AdminServiceStub(channel), control_plane.metadata)
        await admin.seed()
        await admin.ApplyPolicy(
            admin_pb2.ApplyPolicyRequest(
                tenant="acme", document='{"default_model": "small", "allowed_models": ["small", "large"]}'
            )
        )
        yield admin
