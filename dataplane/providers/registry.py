"""The adapter registry: a table from provider type to adapter class, never a chain
of ``if`` statements on provider names. Every built-in adapter is in it; a plug-in
adds its own with ``register``.
"""

from __future__ import annotations

from collections.abc import Mapping

from dataplane.config.model import ProviderConfig
from dataplane.upstream import UpstreamClient

from .anthropic import AnthropicAdapter
from .azure_openai import AzureOpenAIAdapter
from .base import AdapterFactory, ProviderAdapter
from .gemini import GeminiAdapter
from .mistral import MistralAdapter
from .ollama import OllamaAdapter
from .openai import OpenAIAdapter
from .openai_compatible import OpenAICompatibleAdapter, SimulatedAdapter

BUILTIN_ADAPTERS: Mapping[str, AdapterFactory] = {
    OpenAIAdapter.type_name: OpenAIAdapter,
    AnthropicAdapter.type_name: AnthropicAdapter,
    GeminiAdapter.type_name: GeminiAdapter,
    MistralAdapter.type_name: MistralAdapter,
    AzureOpenAIAdapter.type_name: AzureOpenAIAdapter,
    OllamaAdapter.type_name: OllamaAdapter,
    OpenAICompatibleAdapter.type_name: OpenAICompatibleAdapter,
    SimulatedAdapter.type_name: SimulatedAdapter,
}
"""Provider type (``ProviderConfig.type``) → adapter class."""

_REGISTRY: dict[str, AdapterFactory] = dict(BUILTIN_ADAPTERS)


def register(type_name: str, factory: AdapterFactory) -> None:
    """Make ``factory`` the adapter for providers of ``type_name``."""
    _REGISTRY[type_name] = factory


def adapter_types() -> frozenset[str]:
    return frozenset(_REGISTRY)


def build_adapter(config: ProviderConfig, client: UpstreamClient, credential: str | None) -> ProviderAdapter:
    try:
        factory = _REGISTRY[config.type]
    except KeyError:
        raise ValueError(f"unknown provider type {config.type!r}") from None
    return factory(config, client, credential)
