"""What ``signalbox up`` seeds: the demo tenant, its key, the simulator as a provider, two
models and a policy, all through the control plane's own Admin API.

Every step tolerates an earlier run over the same data dir: what exists is kept or updated.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable
from dataclasses import dataclass

import grpc

from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2

Metadata = tuple[tuple[str, str], ...]

TENANT = "demo"
PROVIDER = "simulator"
PROVIDER_TYPE = "simulated"
DEMO_PROMPT = "Hello from signalbox up!"


@dataclass(frozen=True, slots=True)
class DemoModel:
    """A model ``up`` registers, served by the simulator under the same name."""

    alias: str
    capabilities: tuple[common_pb2.Capability.ValueType, ...]
    input_price_nanos_per_mtok: int
    output_price_nanos_per_mtok: int


DEMO_MODELS = (
    DemoModel(
        "sim-fast", (common_pb2.CAPABILITY_CHAT, common_pb2.CAPABILITY_STREAMING), 150_000_000, 600_000_000
    ),
    DemoModel(
        "sim-smart",
        (common_pb2.CAPABILITY_CHAT, common_pb2.CAPABILITY_STREAMING, common_pb2.CAPABILITY_TOOLS),
        2_500_000_000,
        10_000_000_000,
    ),
)
DEMO_POLICY = {"default_model": "sim-fast", "allowed_models": [m.alias for m in DEMO_MODELS]}


async def create_tenant(admin: admin_pb2_grpc.AdminServiceAsyncStub, metadata: Metadata) -> None:
    """The demo tenant, unless it is there already."""
    await _already_exists(
        admin.CreateTenant(admin_pb2.CreateTenantRequest(name=TENANT, tier="demo"), metadata=metadata)
    )


async def create_api_key(admin: admin_pb2_grpc.AdminServiceAsyncStub, metadata: Metadata) -> str:
    """A new API key of the demo tenant; returns its secret."""
    key = await admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(tenant=TENANT, name=f"up-{int(time.time())}"), metadata=metadata
    )
    return key.secret


async def register_catalogue(
    admin: admin_pb2_grpc.AdminServiceAsyncStub, metadata: Metadata, simulator_url: str
) -> None:
    """The simulator as a provider, the demo models on it, and the demo tenant's policy."""
    provider = admin_pb2.Provider(
        name=PROVIDER,
        type=PROVIDER_TYPE,
        base_url=f"{simulator_url}/v1",
        timeout_ms=30_000,
        location=snapshot_pb2.PROVIDER_LOCATION_ON_PREM,
    )
    # The simulator's port may differ from the last run, so an existing provider is updated.
    if await _already_exists(
        admin.CreateProvider(admin_pb2.CreateProviderRequest(provider=provider), metadata=metadata)
    ):
        await admin.UpdateProvider(admin_pb2.UpdateProviderRequest(provider=provider), metadata=metadata)
    for demo in DEMO_MODELS:
        model = admin_pb2.Model(
            alias=demo.alias,
            capabilities=demo.capabilities,
            context_window=128_000,
            max_output_tokens=4_096,
            input_price_nanos_per_mtok=demo.input_price_nanos_per_mtok,
            output_price_nanos_per_mtok=demo.output_price_nanos_per_mtok,
            deployments=[admin_pb2.Deployment(provider=PROVIDER, upstream_model=demo.alias, weight=1)],
        )
        if await _already_exists(
            admin.CreateModel(admin_pb2.CreateModelRequest(model=model), metadata=metadata)
        ):
            await admin.UpdateModel(admin_pb2.UpdateModelRequest(model=model), metadata=metadata)
    await admin.ApplyPolicy(
        admin_pb2.ApplyPolicyRequest(tenant=TENANT, document=json.dumps(DEMO_POLICY)),
        metadata=metadata,
    )


def seeded_summary() -> str:
    """One line on what was seeded, for ``up``'s progress."""
    return (
        f'seeded tenant "{TENANT}", provider "{PROVIDER}", models '
        f"{', '.join(m.alias for m in DEMO_MODELS)}, policy default {DEMO_POLICY['default_model']}"
    )


async def _already_exists(create: Awaitable[object]) -> bool:
    """Await a Create call; True when the object was already there (``up`` over an old data dir)."""
    try:
        await create
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
        return True
    return False
