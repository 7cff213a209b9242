"""What the simulator does per model: the :class:`Behaviour` it is told, the counters it keeps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

DEFAULT_MODELS = ("sim-fast", "sim-smart", "sim-embed")
"""Models listed by ``GET /v1/models`` even before anyone asked for them."""

ANY_MODEL = "*"
"""Behaviour key that applies to every model without its own behaviour."""


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How the simulator treats requests for one model."""

    fail_status: int | None = None
    """HTTP status of a simulated failure; ``None`` never fails."""
    fail_rate: float = 1.0
    """Share of requests that fail when ``fail_status`` is set. Deterministic: with
    0.5 every second request fails, so tests never depend on chance."""
    fail_times: int | None = None
    """Fail only the next N requests (then succeed); ``None`` has no limit."""
    retry_after: float | None = None
    """Seconds sent in a ``Retry-After`` header with each failure."""
    latency_ms: float = 0.0
    """Delay before the response starts (time to first byte)."""
    chunk_delay_ms: float = 0.0
    """Delay between streamed chunks."""
    drop_after_chunks: int | None = None
    """Cut the connection after this many streamed chunks, with no ``[DONE]``: an upstream
    that dies mid-answer. ``None`` finishes every stream."""
    error_body: Any = None
    """JSON body of a failure; an OpenAI-style error object when ``None``."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Behaviour:
        """Build from a control-endpoint body, rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known - {"model"}
        if unknown:
            raise ValueError(f"unknown behaviour fields: {', '.join(sorted(unknown))}")
        values = {k: v for k, v in data.items() if k in known}
        behaviour = cls(**values)
        if behaviour.fail_status is not None and not 400 <= behaviour.fail_status <= 599:
            raise ValueError("fail_status must be an HTTP error status (400-599)")
        if not 0.0 <= behaviour.fail_rate <= 1.0:
            raise ValueError("fail_rate must be between 0 and 1")
        return behaviour


@dataclass(slots=True)
class ModelStats:
    """Requests one model received, by kind."""

    chat: int = 0
    stream: int = 0
    embeddings: int = 0
    failed: int = 0
    last_request: dict[str, Any] | None = field(default=None)
    """The body of the most recent request, as received."""

    @property
    def total(self) -> int:
        return self.chat + self.stream + self.embeddings


@dataclass(slots=True)
class ModelState:
    """One model's behaviour, counters and progress through its failures."""

    behaviour: Behaviour
    stats: ModelStats = field(default_factory=ModelStats)
    # Requests seen under the current behaviour: drives fail_rate and fail_times.
    seen: int = 0
    failures: int = 0
