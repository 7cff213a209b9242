"""Refusals of governance, each naming the rule or limit, never what was found.

    SignalboxError
    ├── InvalidRequest
    │   ├── OverLimit              INVALID_ARGUMENT   (names the profile's limit)
    │   └── BlockedInvalid         INVALID_ARGUMENT   (a block rule whose status is invalid_argument)
    ├── PermissionDenied
    │   └── Blocked                PERMISSION_DENIED  (a block rule; the default status)
    ├── NotCertified               FAILED_PRECONDITION (a classify rule raised the request's data
    │                                                   class and no model is certified for it)
    └── ProviderError
        └── AnswerBreaksContract   FAILED_PRECONDITION (the answer does not meet the request's
                                                        JSON schema; names the schema path)

``AnswerBreaksContract`` is a provider error so that, when a profile says ``retry``, the
dispatcher falls back to the next candidate as it does for a failed upstream; it is not a
failure kind (``routing.health.FAILURE_KINDS``), so it opens no breaker.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

from dataplane.errors import InvalidRequest, PermissionDenied, ProviderError, SignalboxError

CONTRACT_KIND = "output_contract"
"""The attempt outcome (and fallback kind) of an answer that breaks its JSON schema."""


class OverLimit(InvalidRequest):
    """The request is over one of its governance profile's limits."""

    def __init__(self, limit: str, allowed: int, found: int) -> None:
        super().__init__(f"governance limit {limit}", f"{found} is over the limit of {allowed}")
        self.limit = limit


def _blocked(rule: str, stage: str) -> str:
    where = "request" if stage == "input" else "answer"
    return f"governance rule {rule!r} blocked the {where}"


class Blocked(PermissionDenied):
    """A block rule found what it looks for (PERMISSION_DENIED)."""

    def __init__(self, rule: str, stage: str) -> None:
        super().__init__(_blocked(rule, stage))
        self.rule = rule


class BlockedInvalid(InvalidRequest):
    """A block rule whose status is ``invalid_argument`` found what it looks for."""

    def __init__(self, rule: str, stage: str) -> None:
        SignalboxError.__init__(self, _blocked(rule, stage))
        self.field = f"governance rule {rule}"
        self.rule = rule


def blocked(rule: str, stage: str, status: grpc.StatusCode) -> SignalboxError:
    """The refusal of a block rule with ``status``."""
    if status is grpc.StatusCode.INVALID_ARGUMENT:
        return BlockedInvalid(rule, stage)
    return Blocked(rule, stage)


class NotCertified(SignalboxError):
    """A classify rule raised the request's data class; no candidate is certified for it."""

    status = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, rule: str, data_class: str) -> None:
        super().__init__(
            f"governance rule {rule!r} classified the request {data_class}; "
            f"no model the policy allows is certified for {data_class} data"
        )
        self.rule = rule


class AnswerBreaksContract(ProviderError):
    """The answer does not meet the JSON schema the request asked for.

    The message names where (the answer's JSON path and the schema keyword), never the
    answer's values."""

    kind: ClassVar[str] = CONTRACT_KIND
    status = grpc.StatusCode.FAILED_PRECONDITION
