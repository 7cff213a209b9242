"""Pure pieces of the request path: cost arithmetic and the status table."""

from __future__ import annotations

import grpc

from dataplane import errors
from dataplane.accounting import cost_of
from dataplane.chat import Usage
from dataplane.config.model import ModelConfig
from dataplane.outcome import to_status


def _model(input_price: int, output_price: int, cached_price: int = 0) -> ModelConfig:
    return ModelConfig(
        id="m",
        alias="m",
        capabilities=frozenset(),
        input_price_nanos_per_mtok=input_price,
        output_price_nanos_per_mtok=output_price,
        cached_input_price_nanos_per_mtok=cached_price,
    )


def test_cost_prices_cached_input_separately() -> None:
    # 2.50 USD / M input, 1.25 USD / M cached input, 10 USD / M output.
    model = _model(2_500_000_000, 10_000_000_000, 1_250_000_000)
    cost = cost_of(model, Usage(input_tokens=1000, output_tokens=200, cached_input_tokens=400))
    assert cost.input_nanos == 600 * 2_500 + 400 * 1_250
    assert cost.output_nanos == 200 * 10_000
    assert cost.total_nanos == cost.input_nanos + cost.output_nanos


def test_cost_without_a_cached_price_charges_the_input_price() -> None:
    cost = cost_of(_model(1_000_000_000, 0), Usage(input_tokens=10, cached_input_tokens=10))
    assert cost.input_nanos == 10_000


def test_cost_rounds_half_up_per_component_and_is_zero_without_usage() -> None:
    assert cost_of(_model(1, 1), Usage(input_tokens=500_000, output_tokens=499_999)).input_nanos == 1
    assert cost_of(_model(1, 1), Usage(input_tokens=500_000, output_tokens=499_999)).output_nanos == 0
    assert cost_of(_model(1, 1), None).total_nanos == 0


def test_every_error_maps_to_its_own_status() -> None:
    def leaves(cls: type[errors.SignalboxError]) -> list[type[errors.SignalboxError]]:
        return [cls, *(c for sub in cls.__subclasses__() for c in leaves(sub))]

    for cls in leaves(errors.SignalboxError):
        # Constructors differ per class; the table only reads the class and the message.
        error = cls.__new__(cls)
        error.message = f"{cls.__name__} happened"
        outcome = to_status(error)
        assert outcome.code is cls.status, cls
        assert outcome.message == error.message


def test_unexpected_errors_are_internal_without_their_text() -> None:
    outcome = to_status(RuntimeError("secret detail from a bug"))
    assert outcome.code is grpc.StatusCode.INTERNAL
    assert "secret" not in outcome.message
