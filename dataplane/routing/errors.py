"""Errors routing adds to ``dataplane.errors`` (same base, same status mapping).

SignalboxError (dataplane.errors)
└── NoEligibleCandidate    FAILED_PRECONDITION (every candidate dropped by a constraint;
                                                carries the drops and their reasons)
"""

from __future__ import annotations

import grpc

from dataplane.errors import SignalboxError


class NoEligibleCandidate(SignalboxError):
    """The policy matched, but no candidate satisfies its constraints for this request."""

    status = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, dropped: tuple[tuple[str, str], ...]) -> None:
        super().__init__(message)
        self.dropped = dropped
