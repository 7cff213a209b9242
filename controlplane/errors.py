"""Errors of the control plane, each knowing the gRPC status it becomes.

    ControlPlaneError                 INTERNAL
    ├── InvalidArgument               INVALID_ARGUMENT    (names the field)
    │   └── ConfigRejected            INVALID_ARGUMENT    (the candidate snapshot failed its check; names the path)
    ├── Unauthenticated               UNAUTHENTICATED     (no, unknown or revoked admin token)
    ├── PermissionDenied              PERMISSION_DENIED   (the token's role may not make this call)
    ├── NotFound                      NOT_FOUND           (names the kind and the key)
    ├── AlreadyExists                 ALREADY_EXISTS      (names the kind and the key)
    ├── StillReferenced               FAILED_PRECONDITION (names the referrer)
    ├── GroupInUse                    FAILED_PRECONDITION (a node group with connected nodes; names them)
    ├── SigningKeyUnavailable         FAILED_PRECONDITION (signing key cannot be unsealed: wrong KEK)
    ├── SigningKeyState               FAILED_PRECONDITION (a key's state forbids the change: revoking the
    │                                                      active key, a key already revoked)
    ├── HashKeyState                  FAILED_PRECONDITION (an API-key hash key version's state forbids the
    │                                                      change: retiring one keys still use, the active one)
    ├── BatchAborted                  ABORTED             (a change batched after a refused one: nothing of
    │                                                      it was written; retry)
    ├── StoredSnapshotInvalid         FAILED_PRECONDITION (the newest stored snapshot no longer compiles
    │                                                      with this build's data-plane code; names the path)
    └── ResourceExhausted             RESOURCE_EXHAUSTED  (a query over more than it may read in its time:
                                                           says how to narrow it)

The one place that turns these into gRPC statuses is ``controlplane.api.status``.
Messages never contain secrets: errors are built from names and ids only.
"""

from __future__ import annotations

import grpc

from signalbox.errors import Error

ECHO_CHARS = 64
"""At most this much of a caller's value is echoed back in a message."""


def clip(value: str, limit: int = ECHO_CHARS) -> str:
    """``value`` cut to ``limit`` characters, saying how long it was."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}...({len(value)} chars)"


def shown(value: str) -> str:
    """A caller's value as a message quotes it: repr (so control characters are escaped), clipped."""
    return repr(clip(value))


class ControlPlaneError(Error):
    """Base of every error the control plane reports to a caller."""


class InvalidArgument(ControlPlaneError):
    status = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class ConfigRejected(InvalidArgument):
    """The config after this change would not compile; ``field`` is the snapshot path.

    ``referrer`` describes the entry at that path (e.g. "policy of tenant 'acme'"),
    so a deletion that breaks it can name what still refers to the deleted thing.
    ``group`` is the node group whose snapshot it is; the message starts with it
    (and names the referrer) for every group but ``default``.
    """

    def __init__(self, field: str, problem: str, referrer: str = "", *, group: str = "") -> None:
        super().__init__(field, problem)
        self.problem = problem
        self.referrer = referrer
        self.group = group
        if group and group != "default":
            where = f" ({referrer})" if referrer and referrer != field else ""
            self.message = f"node group {group!r}: {field}: {problem}{where}"
            self.args = (self.message,)


class Unauthenticated(ControlPlaneError):
    status = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ControlPlaneError):
    status = grpc.StatusCode.PERMISSION_DENIED


class NotFound(ControlPlaneError):
    status = grpc.StatusCode.NOT_FOUND

    def __init__(self, kind: str, key: str, *, field: str = "") -> None:
        message = f"{kind} {shown(key)} not found"
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.kind = kind
        self.key = key


class AlreadyExists(ControlPlaneError):
    status = grpc.StatusCode.ALREADY_EXISTS

    def __init__(self, kind: str, key: str, *, field: str = "", why: str = "") -> None:
        message = f"{kind} {shown(key)} already exists" + (f": {why}" if why else "")
        super().__init__(f"{field}: {message}" if field else message)
        self.kind = kind
        self.key = key


class StillReferenced(ControlPlaneError):
    status = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, what: str, referrer: str) -> None:
        super().__init__(f"{what} is still referenced by {referrer}")
        self.what = what
        self.referrer = referrer


class GroupInUse(ControlPlaneError):
    """A node group cannot be deleted while nodes run it (names the group and the nodes)."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class SigningKeyUnavailable(ControlPlaneError):
    """The stored signing key cannot be decrypted with the configured KEK."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class SigningKeyState(ControlPlaneError):
    """A signing key's state forbids the change (names the key id and the state)."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class HashKeyState(ControlPlaneError):
    """An API-key hash key version's state forbids the change (names the version and why)."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class BatchAborted(ControlPlaneError):
    """A change ran in one batch after a change that was then refused (see
    ``controlplane.services.base``): it ran on top of the refused one, so it is rolled back
    with it and nothing of it was written. Retrying it is safe."""

    status = grpc.StatusCode.ABORTED


class StreamSuperseded(ControlPlaneError):
    """A node opened more streams of one kind than a replica holds for it: the oldest ends."""

    status = grpc.StatusCode.ABORTED


class StoredSnapshotInvalid(ControlPlaneError):
    """The newest stored snapshot does not compile with this build's data-plane code
    (e.g. after an upgrade), so it cannot be dry-run; ``field`` is the snapshot path."""

    status = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class ResourceExhausted(ControlPlaneError):
    """A request would take more of the database than one call may (a usage report over too
    much evidence); the message says how to narrow it."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED
