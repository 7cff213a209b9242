"""Registers every built-in adapter. Importing this module is enough.

The registry is a table from provider type to adapter class, never a chain of
``if`` statements on provider names.
"""

from __future__ import annotations

from collections.abc import Mapping

from .anthropic import AnthropicAdapter
from .azure_openai import AzureOpenAIAdapter
from .base import AdapterFactory, register
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

for _type_name, _factory in BUILTIN_ADAPTERS.items():
    register(_type_name, _factory)
