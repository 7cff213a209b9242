"""AdminService: thin handlers over the services.

The evidence handlers are in ``api/admin_evidence.py``, the caller-identity ones in
``api/admin_identity.py``, ExplainRoute in ``api/admin_routing.py``, the governance profiles in
``api/admin_governance.py`` and the admin tokens,
admin mTLS identities and audit trail in ``api/admin_security.py``: mix-ins of
``AdminServicer``.

Authentication, the audit log and error-to-status mapping are not here: the
``AdminInterceptor`` wraps every method (see ``api/interceptor.py``), and puts
the authenticated caller in ``current_caller``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, timedelta
from typing import Any

import grpc

from controlplane.api import convert
from controlplane.api.admin_evidence import EvidenceAdmin
from controlplane.api.admin_governance import GovernanceAdmin
from controlplane.api.admin_hash_keys import HashKeyAdmin
from controlplane.api.admin_identity import CallerIdentityAdmin
from controlplane.api.admin_limits import LimitsAdmin
from controlplane.api.admin_routing import RouteTables, RoutingAdmin
from controlplane.api.admin_security import AdminSecurityAdmin
from controlplane.api.identity import certificate_response
from controlplane.api.interceptor import current_caller
from controlplane.errors import InvalidArgument
from controlplane.evidence.export import EvidenceExporter
from controlplane.evidence.imports import EvidenceImporter
from controlplane.evidence.queries import EvidenceQueries
from controlplane.evidence.retention import EvidenceRetention
from controlplane.limits import DEFAULT_GROUP
from controlplane.services.admin import AdminService
from controlplane.services.callers import CallerIdentityService
from controlplane.services.governance import GovernanceService
from controlplane.services.groups import NodeGroupService
from controlplane.services.identity import MAX_CERT_TTL, MAX_TOKEN_TTL, IdentityService, check_node_id
from controlplane.services.imports import ImportService
from controlplane.services.keys import ApiKeyService
from controlplane.services.limits import LimitsService
from controlplane.services.models import ModelService
from controlplane.services.nodes import NodeService
from controlplane.services.policies import PolicyService
from controlplane.services.providers import ProviderService
from controlplane.services.rollback import RollbackService
from controlplane.services.signing_keys import SigningKeyService
from controlplane.services.snapshots import SnapshotService
from controlplane.services.tenants import TenantService
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.config.v1 import identity_pb2, snapshot_pb2

Context = grpc.aio.ServicerContext[Any, Any]


class AdminServicer(
    RoutingAdmin,
    EvidenceAdmin,
    CallerIdentityAdmin,
    LimitsAdmin,
    AdminSecurityAdmin,
    GovernanceAdmin,
    HashKeyAdmin,
    admin_pb2_grpc.AdminServiceServicer,
):
    """Implements every RPC of ``signalbox.api.admin.v1.AdminService``."""

    def __init__(
        self,
        *,
        tenants: TenantService,
        keys: ApiKeyService,
        providers: ProviderService,
        models: ModelService,
        policies: PolicyService,
        nodes: NodeService,
        snapshots: SnapshotService,
        rollback: RollbackService,
        signing_keys: SigningKeyService,
        identities: IdentityService,
        groups: NodeGroupService,
        imports: ImportService,
        evidence: EvidenceQueries,
        exporter: EvidenceExporter,
        callers: CallerIdentityService,
        retention: EvidenceRetention,
        importer: EvidenceImporter,
        limits: LimitsService,
        admin: AdminService,
        governance: GovernanceService,
    ) -> None:
        self._tenants = tenants
        self._keys = keys
        self._providers = providers
        self._models = models
        self._policies = policies
        self._groups = groups
        self._route_tables = RouteTables()
        self._nodes = nodes
        self._snapshots = snapshots
        self._rollback = rollback
        self._signing_keys = signing_keys
        self._identities = identities
        self._imports = imports
        self._evidence = evidence
        self._exporter = exporter
        self._callers = callers
        self._retention = retention
        self._importer = importer
        self._limits = limits
        self._admin = admin
        self._governance = governance

    # ---- tenants ----

    async def CreateTenant(
        self, request: admin_pb2.CreateTenantRequest, context: Context
    ) -> admin_pb2.Tenant:
        row, _ = await self._tenants.create(
            current_caller(),
            name=request.name,
            tier=request.tier,
            labels=dict(request.labels),
            evidence_content=request.evidence_content,
            evidence_spool_full=request.evidence_spool_full,
        )
        return convert.tenant(row)

    async def GetTenant(self, request: admin_pb2.GetTenantRequest, context: Context) -> admin_pb2.Tenant:
        convert.require("tenant", request.tenant)
        return convert.tenant(await self._tenants.get(request.tenant))

    async def ListTenants(
        self, request: admin_pb2.ListTenantsRequest, context: Context
    ) -> admin_pb2.ListTenantsResponse:
        return admin_pb2.ListTenantsResponse(tenants=[convert.tenant(t) for t in await self._tenants.list()])

    async def UpdateTenant(
        self, request: admin_pb2.UpdateTenantRequest, context: Context
    ) -> admin_pb2.Tenant:
        convert.require("tenant", request.tenant)
        row, _ = await self._tenants.update(
            current_caller(),
            request.tenant,
            tier=request.tier if request.HasField("tier") else None,
            active=request.active if request.HasField("active") else None,
            labels=dict(request.labels),
            replace_labels=request.replace_labels,
            evidence_content=request.evidence_content if request.HasField("evidence_content") else None,
            evidence_spool_full=request.evidence_spool_full
            if request.HasField("evidence_spool_full")
            else None,
        )
        return convert.tenant(row)

    async def DeleteTenant(
        self, request: admin_pb2.DeleteTenantRequest, context: Context
    ) -> admin_pb2.DeleteResponse:
        convert.require("tenant", request.tenant)
        version = await self._tenants.delete(current_caller(), request.tenant)
        return admin_pb2.DeleteResponse(snapshot_version=version)

    # ---- API keys ----

    async def CreateApiKey(
        self, request: admin_pb2.CreateApiKeyRequest, context: Context
    ) -> admin_pb2.CreateApiKeyResponse:
        expires = request.expires_at.ToDatetime(tzinfo=UTC) if request.HasField("expires_at") else None
        row, secret, version = await self._keys.create(
            current_caller(),
            tenant=request.tenant,
            name=request.name,
            scopes=list(request.scopes),
            expires_at=expires,
        )
        return admin_pb2.CreateApiKeyResponse(
            key=convert.api_key(row), secret=secret, snapshot_version=version
        )

    async def ListApiKeys(
        self, request: admin_pb2.ListApiKeysRequest, context: Context
    ) -> admin_pb2.ListApiKeysResponse:
        return admin_pb2.ListApiKeysResponse(
            keys=[convert.api_key(k) for k in await self._keys.list(request.tenant)]
        )

    async def DeleteApiKey(
        self, request: admin_pb2.DeleteApiKeyRequest, context: Context
    ) -> admin_pb2.DeleteResponse:
        convert.require("id", request.id)
        return admin_pb2.DeleteResponse(
            snapshot_version=await self._keys.delete(current_caller(), request.id)
        )

    # ---- providers ----

    async def CreateProvider(
        self, request: admin_pb2.CreateProviderRequest, context: Context
    ) -> admin_pb2.Provider:
        row, _ = await self._providers.create(current_caller(), convert.provider_spec(request.provider))
        return convert.provider(row)

    async def ListProviders(
        self, request: admin_pb2.ListProvidersRequest, context: Context
    ) -> admin_pb2.ListProvidersResponse:
        return admin_pb2.ListProvidersResponse(
            providers=[convert.provider(p) for p in await self._providers.list()]
        )

    async def UpdateProvider(
        self, request: admin_pb2.UpdateProviderRequest, context: Context
    ) -> admin_pb2.Provider:
        ref = request.provider.id or request.provider.name
        convert.require("provider.id", ref)
        row, _ = await self._providers.update(current_caller(), ref, convert.provider_spec(request.provider))
        return convert.provider(row)

    async def DeleteProvider(
        self, request: admin_pb2.DeleteProviderRequest, context: Context
    ) -> admin_pb2.DeleteResponse:
        convert.require("provider", request.provider)
        version = await self._providers.delete(current_caller(), request.provider)
        return admin_pb2.DeleteResponse(snapshot_version=version)

    # ---- models ----

    async def CreateModel(self, request: admin_pb2.CreateModelRequest, context: Context) -> admin_pb2.Model:
        row, _ = await self._models.create(current_caller(), convert.model_spec(request.model))
        return convert.model(row)

    async def ListModels(
        self, request: admin_pb2.ListModelsRequest, context: Context
    ) -> admin_pb2.ListModelsResponse:
        return admin_pb2.ListModelsResponse(models=[convert.model(m) for m in await self._models.list()])

    async def UpdateModel(self, request: admin_pb2.UpdateModelRequest, context: Context) -> admin_pb2.Model:
        ref = request.model.id or request.model.alias
        convert.require("model.id", ref)
        row, _ = await self._models.update(current_caller(), ref, convert.model_spec(request.model))
        return convert.model(row)

    async def DeleteModel(
        self, request: admin_pb2.DeleteModelRequest, context: Context
    ) -> admin_pb2.DeleteResponse:
        convert.require("model", request.model)
        version = await self._models.delete(current_caller(), request.model)
        return admin_pb2.DeleteResponse(snapshot_version=version)

    # ---- policies ----

    async def ApplyPolicy(self, request: admin_pb2.ApplyPolicyRequest, context: Context) -> admin_pb2.Policy:
        row, _ = await self._policies.apply(
            current_caller(), tenant=request.tenant, document=request.document
        )
        return convert.policy(row)

    async def GetPolicy(self, request: admin_pb2.GetPolicyRequest, context: Context) -> admin_pb2.Policy:
        return convert.policy(await self._policies.get(request.tenant, request.version))

    async def ListPolicyHistory(
        self, request: admin_pb2.ListPolicyHistoryRequest, context: Context
    ) -> admin_pb2.ListPolicyHistoryResponse:
        rows = await self._policies.history(request.tenant)
        return admin_pb2.ListPolicyHistoryResponse(versions=[convert.policy(p) for p in rows])

    async def DeletePolicy(
        self, request: admin_pb2.DeletePolicyRequest, context: Context
    ) -> admin_pb2.DeleteResponse:
        version = await self._policies.delete(current_caller(), request.tenant)
        return admin_pb2.DeleteResponse(snapshot_version=version)

    # ---- nodes and snapshots ----

    async def ListNodes(
        self, request: admin_pb2.ListNodesRequest, context: Context
    ) -> admin_pb2.ListNodesResponse:
        rows, newest, now = await self._nodes.fleet(request.group)
        certificates = await self._identities.certificates_by_node()
        nodes = []
        for row in rows:
            node = convert.node(row)
            scope = row.scope or {}
            node.deployment = str(scope.get("deployment", ""))
            # The group the control plane serves it, not only what the node claimed.
            node.node_group = row.node_group
            node.site = str(scope.get("site", ""))
            node.last_ack_version = row.last_ack_version
            node.lag = max(0, newest.get(row.node_group, 0) - row.applied_version)
            node.stale = self._nodes.is_stale(row, now)
            # A lease: the replica holding a node's stream marks it seen every heartbeat round.
            # Not seen for the stale interval, nobody vouches for ``connected`` (its replica
            # died, or the stream ended while the database was down and it is not recorded yet).
            node.connected = row.connected and not node.stale
            certificate = certificates.pop(row.node_id, None)
            if certificate is not None:
                node.cert_not_after.FromDatetime(certificate.not_after)
                node.revoked = certificate.revoked
            nodes.append(node)
        # Enrolled but never connected (e.g. it cannot reach the node port): listed too, with
        # what its certificate says and nothing applied, so the operator sees it is missing.
        for node_id, certificate in sorted(certificates.items()):
            if request.group and certificate.group != request.group:
                continue
            node = admin_pb2.Node(
                node_id=node_id,
                node_group=certificate.group,
                mode=convert.mode_proto(certificate.mode),
                site=certificate.site,
                lag=newest.get(certificate.group, 0),
                revoked=certificate.revoked,
            )
            node.cert_not_after.FromDatetime(certificate.not_after)
            nodes.append(node)
        return admin_pb2.ListNodesResponse(
            nodes=nodes,
            latest_version=newest.get(request.group or DEFAULT_GROUP, 0),
            stale_after_seconds=self._nodes.stale_after,
            latest_versions=newest,
        )

    async def GetSnapshot(
        self, request: admin_pb2.GetSnapshotRequest, context: Context
    ) -> admin_pb2.SnapshotInfo:
        group = request.group or DEFAULT_GROUP
        if not request.include_content:
            return convert.snapshot_info(await self._snapshots.get(request.version, group))
        row, snapshot, prefixes = await self._snapshots.content(request.version, group)
        info = convert.snapshot_info(row)
        info.content.CopyFrom(convert.snapshot_content(snapshot, prefixes))
        return info

    async def ExportSnapshot(
        self, request: admin_pb2.ExportSnapshotRequest, context: Context
    ) -> snapshot_pb2.SignedEnvelope:
        row = await self._snapshots.export(request.group or DEFAULT_GROUP)
        envelope = snapshot_pb2.SignedEnvelope()
        envelope.ParseFromString(bytes(row.envelope))
        return envelope

    async def ListSnapshots(
        self, request: admin_pb2.ListSnapshotsRequest, context: Context
    ) -> admin_pb2.ListSnapshotsResponse:
        rows, next_before = await self._snapshots.page(
            request.limit, request.before, request.group or DEFAULT_GROUP
        )
        return admin_pb2.ListSnapshotsResponse(
            snapshots=[convert.snapshot_info(r) for r in rows], next_before=next_before
        )

    async def DiffSnapshots(
        self, request: admin_pb2.DiffSnapshotsRequest, context: Context
    ) -> admin_pb2.DiffSnapshotsResponse:
        return convert.snapshot_diff(
            await self._snapshots.diff(
                request.from_version, request.to_version, request.group or DEFAULT_GROUP
            )
        )

    async def RollbackSnapshot(
        self, request: admin_pb2.RollbackSnapshotRequest, context: Context
    ) -> admin_pb2.RollbackSnapshotResponse:
        if not request.version:
            raise InvalidArgument("version", "must be a stored version (not 0)")
        result = await self._rollback.rollback(
            current_caller(), request.version, request.group or DEFAULT_GROUP
        )
        return admin_pb2.RollbackSnapshotResponse(
            snapshot_version=result.version,
            restored_from=result.restored_from,
            keys_not_restored=list(result.keys_not_restored),
        )

    # ---- signing keys ----

    async def RotateSigningKey(
        self, request: admin_pb2.RotateSigningKeyRequest, context: Context
    ) -> admin_pb2.RotateSigningKeyResponse:
        row, retiring, version = await self._signing_keys.rotate(current_caller())
        return admin_pb2.RotateSigningKeyResponse(
            key=convert.signing_key(row), retiring=retiring, snapshot_version=version
        )

    async def ListSigningKeys(
        self, request: admin_pb2.ListSigningKeysRequest, context: Context
    ) -> admin_pb2.ListSigningKeysResponse:
        rows = await self._signing_keys.list()
        return admin_pb2.ListSigningKeysResponse(keys=[convert.signing_key(r) for r in rows])

    async def RevokeSigningKey(
        self, request: admin_pb2.RevokeSigningKeyRequest, context: Context
    ) -> admin_pb2.RevokeSigningKeyResponse:
        row, version = await self._signing_keys.revoke(current_caller(), request.key_id)
        return admin_pb2.RevokeSigningKeyResponse(key=convert.signing_key(row), snapshot_version=version)

    # ---- node identity ----

    async def CreateEnrollToken(
        self, request: admin_pb2.CreateEnrollTokenRequest, context: Context
    ) -> admin_pb2.CreateEnrollTokenResponse:
        convert.require("group", request.group)
        if request.ttl_seconds > MAX_TOKEN_TTL.total_seconds():  # before timedelta can overflow
            raise InvalidArgument(
                "ttl_seconds", f"must be 1 .. {int(MAX_TOKEN_TTL.total_seconds())} (7 days)"
            )
        row, token = await self._identities.create_token(
            current_caller(),
            group=request.group,
            ttl=timedelta(seconds=request.ttl_seconds),
            mode=request.mode,
            site=request.site,
        )
        return admin_pb2.CreateEnrollTokenResponse(info=convert.enroll_token(row), token=token)

    async def ListEnrollTokens(
        self, request: admin_pb2.ListEnrollTokensRequest, context: Context
    ) -> admin_pb2.ListEnrollTokensResponse:
        rows = await self._identities.list_tokens()
        return admin_pb2.ListEnrollTokensResponse(tokens=[convert.enroll_token(r) for r in rows])

    async def RevokeNode(
        self, request: admin_pb2.RevokeNodeRequest, context: Context
    ) -> admin_pb2.RevokeNodeResponse:
        check_node_id("node_id", request.node_id)
        return admin_pb2.RevokeNodeResponse(
            revoked_certificates=await self._identities.revoke(request.node_id)
        )

    async def CertifyNode(
        self, request: admin_pb2.CertifyNodeRequest, context: Context
    ) -> identity_pb2.NodeCertificate:
        convert.require("csr_pem", request.csr_pem)
        if request.ttl_seconds > MAX_CERT_TTL.total_seconds():  # before timedelta can overflow
            raise InvalidArgument("ttl_seconds", f"at most {int(MAX_CERT_TTL.total_seconds())} (365 days)")
        issued = await self._identities.certify(
            current_caller(),
            node_id=request.node_id,
            csr_pem=request.csr_pem,
            group=request.group,
            ttl=timedelta(seconds=request.ttl_seconds) if request.ttl_seconds else None,
        )
        return certificate_response(issued, self._identities.ca)

    # ---- node groups ----

    async def CreateNodeGroup(
        self, request: admin_pb2.CreateNodeGroupRequest, context: Context
    ) -> admin_pb2.NodeGroup:
        info, _ = await self._groups.create(current_caller(), convert.group_spec(request.group))
        return convert.node_group(info)

    async def GetNodeGroup(
        self, request: admin_pb2.GetNodeGroupRequest, context: Context
    ) -> admin_pb2.NodeGroup:
        convert.require("name", request.name)
        return convert.node_group(await self._groups.get(request.name))

    async def ListNodeGroups(
        self, request: admin_pb2.ListNodeGroupsRequest, context: Context
    ) -> admin_pb2.ListNodeGroupsResponse:
        return admin_pb2.ListNodeGroupsResponse(
            groups=[convert.node_group(g) for g in await self._groups.list()]
        )

    async def UpdateNodeGroup(
        self, request: admin_pb2.UpdateNodeGroupRequest, context: Context
    ) -> admin_pb2.NodeGroup:
        convert.require("name", request.name)
        info, _ = await self._groups.update(current_caller(), request.name, convert.group_change(request))
        return convert.node_group(info)

    async def DeleteNodeGroup(
        self, request: admin_pb2.DeleteNodeGroupRequest, context: Context
    ) -> admin_pb2.DeleteResponse:
        convert.require("name", request.name)
        return admin_pb2.DeleteResponse(
            snapshot_version=await self._groups.delete(current_caller(), request.name)
        )

    # ---- bulk import ----

    async def ImportConfig(
        self, request: admin_pb2.ImportConfigRequest, context: Context
    ) -> admin_pb2.ImportConfigResponse:
        tenants, keys, version = await self._imports.run(current_caller(), request.jsonl)

        def reply() -> admin_pb2.ImportConfigResponse:
            return admin_pb2.ImportConfigResponse(
                tenants=tenants,
                keys=[
                    admin_pb2.ImportedApiKey(line=k.line, key=convert.api_key(k.row), secret=k.secret)
                    for k in keys
                ],
                snapshot_version=version,
            )

        # Tens of thousands of keys: built off the event loop.
        return await asyncio.to_thread(reply)
