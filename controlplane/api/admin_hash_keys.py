"""The API-key hash key handlers of AdminService (platform admins only, ``api/authz.py``);
mixed into ``controlplane.api.admin.AdminServicer``. Never the key itself."""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.api.convert import ts
from controlplane.api.interceptor import current_caller
from controlplane.api_key_hash import HashKeyVersion
from controlplane.services.keys import ApiKeyService
from signalbox.api.admin.v1 import admin_pb2

Context = grpc.aio.ServicerContext[Any, Any]


def _info(v: HashKeyVersion) -> admin_pb2.ApiKeyHashKeyInfo:
    return admin_pb2.ApiKeyHashKeyInfo(
        version=v.version,
        state=v.state,
        created_at=ts(v.created_at),
        retired_at=ts(v.retired_at),
        usable_keys=v.usable_keys,
    )


class HashKeyAdmin:
    """The hash key RPCs; the servicer's ``__init__`` sets ``_keys``."""

    _keys: ApiKeyService

    async def ListApiKeyHashKeys(
        self, request: admin_pb2.ListApiKeyHashKeysRequest, context: Context
    ) -> admin_pb2.ListApiKeyHashKeysResponse:
        return admin_pb2.ListApiKeyHashKeysResponse(
            versions=[_info(v) for v in await self._keys.hash_key_versions()]
        )

    async def RotateApiKeyHashKey(
        self, request: admin_pb2.RotateApiKeyHashKeyRequest, context: Context
    ) -> admin_pb2.RotateApiKeyHashKeyResponse:
        version, retired, snapshot = await self._keys.rotate_hash_key(current_caller())
        return admin_pb2.RotateApiKeyHashKeyResponse(
            version=_info(version), retired=retired, snapshot_version=snapshot
        )

    async def RetireApiKeyHashKey(
        self, request: admin_pb2.RetireApiKeyHashKeyRequest, context: Context
    ) -> admin_pb2.RetireApiKeyHashKeyResponse:
        version, snapshot = await self._keys.retire_hash_key(current_caller(), request.version)
        return admin_pb2.RetireApiKeyHashKeyResponse(version=_info(version), snapshot_version=snapshot)
