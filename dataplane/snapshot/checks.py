"""The version-independent checks of a snapshot: signature, compile, scope and expiry.

For an envelope received whole and for one rebuilt from a delta on the served snapshot
(``Delta``: compiled by difference from its base, its signatures checked over the rebuilt
full payload). The version checks against the high-water mark are the store's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from dataplane.config.model import DEFAULT_NODE_GROUP, RuntimeConfig, Scope
from dataplane.errors import EnvelopeError, SnapshotCheckFailed, SnapshotInvalid
from dataplane.snapshot.compile import compile_payload
from dataplane.snapshot.compiled import Compiled
from dataplane.snapshot.delta import Rebuilt
from dataplane.snapshot.envelope import verify
from dataplane.snapshot.layout import LayoutError, scan
from dataplane.snapshot.trust import TrustState
from signalbox.api.config.v1 import snapshot_pb2

Delta = tuple[Compiled, Rebuilt]
"""A delta rebuilt on its base (the served snapshot compiled)."""


def scope_matches(node: Scope, snapshot: Scope) -> bool:
    """A snapshot is for this node when its deployment is the node's and each of its
    narrower fields (node group, site) is either empty (any) or the node's. A node that
    names no group is in the control plane's ``default`` group."""
    return (
        snapshot.deployment == node.deployment
        and snapshot.node_group in ("", node.node_group or DEFAULT_NODE_GROUP)
        and snapshot.site in ("", node.site)
    )


def check_snapshot(
    envelope: snapshot_pb2.SignedEnvelope,
    trust: TrustState,
    *,
    scope: Scope,
    now: float | None,
    delta: Delta | None = None,
) -> tuple[RuntimeConfig, str, Compiled | None]:
    """The version-independent checks under ``trust`` (see ``check_envelope``), with the
    snapshot's layout when it has one (the base of the next delta). A rebuilt ``delta``
    is compiled by difference from its base."""
    compiled: list[Compiled] = []

    def compile_whole(payload: bytes) -> RuntimeConfig:
        try:
            layout = scan(payload)
        except LayoutError:
            return compile_payload(payload)  # served, but the next snapshot comes whole
        compiled.append(Compiled.full(layout, payload))
        return compiled[0].config

    def compile_by_difference(_: bytes) -> RuntimeConfig:
        assert delta is not None
        base, rebuilt = delta
        compiled.append(base.advance(rebuilt.layout, rebuilt.changes, rebuilt.payload, rebuilt.digest))
        return compiled[0].config

    config, key_id = check_envelope(
        envelope,
        trust.keys,
        scope=scope,
        now=now,
        revoked=trust.revoked,
        compile=compile_whole if delta is None else compile_by_difference,
        message=None if delta is None else delta[1].message,
    )
    return config, key_id, compiled[0] if compiled else None


def whole_envelope(envelope: snapshot_pb2.SignedEnvelope, rebuilt: Rebuilt) -> snapshot_pb2.SignedEnvelope:
    """``envelope`` (sent without its payload) with the rebuilt payload in it."""
    whole = snapshot_pb2.SignedEnvelope()
    whole.CopyFrom(envelope)
    whole.payload = bytes(rebuilt.payload)
    return whole


def check_envelope(
    envelope: snapshot_pb2.SignedEnvelope,
    trusted: Mapping[str, Ed25519PublicKey],
    *,
    scope: Scope | None,
    now: float | None,
    revoked: AbstractSet[str] = frozenset(),
    compile: Callable[[bytes], RuntimeConfig] = compile_payload,
    message: bytes | None = None,
) -> tuple[RuntimeConfig, str]:
    """Signature, compile, scope and expiry checks; return the config and the verifying key id.

    ``scope=None`` skips the scope check and ``now=None`` the expiry check (a site
    without trusted time). Raises ``SnapshotCheckFailed`` with the NACK reason.
    """
    try:
        key_id = verify(envelope, trusted, revoked=revoked, message=message)
    except EnvelopeError as exc:
        raise SnapshotCheckFailed(f"signature: {exc}") from exc
    try:
        config = compile(envelope.payload)
    except SnapshotInvalid as exc:
        raise SnapshotCheckFailed(f"invalid payload: {exc}") from exc
    if scope is not None and not scope_matches(scope, config.scope):
        raise SnapshotCheckFailed(
            f"scope: snapshot is for {_scope_text(config.scope)}, node is {_scope_text(scope)}"
        )
    if now is not None and config.expires_at is not None and config.expires_at <= now:
        raise SnapshotCheckFailed(
            f"expired: snapshot {config.version} expired {now - config.expires_at:.0f}s ago"
        )
    return config, key_id


def peek(envelope: snapshot_pb2.SignedEnvelope) -> tuple[int, bytes]:
    """Version and hash of an envelope that failed a check, for the NACK (best effort)."""

    digest = hashlib.sha256(envelope.payload).digest()
    snapshot = snapshot_pb2.Snapshot()
    try:
        snapshot.ParseFromString(envelope.payload)
    except DecodeError:
        return 0, digest
    return int(snapshot.version), digest


def _scope_text(scope: Scope) -> str:
    return (
        f"deployment={scope.deployment or '-'} node_group={scope.node_group or '-'} site={scope.site or '-'}"
    )
