"""Azure OpenAI: OpenAI's wire format behind per-deployment URLs.

``base_url`` is the resource endpoint (``https://NAME.openai.azure.com``).
Calls go to ``{base_url}/openai/deployments/{deployment}/chat/completions``
(or ``/embeddings``) with ``?api-version=``; the deployment is the model
name given per call unless the ``deployment`` setting pins one. The
credential is sent in the ``api-key`` header.

Settings:

- ``api_version`` (``"2024-10-21"``)
- ``deployment`` (optional): overrides the per-call model name.
"""

from __future__ import annotations

from typing import ClassVar

from .openai_wire import OpenAIDialect, OpenAIFamilyAdapter

DEFAULT_API_VERSION = "2024-10-21"


class AzureOpenAIAdapter(OpenAIFamilyAdapter):
    """Azure OpenAI Service deployments."""

    type_name: ClassVar[str] = "azure_openai"
    dialect: ClassVar[OpenAIDialect] = OpenAIDialect()

    def headers(self) -> dict[str, str]:
        return {"api-key": self._credential} if self._credential else {}

    def _deployment_url(self, model: str, operation: str) -> str:
        deployment = self.config.settings.get("deployment") or model
        return f"{self.base_url}/openai/deployments/{deployment}/{operation}"

    def chat_url(self, model: str) -> str:
        return self._deployment_url(model, "chat/completions")

    def embeddings_url(self, model: str) -> str:
        return self._deployment_url(model, "embeddings")

    def query(self) -> dict[str, str]:
        return {"api-version": self.config.settings.get("api_version", DEFAULT_API_VERSION)}

    def model_field(self, model: str) -> str | None:
        return None  # the deployment in the URL decides the model
