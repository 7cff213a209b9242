"""ExplainRoute: a routing decision made on the control plane exactly as a node of the named
group would make it; mixed into ``controlplane.api.admin.AdminServicer``."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import grpc

from controlplane.api import convert
from controlplane.db.models import NodeGroup
from controlplane.errors import NotFound
from controlplane.limits import DEFAULT_GROUP
from controlplane.services.groups import NodeGroupService
from controlplane.services.nodes import NodeService
from controlplane.services.snapshots import SnapshotService
from dataplane.config.model import DeploymentMode, RuntimeConfig
from dataplane.edge import infer as edge
from dataplane.routing.planner import plan_request
from dataplane.routing.query import NodeContext, query_for
from dataplane.routing.table import RouteTable, build_route_table
from dataplane.snapshot.compile import MODE_FROM_PROTO
from dataplane.validation import check_schemas, validate_chat
from signalbox.api.admin.v1 import admin_pb2

Context = grpc.aio.ServicerContext[Any, Any]


class RouteTables:
    """The route tables ExplainRoute built, for the snapshot each group's nodes serve now:
    a table is built once per node context and tenant (~35 ms for one tenant at 1,000
    models), not once per question. Planning reads a table and never changes it.

    At most ``MAX_TABLES`` are held across every group, the least recently asked dropped
    first: a caller's sites and deployments (strings of the request) and the number of groups
    cannot grow it (each group had 256 of its own, and a deleted group's stayed). A group's
    tables go when it has a new snapshot, and the config they were built on with them."""

    MAX_TABLES = 256

    def __init__(self) -> None:
        self._configs: dict[str, RuntimeConfig] = {}
        """Each group's config its held tables were built on (only groups holding some)."""
        self._tables: OrderedDict[tuple[str, NodeContext, str], RouteTable] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tables)

    def get(self, group: str, config: RuntimeConfig, node: NodeContext, tenant_id: str) -> RouteTable:
        if self._configs.get(group) is not config:  # a new snapshot version: start again
            for stale in [key for key in self._tables if key[0] == group]:
                del self._tables[stale]
            self._configs[group] = config
        key = (group, node, tenant_id)
        table = self._tables.get(key)
        if table is not None:
            self._tables.move_to_end(key)
            return table
        table = self._tables[key] = build_route_table(config, node, tenants=(tenant_id,))
        while len(self._tables) > self.MAX_TABLES:
            evicted = self._tables.popitem(last=False)[0][0]
            if all(key[0] != evicted for key in self._tables):
                del self._configs[evicted]  # its last table: the config goes too
        return table


class RoutingAdmin:
    """The routing RPC; the servicer's ``__init__`` sets the services below."""

    _groups: NodeGroupService
    _nodes: NodeService
    _snapshots: SnapshotService
    _route_tables: RouteTables

    async def ExplainRoute(
        self, request: admin_pb2.ExplainRouteRequest, context: Context
    ) -> admin_pb2.ExplainRouteResponse:
        convert.require("tenant", request.tenant)
        group_name = request.node_group or DEFAULT_GROUP
        try:
            group = await self._groups.row(group_name)
        except NotFound:
            raise NotFound("node group", group_name, field="node_group") from None
        # Decided as a node of that group would: on the group's snapshot, in its site.
        config, tenant = await self._snapshots.runtime_for(request.tenant, group.name)
        node = await self._node_context(request, group)
        req = request.request
        # Read, checked and routed exactly as a node would: same conversion, same
        # validation, same query, same planner, same filters.
        chat, hints = edge.decode_chat(req)
        validate_chat(chat, require_messages=False, schemas=False)
        # Schemas are checked as on a node: off this loop, verdicts cached by digest.
        await check_schemas(chat)
        query = query_for(tenant, chat, hints, request_id=req.correlation_id)
        plan = plan_request(self._route_tables.get(group.name, config, node, tenant.id), query)
        return admin_pb2.ExplainRouteResponse(
            decision=edge.routing_to_proto(plan, plan.chosen, []),
            plan=[c.label for c in plan.ordered],
            arm=plan.arm,
            shadow=plan.shadow.label if plan.shadow is not None else "",
            estimated_input_tokens=query.estimated_input_tokens,
        )

    async def _node_context(self, request: admin_pb2.ExplainRouteRequest, group: NodeGroup) -> NodeContext:
        """The node to decide as: what the request names, else its group's or the fleet's (see the proto)."""
        mode = MODE_FROM_PROTO.get(request.mode)
        if mode is None and request.node_group:
            mode = DeploymentMode(group.mode)
        if mode is None:
            # The mode the whole fleet declares, without reading every node of it per call.
            only = await self._nodes.only_mode()
            declared = MODE_FROM_PROTO.get(only) if only is not None else None
            mode = declared if declared is not None else DeploymentMode.CLOUD
        return NodeContext(
            mode=mode,
            site=request.site or group.site,
            deployment=request.deployment or group.deployment,
            node_group=group.name,
        )
