"""The compiled, immutable configuration a node serves from.

Built from a verified snapshot payload in one place (``dataplane.config.compile``)
and swapped atomically: a request reads one ``RuntimeConfig`` from start to end.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING

from dataplane.scopes import UNRESTRICTED, KeyScope

if TYPE_CHECKING:
    from dataplane.routing.policy import CompiledPolicy


class Capability(StrEnum):
    """Mirrors ``signalbox.api.common.v1.Capability``; the names policies use."""

    CHAT = "chat"
    TOOLS = "tools"
    VISION = "vision"
    JSON_MODE = "json_mode"
    JSON_SCHEMA = "json_schema"
    STREAMING = "streaming"
    EMBEDDINGS = "embeddings"


class DataClass(IntEnum):
    """Mirrors ``DataClassification``; ordered, so ``>=`` compares sensitivity."""

    UNSPECIFIED = 0
    PUBLIC = 1
    INTERNAL = 2
    CONFIDENTIAL = 3
    RESTRICTED = 4


class DeploymentMode(StrEnum):
    CLOUD = "cloud"
    ON_PREM = "on-prem"
    AIR_GAPPED = "air-gapped"


class ProviderLocation(StrEnum):
    PUBLIC_CLOUD = "public_cloud"
    ON_PREM = "on_prem"
    SITE = "site"


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a credential lives on the node: an env var or a file. Never the value."""

    env: str = ""
    file: str = ""

    def __bool__(self) -> bool:
        return bool(self.env or self.file)


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    id: str
    name: str
    type: str
    base_url: str
    credential: SecretRef = SecretRef()
    settings: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 60.0
    location: ProviderLocation = ProviderLocation.PUBLIC_CLOUD
    site: str = ""
    region: str = ""
    jurisdiction: str = ""


@dataclass(frozen=True, slots=True)
class DeploymentConfig:
    id: str
    provider_id: str
    upstream_model: str
    weight: int = 1


@dataclass(frozen=True, slots=True)
class ModelConfig:
    id: str
    alias: str
    capabilities: frozenset[Capability]
    context_window: int = 0
    max_output_tokens: int = 0
    input_price_nanos_per_mtok: int = 0
    output_price_nanos_per_mtok: int = 0
    cached_input_price_nanos_per_mtok: int = 0
    deployments: tuple[DeploymentConfig, ...] = ()
    certified_for: frozenset[DataClass] = frozenset()
    certifications: frozenset[str] = frozenset()
    typical_latency_ms: int = 0
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TenantConfig:
    id: str
    name: str
    tier: str = ""
    active: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    id: str
    tenant_id: str
    name: str = ""
    scopes: frozenset[str] = frozenset()
    expires_at: float | None = None
    """Unix seconds, or None for no expiry."""
    scope: KeyScope = UNRESTRICTED
    """``scopes`` parsed once at compile (``KeyScope.parse``): what requests check."""


@dataclass(frozen=True, slots=True)
class Scope:
    deployment: str = ""
    node_group: str = ""
    site: str = ""


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    version: int
    payload_sha256: bytes
    created_at: float
    expires_at: float | None
    scope: Scope
    tenants: Mapping[str, TenantConfig]
    api_keys: Mapping[bytes, ApiKeyEntry]
    """Keyed by the SHA-256 of the key's secret."""
    providers: Mapping[str, ProviderConfig]
    """Keyed by provider id."""
    models: Mapping[str, ModelConfig]
    """Keyed by model alias."""
    policies: Mapping[str, CompiledPolicy]
    """Keyed by tenant id; ``""`` is the platform default."""

    @property
    def hash_hex(self) -> str:
        return self.payload_sha256.hex()
