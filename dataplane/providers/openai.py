"""OpenAI's chat-completions and embeddings API.

Settings: none. ``base_url`` defaults to ``https://api.openai.com/v1``; the
credential is sent as ``Authorization: Bearer``.
"""

from __future__ import annotations

from typing import ClassVar

from .openai_wire import OpenAIDialect, OpenAIFamilyAdapter


class OpenAIAdapter(OpenAIFamilyAdapter):
    """OpenAI itself: ``max_completion_tokens`` (``max_tokens`` is deprecated), usage in streams."""

    type_name: ClassVar[str] = "openai"
    default_base_url: ClassVar[str] = "https://api.openai.com/v1"
    dialect: ClassVar[OpenAIDialect] = OpenAIDialect()
