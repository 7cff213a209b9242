"""What a request cost: usage priced with the chosen model's per-million-token prices."""

from __future__ import annotations

from dataclasses import dataclass

from dataplane.chat import Usage
from dataplane.config.model import ModelConfig

_MTOK = 1_000_000


@dataclass(frozen=True, slots=True)
class Cost:
    """Nano-USD, per component."""

    input_nanos: int
    output_nanos: int

    @property
    def total_nanos(self) -> int:
        return self.input_nanos + self.output_nanos


NO_COST = Cost(0, 0)


def cost_of(model: ModelConfig, usage: Usage | None) -> Cost:
    """Nano-USD from the model's per-million-token prices; cached input at its own price
    (the input price when the model has none), rounded half up per component."""
    if usage is None:
        return NO_COST
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    cached_price = model.cached_input_price_nanos_per_mtok or model.input_price_nanos_per_mtok
    input_nanos = (
        (usage.input_tokens - cached) * model.input_price_nanos_per_mtok + cached * cached_price + _MTOK // 2
    ) // _MTOK
    output_nanos = (usage.output_tokens * model.output_price_nanos_per_mtok + _MTOK // 2) // _MTOK
    return Cost(input_nanos, output_nanos)
