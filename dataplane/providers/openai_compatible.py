"""Servers that speak OpenAI's chat completions: vLLM, TGI, LM Studio, Ollama's ``/v1``, our simulator.

``base_url`` is the server's OpenAI root (for example ``http://host:8000/v1``).
The credential is optional (sent as Bearer when present).

Settings:

- ``stream_usage`` (``"true"``): send ``stream_options.include_usage``;
  set ``"false"`` for a server that rejects ``stream_options``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from dataplane.chat import ChatRequest

from .openai_wire import OpenAIDialect, OpenAIFamilyAdapter


class OpenAICompatibleAdapter(OpenAIFamilyAdapter):
    """Self-hosted OpenAI-shaped servers.

    ``max_tokens`` (which they all know), no ``developer`` role, and no explicit
    ``tool_choice: "auto"`` (vLLM rejects it without special flags; it is the default).
    Image URLs are passed through: Ollama's ``/v1`` accepts only ``data:`` URLs,
    so callers routing images there should send inline images.
    """

    type_name: ClassVar[str] = "openai_compatible"
    dialect: ClassVar[OpenAIDialect] = OpenAIDialect(
        max_tokens_field="max_tokens", developer_role=False, explicit_auto_tool_choice=False
    )

    def chat_body(self, model: str, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        body = super().chat_body(model, request, stream=stream)
        if self.config.settings.get("stream_usage", "true").lower() == "false":
            body.pop("stream_options", None)
        return body


class SimulatedAdapter(OpenAICompatibleAdapter):
    """The built-in simulator speaks OpenAI chat completions."""

    type_name: ClassVar[str] = "simulated"
