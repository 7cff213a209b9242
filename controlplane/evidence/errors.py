"""Why a shipped batch (or part of it) was refused.

    ControlPlaneError
    ├── EvidenceRefused          INVALID_ARGUMENT     (a record or note that is not evidence: names it)
    │   ├── ChainBroken          FAILED_PRECONDITION  (seq, hash or prev_hash does not continue the chain)
    │   │   └── Gap              FAILED_PRECONDITION  (a seq beyond the next: the node resends from
    │   │                                              the ACKed head)
    │   └── Tampered             DATA_LOSS            (a stored record arrived with another hash, or a
    │                                                  checkpoint root the stored records do not make)
    ├── PermissionDenied         PERMISSION_DENIED    (a chain of another node)
    ├── ExportTooLarge           RESOURCE_EXHAUSTED   (a pack query matching more than the limit)
    ├── ExportImpossible         FAILED_PRECONDITION  (a chain whose records cannot be proven now)
    ├── PruneRefused             FAILED_PRECONDITION  (retention: a chain's prefix up to its newest seq in
    │                                                  the partitions to drop has a gap; nothing pruned)
    ├── ParsingLost              UNAVAILABLE          (the process parsing a batch died, in a fresh pool
    │                                                  too: resent later; the pool is started again)
    └── PruneFailed              FAILED_PRECONDITION  (retention: the database refused a step, e.g. a
        │                                              privilege or ownership the control plane's role
        │                                              lacks: names the step, the partition and the
        │                                              database's reason; nothing pruned)
        └── PruneBusy            UNAVAILABLE          (retention: a lock a step needs was not granted
                                                       within its lock timeout, e.g. a long export
                                                       reading evidence_records: names the step and
                                                       the lock; nothing pruned, retry)

Every message names the chain and the record (seq, line in the batch) or the checkpoint, and
carries digests and ids only, never record content.
"""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.errors import ControlPlaneError


class EvidenceRefused(ControlPlaneError):
    status = grpc.StatusCode.INVALID_ARGUMENT
    alarm = "invalid_record"
    """The ``evidence_alarms.kind`` of this refusal; ``state`` the chain's state after it."""
    state = "broken"

    def __init__(self, message: str, *, seq: int = 0) -> None:
        super().__init__(message)
        self.seq = seq
        """The seq of the refused record (0: not a record, or its seq could not be read)."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Refusals come back from ingest's worker processes pickled: keep ``seq``.
        return (_rebuild, (type(self), self.message, self.seq))


def _rebuild(cls: type[EvidenceRefused], message: str, seq: int) -> EvidenceRefused:
    return cls(message, seq=seq)


class ChainBroken(EvidenceRefused):
    status = grpc.StatusCode.FAILED_PRECONDITION
    alarm = "chain_break"


class Gap(ChainBroken):
    alarm = "gap"
    state = "gap"


class Tampered(EvidenceRefused):
    status = grpc.StatusCode.DATA_LOSS
    alarm = "tamper"
    state = "tampered"


# ---- evidence packs (export) ----


class ExportTooLarge(ControlPlaneError):
    """A pack query that matches more records than one pack may hold: narrow it."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class ExportImpossible(ControlPlaneError):
    """A chain the pack needs cannot be proven from the store (its early records are gone)."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class ParsingLost(ControlPlaneError):
    """The worker process parsing a batch died while it did, in two pools one after the
    other: nothing of the batch was written. The node resends it; the next batches (of
    any chain) go to a fresh pool."""

    status = grpc.StatusCode.UNAVAILABLE


class PruneRefused(ControlPlaneError):
    status = grpc.StatusCode.FAILED_PRECONDITION


class PruneFailed(ControlPlaneError):
    """The database refused one of retention's steps (not a transient failure: those stay
    UNAVAILABLE or ABORTED, ``controlplane.db.failures``); the transaction rolled back."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class PruneBusy(PruneFailed):
    """A lock one of retention's steps needs was held by another session for longer than
    retention's lock timeout (a long export or query of ``evidence_records``, say): it gave
    up rather than hold every writer queued behind its request; the transaction rolled back.
    Transient, like the database's own lock timeout (``controlplane.db.failures``): retry."""

    status = grpc.StatusCode.UNAVAILABLE
