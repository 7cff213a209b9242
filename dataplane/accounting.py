"""What a request cost: usage priced with the chosen model's per-million-token prices."""

from __future__ import annotations

from dataclasses import dataclass

from dataplane.chat import Usage
from dataplane.config.model import ModelConfig

_MTOK = 1_000_000
CHARS_PER_TOKEN = 4
"""The node's rough measure of text it has not had counted (a provider's count is exact)."""


@dataclass(frozen=True, slots=True)
class Cost:
    """Nano-USD, per component."""

    input_nanos: int
    output_nanos: int

    @property
    def total_nanos(self) -> int:
        return self.input_nanos + self.output_nanos

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.input_nanos + other.input_nanos, self.output_nanos + other.output_nanos)


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


def reserved_input_tokens(estimated: int) -> int:
    """A request's input tokens as the node counts them before (or without) its provider's
    count: ``estimated`` (about ``CHARS_PER_TOKEN`` characters a token, never counted) and an
    eighth and a few tokens more, so the real count stays within it."""
    return estimated + estimated // 8 + 16


def output_cap(max_output_tokens: int | None, model: ModelConfig, embeds: bool, default: int) -> int:
    """The most output tokens a request may get from ``model``: its max tokens, else the
    model's maximum, else ``default``; an embedding has none."""
    if max_output_tokens is not None:
        return max_output_tokens
    if embeds:
        return 0
    return model.max_output_tokens or default


@dataclass(frozen=True, slots=True)
class Capped:
    """A provider's usage claim for one answer beyond what its request made possible, and
    what was counted instead (``capped_usage``)."""

    reported: Usage
    """What the provider claimed, verbatim."""
    counted: Usage
    """What is billed, budgeted and recorded: each field at most its cap."""
    max_input_tokens: int | None
    """The model's declared context window (None: undeclared, input not capped)."""
    max_output_tokens: int | None
    """The request's max tokens, else the model's declared maximum output (0 for an embedding;
    None: neither, output not capped)."""


def capped_usage(
    usage: Usage, model: ModelConfig, max_output_tokens: int | None, embeds: bool
) -> Capped | None:
    """``usage`` as a provider claimed it for an answer of ``model`` to a request with max tokens
    ``max_output_tokens``, capped at what that request made possible; None when within it.

    A provider's usage is untrusted input the node bills by: a claim of 999,999,999 output
    tokens for a short answer would drain a tenant's budget. Output tokens (reasoning included:
    ``max_tokens`` / ``max_completion_tokens`` bound both) are capped at the request's max
    tokens, else the model's declared maximum output, else not at all; an embedding generates
    none. Input tokens (and their cached and cache-write parts) are capped at the model's
    declared context window, when it declares one.
    """
    max_input = model.context_window or None
    max_output = (
        0
        if embeds
        else max_output_tokens
        if max_output_tokens is not None
        else model.max_output_tokens or None
    )
    counted = Usage(
        _at_most(usage.input_tokens, max_input),
        _at_most(usage.output_tokens, max_output),
        _at_most(usage.cached_input_tokens, max_input),
        _at_most(usage.cache_write_input_tokens, max_input),
        _at_most(usage.reasoning_output_tokens, max_output),
    )
    if counted == usage:
        return None
    return Capped(usage, counted, max_input, max_output)


def _at_most(count: int, cap: int | None) -> int:
    return count if cap is None or count <= cap else cap


def estimated_usage(input_tokens: int, output_chars: int) -> Usage:
    """Usage of an answer whose provider never reported it (a stream the caller or the
    upstream cut short, or one without a usage chunk): the provider was still paid for the
    input and what it generated, so that is counted, never nothing. ``input_tokens``: as
    ``reserved_input_tokens``; the output from the characters received, rounded up."""
    return Usage(input_tokens=input_tokens, output_tokens=-(-output_chars // CHARS_PER_TOKEN))


def added(usage: Usage | None, other: Usage) -> Usage:
    """Two answers' usage together (``usage`` None: ``other``)."""
    if usage is None:
        return other
    return Usage(
        usage.input_tokens + other.input_tokens,
        usage.output_tokens + other.output_tokens,
        usage.cached_input_tokens + other.cached_input_tokens,
        usage.cache_write_input_tokens + other.cache_write_input_tokens,
        usage.reasoning_output_tokens + other.reasoning_output_tokens,
    )


def most(usage: Usage | None, other: Usage) -> Usage:
    """The larger of two reports of one answer's usage, field by field (``usage`` None:
    ``other``). Every provider's stream reports usage cumulatively (a running snapshot, or one
    count at the end), so of an honest stream's reports the last is the largest; a later report
    lower than an earlier one contradicts it, and the budget keeps the higher count."""
    if usage is None:
        return other
    return Usage(
        max(usage.input_tokens, other.input_tokens),
        max(usage.output_tokens, other.output_tokens),
        max(usage.cached_input_tokens, other.cached_input_tokens),
        max(usage.cache_write_input_tokens, other.cache_write_input_tokens),
        max(usage.reasoning_output_tokens, other.reasoning_output_tokens),
    )
