"""Mistral's chat-completions and embeddings API (OpenAI-shaped, with its own rules).

``base_url`` defaults to ``https://api.mistral.ai/v1``; the credential is
sent as ``Authorization: Bearer``.

Differences handled here: ``max_tokens`` and ``random_seed``, no
``stream_options`` (Mistral sends usage in its last chunk anyway), "must
call a tool" is ``"any"``, embeddings take ``output_dimension``, error bodies
are flat (``{"object": "error", ...}``, or FastAPI's ``{"detail": [...]}`` on
422), and tool-call ids must match ``[a-zA-Z0-9]{9}``.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Mapping
from typing import ClassVar

from dataplane.chat import ChatRequest

from .openai_wire import OpenAIDialect, OpenAIFamilyAdapter

_MISTRAL_ID = re.compile(r"[a-zA-Z0-9]{9}")
_ALPHABET = string.ascii_letters + string.digits


def mistral_tool_id(call_id: str) -> str:
    """A stable ``[a-zA-Z0-9]{9}`` id for ``call_id``; ids already in that shape are kept.

    Derived from a hash rather than a counter so that every node, and every
    turn of a conversation replayed later, rewrites the same id the same way.
    """
    if _MISTRAL_ID.fullmatch(call_id):
        return call_id
    number = int.from_bytes(hashlib.sha256(call_id.encode()).digest()[:8], "big")
    chars = []
    for _ in range(9):
        number, digit = divmod(number, len(_ALPHABET))
        chars.append(_ALPHABET[digit])
    return "".join(chars)


class MistralAdapter(OpenAIFamilyAdapter):
    """Mistral La Plateforme."""

    type_name: ClassVar[str] = "mistral"
    default_base_url: ClassVar[str] = "https://api.mistral.ai/v1"
    dialect: ClassVar[OpenAIDialect] = OpenAIDialect(
        max_tokens_field="max_tokens",
        seed_field="random_seed",
        stream_usage=False,
        developer_role=False,
        required_tool_choice="any",
        dimensions_field="output_dimension",
    )

    def id_to_upstream(self, call_id: str) -> str:
        return mistral_tool_id(call_id)

    def ids_from_upstream(self, request: ChatRequest) -> Mapping[str, str]:
        ids: dict[str, str] = {}
        for message in request.messages:
            for call_id in (message.tool_call_id, *(call.id for call in message.tool_calls)):
                if call_id and (rewritten := mistral_tool_id(call_id)) != call_id:
                    ids[rewritten] = call_id
        return ids
