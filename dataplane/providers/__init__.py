"""Provider adapters: one module per provider, all implementing ``ProviderAdapter``.

Build one with ``dataplane.providers.base.build_adapter(config, client, credential)``;
``ProviderConfig.type`` picks the adapter from the table in ``registry``:

==================  =====================  ===============================================
type                module                 ``base_url`` (default)
==================  =====================  ===============================================
openai              openai                 ``https://api.openai.com/v1``
azure_openai        azure_openai           ``https://NAME.openai.azure.com`` (required)
anthropic           anthropic              ``https://api.anthropic.com``
mistral             mistral                ``https://api.mistral.ai/v1``
gemini              gemini                 ``https://generativelanguage.googleapis.com/v1beta``
openai_compatible   openai_compatible      the server's OpenAI root, e.g. ``http://host:8000/v1``
simulated           openai_compatible      the simulator's OpenAI root
ollama              ollama                 ``http://localhost:11434`` (native ``/api/chat``)
==================  =====================  ===============================================

Each module's docstring lists its ``settings`` keys and translation policies.

Shared pieces, each written once:

- ``transport``: HTTP requests and streams over the node's ``UpstreamClient``,
  deadlines, and the ``SSEStreamDecoder`` base.
- ``classify``: every failure (HTTP status, provider error body, in-stream error
  event, transport exception) to one ``dataplane.errors.ProviderError`` class.
- ``sse``: the Server-Sent Events line decoder.
- ``openai_wire``: the OpenAI chat-completions format shared by openai, azure_openai,
  mistral and openai_compatible.
- ``wire``: translation steps common to all (system hoisting, tool-argument JSON,
  synthesized ids, images, the streamed tool-call indexer).
- ``credentials``: ``resolve_credential(SecretRef)``, used when a snapshot is applied.
"""
