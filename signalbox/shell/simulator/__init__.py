"""The built-in simulated upstream: a real HTTP server speaking the OpenAI wire format.

It is the ``simulated`` provider of ``signalbox up``, the upstream of the
benchmarks, and the failing provider of retry and circuit-breaker tests, so it is:

- exact about the wire format: ``POST /v1/chat/completions`` (JSON, or SSE when
  ``stream`` is true, with a usage chunk only when ``stream_options.include_usage``),
  tool calls, ``POST /v1/embeddings`` (``float`` and ``base64``), ``GET /v1/models``;
- deterministic: the answer echoes the last user message, tool arguments are derived
  from the tool's JSON Schema, embeddings from a hash of the input, so tests can
  assert exact values;
- fast: one JSON parse and one write per request, no per-request logging;
- controllable: a :class:`Behaviour` per model (failures, ``Retry-After``, latency)
  set at start or at run time through ``POST /_sim/behaviour``, and per-model
  counters at ``GET /_sim/stats`` so tests can assert who received what.

Control endpoints (JSON bodies)::

    POST /_sim/behaviour  {"model": "m" | "*", "fail_status": 500, "fail_rate": 1.0,
                           "fail_times": 2, "retry_after": 2, "latency_ms": 50,
                           "chunk_delay_ms": 0, "drop_after_chunks": 3, "error_body": {...}}
    GET  /_sim/stats      {"total": n, "models": {"m": {"chat": .., "stream": ..,
                           "embeddings": .., "failed": .., "last_request": {...}}}}
    POST /_sim/reset      behaviours back to the start-up ones, counters to zero

The package::

    behaviour.py  Behaviour (what to do per model) and the per-model counters
    answers.py    what the simulated model says: completions, stream chunks, tool
                  arguments, token counts, embeddings
    app.py        Simulator: the aiohttp server, its endpoints and controls
    cli.py        ``signalbox simulator serve`` (also ``python -m signalbox.shell.simulator``)
"""

from signalbox.shell.simulator.answers import count_tokens, embedding_for
from signalbox.shell.simulator.app import Simulator
from signalbox.shell.simulator.behaviour import ANY_MODEL, DEFAULT_MODELS, Behaviour, ModelStats
from signalbox.shell.simulator.cli import main, parse_listen, register

__all__ = [
    "ANY_MODEL",
    "DEFAULT_MODELS",
    "Behaviour",
    "ModelStats",
    "Simulator",
    "count_tokens",
    "embedding_for",
    "main",
    "parse_listen",
    "register",
]
