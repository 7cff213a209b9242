"""Building blocks for routing tests: registries, configs, a fake clock, adapter-backed attempts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from dataplane.chat import ChatRequest, ChatResponse, Message, Role, TextPart
from dataplane.config.model import (
    Capability,
    DataClass,
    DeploymentConfig,
    ModelConfig,
    ProviderConfig,
    ProviderLocation,
    RuntimeConfig,
    Scope,
    TenantConfig,
)
from dataplane.policy.compiler import compile_policy
from dataplane.providers.base import ProviderAdapter
from dataplane.routing.candidate import Candidate

HELLO = ChatRequest(messages=(Message(Role.USER, (TextPart("hello"),)),))
CHAT = frozenset({Capability.CHAT, Capability.STREAMING})


class FakeClock:
    """A monotonic clock that moves only when told to, or when the dispatcher sleeps on it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # still a suspension point, like a real sleep

    def advance(self, seconds: float) -> None:
        self.now += seconds


def provider(
    pid: str,
    base_url: str = "http://127.0.0.1:9/v1",
    *,
    location: ProviderLocation = ProviderLocation.PUBLIC_CLOUD,
    site: str = "",
    region: str = "eu-west-1",
    jurisdiction: str = "EU",
) -> ProviderConfig:
    return ProviderConfig(
        pid,
        pid,
        "openai_compatible",
        base_url,
        location=location,
        site=site,
        region=region,
        jurisdiction=jurisdiction,
    )


def model(
    alias: str,
    *deployments: tuple[str, str] | tuple[str, str, int],
    capabilities: Iterable[Capability] = CHAT,
    context_window: int = 128_000,
    max_output_tokens: int = 4096,
    input_price: int = 1_000_000_000,
    output_price: int = 2_000_000_000,
    certified_for: Iterable[DataClass] = (),
    typical_latency_ms: int = 0,
    attributes: Mapping[str, str] | None = None,
    upstream: str = "",
) -> ModelConfig:
    """``deployments`` are (deployment id, provider id[, weight]); the upstream model name
    defaults to the alias, so a simulator counts requests per alias."""
    return ModelConfig(
        id=f"id-{alias}",
        alias=alias,
        capabilities=frozenset(capabilities),
        context_window=context_window,
        max_output_tokens=max_output_tokens,
        input_price_nanos_per_mtok=input_price,
        output_price_nanos_per_mtok=output_price,
        deployments=tuple(
            DeploymentConfig(d[0], d[1], upstream or alias, d[2] if len(d) > 2 else 1) for d in deployments
        ),
        certified_for=frozenset(certified_for),
        typical_latency_ms=typical_latency_ms,
        attributes=dict(attributes or {}),
    )


def runtime(
    models: Iterable[ModelConfig],
    providers: Iterable[ProviderConfig],
    policies: Mapping[str, Mapping[str, Any]],
    tenants: Iterable[TenantConfig] = (),
) -> RuntimeConfig:
    """A config whose policies (tenant id → document; ``""`` the default) went through the compiler."""
    by_alias = {m.alias: m for m in models}
    compiled = {
        tid: compile_policy(doc, by_alias, policy_id=f"pol-{tid or 'default'}", tenant_id=tid, version=3)
        for tid, doc in policies.items()
    }
    return RuntimeConfig(
        version=1,
        payload_sha256=b"\0" * 32,
        created_at=0.0,
        expires_at=None,
        scope=Scope(),
        tenants={t.id: t for t in tenants},
        api_keys={},
        providers={p.id: p for p in providers},
        models=by_alias,
        policies=compiled,
    )


def completer(
    adapters: Mapping[str, ProviderAdapter], *, cap_s: float | None = None
) -> Callable[[Candidate, float], Awaitable[ChatResponse]]:
    """The attempt the pipeline would make: the candidate's provider adapter, within the time left."""

    async def attempt(candidate: Candidate, remaining: float) -> ChatResponse:
        timeout = remaining if cap_s is None else min(remaining, cap_s)
        adapter = adapters[candidate.provider.id]
        return await adapter.complete(candidate.deployment.upstream_model, HELLO, timeout=timeout)

    return attempt
