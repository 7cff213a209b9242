"""The error base both planes build their error trees on.

    Error                      a status code and whether a retry may help
    ├── dataplane.errors.SignalboxError      (the data plane's tree)
    └── controlplane.errors.ControlPlaneError (the control plane's tree)

An error knows the gRPC status it becomes and whether the same call may
succeed if tried again; each plane maps it to a status in exactly one place.
Messages are built from names and ids, never from secrets.
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class Error(Exception):
    """Base of every error Signalbox reports to a caller or an admin."""

    status: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
