"""Admin API edges: message twins that ``convert`` relies on, and a handler for every RPC."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor

from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import snapshot_pb2


@pytest.mark.parametrize(
    ("snapshot_message", "admin_message"),
    [
        (snapshot_pb2.Tenant, admin_pb2.Tenant),
        (snapshot_pb2.Provider, admin_pb2.Provider),
        (snapshot_pb2.Model, admin_pb2.Model),
        (snapshot_pb2.Deployment, admin_pb2.Deployment),
    ],
)
def test_admin_message_mirrors_the_snapshot_message(snapshot_message: type, admin_message: type) -> None:
    source: Descriptor = snapshot_message.DESCRIPTOR
    target: Descriptor = admin_message.DESCRIPTOR
    for field in source.fields:
        twin = target.fields_by_number.get(field.number)
        assert twin is not None, f"{target.name} lacks field {field.number} ({field.name})"
        assert (twin.type, twin.is_repeated) == (field.type, field.is_repeated), f"{target.name}.{twin.name}"
        if field.message_type is not None:
            assert twin.message_type.fields_by_number.keys() == field.message_type.fields_by_number.keys()


def test_every_admin_rpc_has_a_handler() -> None:
    """An RPC added to admin.proto without a handler would silently answer UNIMPLEMENTED."""
    from controlplane.api.admin import AdminServicer
    from signalbox.api.admin.v1 import admin_pb2_grpc

    methods = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods_by_name
    missing = [
        name
        for name in methods
        if getattr(AdminServicer, name) is getattr(admin_pb2_grpc.AdminServiceServicer, name)
    ]
    assert missing == []
