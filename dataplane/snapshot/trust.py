"""The node's snapshot trust set: the operator's keys plus keys learned from signed statements.

A node trusts a new signing key only when a snapshot that verified under a key it
already trusts names that key (``Snapshot.trusted_keys``); a key named as revoked is
dropped for good and an envelope signed only by revoked keys is refused. Being the
signer of an envelope never makes a key trusted.

What was learned is kept in ``<data_dir>/snapshot/trust.json`` (0600): the statements
themselves (the exact envelope bytes, base64), oldest first, never bare keys. On load
they are replayed from the operator's keys: each one must verify under the keys
trusted after the ones before it, so editing the file cannot add a key. The chain is
compacted to its shortest suffix that gives the same trust set (usually one statement).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from dataplane.errors import EnvelopeError, SnapshotFileInvalid
from dataplane.snapshot.envelope import SNAPSHOT_PAYLOAD_TYPE, STATEMENT_PAYLOAD_TYPE, key_id_for, verify
from dataplane.snapshot.files import MAX_ENVELOPE_FILE_BYTES, atomic_write, private_dir, read_regular
from signalbox.api.config.v1 import snapshot_pb2

log = logging.getLogger("signalbox.dataplane.config")

TRUST_FILE = "trust.json"
MAX_STATEMENTS = 64
"""A trust file with more statements than this is refused (compaction keeps it far below)."""
MAX_CHAIN = 32
MAX_TRUST_FILE_BYTES = 2 * MAX_ENVELOPE_FILE_BYTES
"""Statements are envelopes in base64; compaction keeps the file to one or a few of them."""
"""Statements looked at in one envelope's trust chain; the rest are ignored."""


def walk_chain(state: TrustState, envelope: snapshot_pb2.SignedEnvelope) -> TrustState:
    """``state`` after every statement of ``envelope.trust_chain`` that verifies in turn.

    A statement that does not verify (or is malformed) is skipped: the chain is not covered
    by the envelope's signatures, so it can add trust only through statements signed by keys
    already trusted at that point. Never raises."""
    for statement in envelope.trust_chain[:MAX_CHAIN]:
        try:
            state = advance(state, statement)
        except EnvelopeError:
            continue
    return state


@dataclass(frozen=True, slots=True)
class TrustState:
    """Who may sign snapshots for this node, and which key ids are revoked for good."""

    keys: Mapping[str, Ed25519PublicKey]
    revoked: frozenset[str]

    def ids(self) -> tuple[frozenset[str], frozenset[str]]:
        return frozenset(self.keys), self.revoked


def _statement(envelope: snapshot_pb2.SignedEnvelope) -> list[snapshot_pb2.TrustedKey]:
    message: snapshot_pb2.Snapshot | snapshot_pb2.TrustStatement
    if envelope.payload_type == STATEMENT_PAYLOAD_TYPE:
        message, what = snapshot_pb2.TrustStatement(), "trust statement"
    else:
        message, what = snapshot_pb2.Snapshot(), "snapshot"
    try:
        message.ParseFromString(envelope.payload)
    except DecodeError as exc:
        raise EnvelopeError(f"payload does not decode as a {what}") from exc
    return list(message.trusted_keys)


def advance(state: TrustState, envelope: snapshot_pb2.SignedEnvelope) -> TrustState:
    """The trust set after the statement in ``envelope`` (a snapshot, or a ``TrustStatement``
    from a trust chain), which must verify under ``state``.

    Raises ``EnvelopeError`` when it does not verify or names a key inconsistently."""
    kind = (
        STATEMENT_PAYLOAD_TYPE if envelope.payload_type == STATEMENT_PAYLOAD_TYPE else SNAPSHOT_PAYLOAD_TYPE
    )
    verify(envelope, state.keys, revoked=state.revoked, payload_type=kind)
    keys = dict(state.keys)
    revoked = set(state.revoked)
    for i, entry in enumerate(_statement(envelope)):
        if entry.state == snapshot_pb2.TRUSTED_KEY_STATE_REVOKED:
            revoked.add(entry.key_id)
            keys.pop(entry.key_id, None)
            continue
        if entry.key_id in revoked:
            continue  # revocation is for good: no statement brings a key back
        try:
            public = Ed25519PublicKey.from_public_bytes(entry.ed25519_public_key)
        except ValueError as exc:
            raise EnvelopeError(f"trusted_keys[{i}]: not a raw Ed25519 public key") from exc
        if key_id_for(public) != entry.key_id:
            raise EnvelopeError(f"trusted_keys[{i}]: key id does not match its public key")
        keys.setdefault(entry.key_id, public)
    return TrustState(keys, frozenset(revoked))


class TrustSet:
    """The operator's keys and the persisted chain of statements that changed them."""

    def __init__(self, operator: Mapping[str, Ed25519PublicKey], directory: Path) -> None:
        self._operator = TrustState(dict(operator), frozenset())
        self._path = Path(directory) / TRUST_FILE
        self._chain: list[bytes] = []
        self._lock = threading.Lock()
        self.state = self._operator
        """Replaced whole (never mutated), so a reader in another thread sees one set."""
        self._load()

    def _replay(self, chain: list[bytes]) -> TrustState:
        state = self._operator
        for i, raw in enumerate(chain):
            envelope = snapshot_pb2.SignedEnvelope()
            try:
                envelope.ParseFromString(raw)
                state = advance(state, envelope)
            except (DecodeError, EnvelopeError) as exc:
                raise SnapshotFileInvalid(f"{self._path}: statement {i}: {exc}") from exc
        return state

    def _load(self) -> None:
        try:
            # Bounded and without blocking: a FIFO planted here hung the start.
            data = json.loads(read_regular(self._path, MAX_TRUST_FILE_BYTES))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SnapshotFileInvalid(f"{self._path}: cannot be read: {exc.strerror or exc}") from exc
        except (ValueError, RecursionError) as exc:
            # RecursionError: nested past json's depth limit, which is no ValueError.
            raise SnapshotFileInvalid(f"{self._path}: not JSON: {exc}") from exc
        try:
            statements = data["statements"]
            if not isinstance(statements, list) or len(statements) > MAX_STATEMENTS:
                raise ValueError(f"statements: a list of at most {MAX_STATEMENTS}")
            chain = [base64.b64decode(s, validate=True) for s in statements]
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise SnapshotFileInvalid(f"{self._path}: unreadable: {exc}") from exc
        self.state = self._replay(chain)
        self._chain = chain
        log.info(
            "trust set: %d keys (%s), %d revoked",
            len(self.state.keys),
            ", ".join(sorted(self.state.keys)),
            len(self.state.revoked),
        )

    def learn_chain(self, envelope: snapshot_pb2.SignedEnvelope) -> bool:
        """Learn from the statements in ``envelope.trust_chain`` that verify (see ``walk_chain``),
        persisting each; returns whether the trust set changed. Raises ``OSError`` only."""
        changed = False
        for statement in envelope.trust_chain[:MAX_CHAIN]:
            try:
                changed = self.learn(statement) or changed
            except EnvelopeError:
                continue  # not signed by a key trusted at this point: adds nothing
        return changed

    def learn(self, envelope: snapshot_pb2.SignedEnvelope) -> bool:
        """Apply the statement of an accepted snapshot; persist when the trust set changed.

        Returns whether it changed. Raises ``EnvelopeError`` for a bad statement and
        ``OSError`` when the file cannot be written (the set is then not changed)."""
        with self._lock:
            new = advance(self.state, envelope)
            if new.ids() == self.state.ids():
                return False
            chain = [*self._chain, envelope.SerializeToString()]
            # The shortest suffix that gives the same set from the operator's keys.
            for start in reversed(range(len(chain))):
                try:
                    if self._replay(chain[start:]).ids() == new.ids():
                        chain = chain[start:]
                        break
                except SnapshotFileInvalid:
                    continue
            body = {"statements": [base64.b64encode(raw).decode() for raw in chain]}
            private_dir(self._path.parent)
            atomic_write(self._path, json.dumps(body).encode())
            added = sorted(set(new.keys) - set(self.state.keys))
            dropped = sorted(new.revoked - self.state.revoked)
            self._chain, self.state = chain, new
        log.warning(
            "trust set changed: learned %s, revoked %s", ", ".join(added) or "-", ", ".join(dropped) or "-"
        )
        return True
