"""controlplane.limits agrees with the columns it guards, and bounds what it promises."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from controlplane import limits
from controlplane.api.status import MESSAGE_BYTES, bounded
from controlplane.db import models
from controlplane.errors import InvalidArgument
from signalbox.api.admin.v1 import admin_pb2

A = "signalbox.api.admin.v1."
# Each stored string field of the Admin API and the column that holds it.
STORED_IN: dict[str, sa.Column[str]] = {
    A + "CreateTenantRequest.name": models.Tenant.__table__.c.name,
    A + "CreateTenantRequest.tier": models.Tenant.__table__.c.tier,
    A + "UpdateTenantRequest.tier": models.Tenant.__table__.c.tier,
    A + "CreateApiKeyRequest.name": models.ApiKey.__table__.c.name,
    A + "Provider.name": models.Provider.__table__.c.name,
    A + "Provider.type": models.Provider.__table__.c.type,
    A + "Provider.site": models.Provider.__table__.c.site,
    A + "Provider.region": models.Provider.__table__.c.region,
    A + "Provider.jurisdiction": models.Provider.__table__.c.jurisdiction,
    "signalbox.api.config.v1.SecretRef.env": models.Provider.__table__.c.credential_env,
    A + "Model.alias": models.Model.__table__.c.alias,
    A + "Deployment.upstream_model": models.Deployment.__table__.c.upstream_model,
}
INTEGER_FIELDS = {
    "timeout_ms": models.Provider.__table__.c.timeout_ms,
    "context_window": models.Model.__table__.c.context_window,
    "max_output_tokens": models.Model.__table__.c.max_output_tokens,
    "typical_latency_ms": models.Model.__table__.c.typical_latency_ms,
    "weight": models.Deployment.__table__.c.weight,
}


@pytest.mark.parametrize("field", sorted(STORED_IN))
def test_each_stored_string_is_checked_against_its_column_width(field: str) -> None:
    column = STORED_IN[field]
    assert isinstance(column.type, sa.String)
    assert limits.FIELD_CHARS.get(field, limits.NAME_CHARS) == column.type.length


@pytest.mark.parametrize("name", sorted(INTEGER_FIELDS))
def test_uint32_fields_are_held_to_the_integer_column(name: str) -> None:
    assert isinstance(INTEGER_FIELDS[name].type, sa.Integer)
    assert not isinstance(INTEGER_FIELDS[name].type, sa.BigInteger)
    model = admin_pb2.Model(alias="m", typical_latency_ms=0)
    holder = admin_pb2.Provider() if name == "timeout_ms" else model
    if name == "weight":
        holder = admin_pb2.Deployment()
    setattr(holder, name, limits.INT32_MAX)
    limits.check_request(holder)
    setattr(holder, name, limits.INT32_MAX + 1)
    with pytest.raises(InvalidArgument, match=f"{name}: at most 2147483647"):
        limits.check_request(holder)


def test_maps_and_lists_are_bounded_in_size() -> None:
    labels = {f"k{i}": "v" for i in range(limits.MAP_ENTRIES + 1)}
    with pytest.raises(InvalidArgument, match=r"^labels: at most 64 entries$"):
        limits.check_request(admin_pb2.CreateTenantRequest(name="t", labels=labels))
    scopes = ["op:chat"] * (limits.LIST_ITEMS + 1)
    with pytest.raises(InvalidArgument, match=r"^scopes: at most 64 items$"):
        limits.check_request(admin_pb2.CreateApiKeyRequest(tenant="t", scopes=scopes))
    key = "k" * 300
    with pytest.raises(InvalidArgument, match=r"^labels\.k{64}\.\.\.\(200 chars\): at most 2048"):
        limits.check_request(admin_pb2.CreateTenantRequest(name="t", labels={key[:200]: "v" * 2049}))


def test_the_policy_document_is_bounded_in_bytes_not_characters() -> None:
    limits.check_request(admin_pb2.ApplyPolicyRequest(document="x" * limits.POLICY_DOCUMENT_BYTES))
    with pytest.raises(InvalidArgument, match=r"^document: at most 1048576 bytes$"):
        limits.check_request(
            admin_pb2.ApplyPolicyRequest(document="é" * (limits.POLICY_DOCUMENT_BYTES // 2 + 1))
        )


def test_status_messages_are_one_bounded_line() -> None:
    assert bounded("a\x00b\x1b[31m\nc\u2028") == "a\\x00b\\x1b[31m\\x0ac\\u2028"
    long = bounded("é" * 5000)
    assert len(long.encode()) <= MESSAGE_BYTES
    assert long.endswith("...(clipped)")
