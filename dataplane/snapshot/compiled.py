"""A compiled snapshot kept with its layout, and compiling the next one by difference.

``Compiled.advance`` compiles the new layout from the previous compiled one and the records
removed and added (``dataplane.snapshot.delta.Changes``): tenants and API keys (nearly all
of a large snapshot) are updated entry by entry; providers, models and policies are
recompiled with ``compile_registry`` only when one of their records, or a tenant a policy
could name, changed. The result equals ``compile_payload(layout.payload())``: every case
the difference cannot decide on its own (a duplicate, a dangling reference, a removed
tenant still referenced) is handed to the full compiler, which then raises the same
``SnapshotInvalid`` with the same path (tests/dataplane/snapshot/test_layout.py checks the
equality on random edit sequences). Iteration order of ``tenants`` and ``api_keys`` is not
part of the result (they are looked up, never listed).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError

from dataplane.config.model import ApiKeyEntry, RuntimeConfig, TenantConfig
from dataplane.errors import SnapshotInvalid
from dataplane.scopes import KeyScope
from dataplane.snapshot.compile import (
    check_header,
    compile_governance,
    compile_payload,
    compile_registry,
    key_digest,
    key_entry,
    runtime_config,
    tenant_entry,
)
from dataplane.snapshot.delta import Changes
from dataplane.snapshot.identities import compile_identities
from dataplane.snapshot.layout import (
    API_KEYS,
    GOVERNANCE_PROFILES,
    IDENTITIES,
    REGISTRY,
    TENANTS,
    Layout,
    LayoutError,
    read_varint,
)
from signalbox.api.config.v1 import snapshot_pb2


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled snapshot with its layout and what compiling the next one by difference needs."""

    layout: Layout
    config: RuntimeConfig
    key_tenants: Counter[str]
    """How many API keys name each tenant (a tenant removed while named is an error)."""
    scopes: Mapping[frozenset[str], KeyScope]

    @property
    def shadowed_keys(self) -> bool:
        """Whether two key records share a secret hash (the later one is served): removing
        either, or a tenant only the hidden one names, is then decided by the full compiler."""
        return len(self.layout.records[API_KEYS]) != len(self.config.api_keys)

    @classmethod
    def full(cls, layout: Layout, payload: bytes | None = None) -> Compiled:
        """Compile ``layout`` whole (``payload``: its bytes, when the caller has them)."""
        config = compile_payload(layout.payload() if payload is None else payload)
        counts = Counter(entry.tenant_id for entry in config.api_keys.values())
        scopes = {entry.scopes: entry.scope for entry in config.api_keys.values()}
        return cls(layout, config, counts, scopes)

    def advance(
        self, layout: Layout, changes: Changes, payload: bytes | memoryview, payload_sha256: bytes
    ) -> Compiled:
        """Compile ``layout`` (whose bytes are ``payload``), reached from this one by ``changes``.

        Equal to ``Compiled.full(layout)``; raises the same ``SnapshotInvalid``."""
        try:
            return self._advance(layout, changes, payload_sha256)
        except _Undecided:
            return Compiled.full(layout, bytes(payload))

    def _advance(self, layout: Layout, changes: Changes, payload_sha256: bytes) -> Compiled:
        header = _parse(snapshot_pb2.Snapshot, layout.header)
        try:
            check_header(header)
        except SnapshotInvalid as exc:
            raise _Undecided from exc
        old = self.config
        if self.shadowed_keys and changes.touches((TENANTS, API_KEYS)):
            raise _Undecided
        tenants: Mapping[str, TenantConfig] = old.tenants
        gone_tenants: set[str] = set()
        if changes.touches((TENANTS,)):
            table = dict(old.tenants)
            for rec in changes.removed.get(TENANTS, ()):
                t = _element(snapshot_pb2.Tenant, rec)
                if table.pop(t.id, None) is None:
                    raise _Undecided
                gone_tenants.add(t.id)
            for rec in changes.added.get(TENANTS, ()):
                t = _element(snapshot_pb2.Tenant, rec)
                if t.id in table or not t.id:
                    raise _Undecided
                try:
                    table[t.id] = tenant_entry(0, t)
                except SnapshotInvalid as exc:
                    # Its index in the payload is the full compiler's to name.
                    raise _Undecided from exc
                gone_tenants.discard(t.id)
            tenants = table

        keys: Mapping[bytes, ApiKeyEntry] = old.api_keys
        counts = self.key_tenants
        scopes = self.scopes
        if changes.touches((API_KEYS,)) or gone_tenants:
            key_table = dict(old.api_keys)
            counts = Counter(counts)
            parsed = dict(scopes)
            for rec in changes.removed.get(API_KEYS, ()):
                k = _element(snapshot_pb2.ApiKey, rec)
                digest = key_digest(k)
                entry = key_table.get(digest) if digest is not None else None
                if digest is None or entry is None or entry.id != k.id:
                    raise _Undecided  # two keys with one hash: the full compile decides
                del key_table[digest]
                counts[entry.tenant_id] -= 1
            for rec in changes.added.get(API_KEYS, ()):
                k = _element(snapshot_pb2.ApiKey, rec)
                digest = key_digest(k)
                if digest is None or digest in key_table:
                    raise _Undecided
                try:
                    secret, entry = key_entry(0, k, tenants, parsed)
                except SnapshotInvalid as exc:
                    raise _Undecided from exc
                key_table[secret] = entry
                counts[entry.tenant_id] += 1
            if any(counts[t] > 0 for t in gone_tenants):
                raise _Undecided  # a key names a tenant that is gone
            keys, scopes = key_table, parsed

        providers, models, policies = old.providers, old.models, old.policies
        if changes.touches(REGISTRY) or any(t in policies for t in gone_tenants):
            registry = snapshot_pb2.Snapshot()
            try:
                registry.ParseFromString(
                    b"".join(itertools.chain.from_iterable(layout.records[n] for n in REGISTRY))
                )
                registry.scope.CopyFrom(header.scope)  # sealed credentials name their group
                providers, models, policies = compile_registry(registry, tenants)
            except (DecodeError, SnapshotInvalid) as exc:
                raise _Undecided from exc
        identities = old.identities
        if changes.touches((IDENTITIES, TENANTS)):
            # A handful of entries: recompiled whole (keys parsed again) when any changes.
            elements = [_element(snapshot_pb2.TenantIdentity, rec) for rec in layout.records[IDENTITIES]]
            try:
                identities = compile_identities(elements, tenants)
            except SnapshotInvalid as exc:
                raise _Undecided from exc
        governance = old.governance
        if changes.touches((GOVERNANCE_PROFILES, TENANTS)):
            # A profile per tenant at most, each small: recompiled whole when any changes.
            profiles = [
                _element(snapshot_pb2.GovernanceProfile, rec) for rec in layout.records[GOVERNANCE_PROFILES]
            ]
            try:
                governance = compile_governance(profiles, tenants)
            except SnapshotInvalid as exc:
                raise _Undecided from exc
        config = runtime_config(
            header, payload_sha256, tenants, keys, providers, models, policies, identities, governance
        )
        return Compiled(layout, config, counts, scopes)


class _Undecided(Exception):
    """The difference alone cannot say: compile the whole payload."""


_M = TypeVar(
    "_M",
    snapshot_pb2.Snapshot,
    snapshot_pb2.Tenant,
    snapshot_pb2.ApiKey,
    snapshot_pb2.TenantIdentity,
    snapshot_pb2.GovernanceProfile,
)


def _parse(kind: type[_M], data: bytes) -> _M:
    message = kind()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise _Undecided from exc
    return message


def _element(kind: type[_M], rec: bytes) -> _M:
    """The element a record carries (after its tag and length)."""
    try:
        _, after_tag = read_varint(rec, 0)  # one byte for fields 1-15, two for 16 and up
        _, start = read_varint(rec, after_tag)
    except LayoutError as exc:
        raise _Undecided from exc
    return _parse(kind, rec[start:])
