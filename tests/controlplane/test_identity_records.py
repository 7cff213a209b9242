"""Which identity records a node group's snapshot carries: those of the tenants it sees."""

from __future__ import annotations

from controlplane.repositories.identities import IdentityRecord, for_group


def test_a_group_sees_the_identities_of_its_tenants_only() -> None:
    records = [
        IdentityRecord("t-1", "acme", b"acme-jwt"),
        IdentityRecord("t-2", "other", b"other-mtls"),
        IdentityRecord("t-1", "acme", b"acme-mtls"),
    ]
    assert for_group(records, None) == [b"acme-jwt", b"other-mtls", b"acme-mtls"]
    assert for_group(records, frozenset({"acme"})) == [b"acme-jwt", b"acme-mtls"]
    assert for_group(records, frozenset({"t-2"})) == [b"other-mtls"]
    assert for_group(records, frozenset()) == []
