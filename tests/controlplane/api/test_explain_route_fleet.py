"""ExplainRoute without a mode or node group decides in the mode every registered node
declares: finding it read every node row on each call, unbounded work per admin call on
a large fleet. It is now two index reads (``tests.fixtures.plans`` counts them), with the
same answer."""

from __future__ import annotations

import grpc

from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.common.v1 import common_pb2
from signalbox.api.infer.v1 import infer_pb2
from tests.controlplane.conftest import Admin
from tests.fixtures.plans import rows_read, statements
from tests.fixtures.postgres import RunningControlPlane, sql_execute

FLEET = 3000


def _register(database_url: str, prefix: str, count: int, mode: int) -> None:
    """``count`` nodes that declared ``mode``, as config sync stores them."""
    sql_execute(
        database_url,
        "INSERT INTO nodes (node_id, software_version, mode, scope, applied_version, applied_hash, "
        "last_ack_version, last_nack_version, last_nack_hash, last_nack_reason, connected) "
        f"SELECT '{prefix}-' || i, '', {mode}, '{{}}', 0, '', 0, 0, '', '', true "
        f"FROM generate_series(1, {count}) AS i",
        "ANALYZE nodes",  # as autovacuum would
    )


async def test_explain_route_as_the_fleet_reads_a_bounded_part_of_it(
    admin: Admin, control_plane: RunningControlPlane
) -> None:
    await admin.seed()
    await admin.ApplyPolicy(
        admin_pb2.ApplyPolicyRequest(tenant="acme", document='{"default_model": "large"}')
    )
    url = control_plane.database_url
    asked = admin_pb2.ExplainRouteRequest(tenant="acme", request=infer_pb2.InferRequest())

    async def explained(mode: int = common_pb2.DEPLOYMENT_MODE_UNSPECIFIED) -> tuple[object, int]:
        """The answer (a response, or the refusal's code and message), and the node rows read."""
        request = admin_pb2.ExplainRouteRequest()
        request.CopyFrom(asked)
        request.mode = mode  # type: ignore[assignment]
        answer: object
        with statements() as sent:
            try:
                answer = await admin.ExplainRoute(request)
            except grpc.aio.AioRpcError as refused:
                answer = (refused.code(), refused.details())
        return answer, rows_read(url, sent, "nodes")

    as_cloud, _ = await explained(common_pb2.DEPLOYMENT_MODE_CLOUD)
    as_on_prem, _ = await explained(common_pb2.DEPLOYMENT_MODE_ON_PREM)
    # On-prem, the policy allows no egress to the only provider, a public cloud one.
    assert as_on_prem != as_cloud, "the mode decides this request"

    _register(url, "on-prem", FLEET, common_pb2.DEPLOYMENT_MODE_ON_PREM)
    fleet, read = await explained()
    assert fleet == as_on_prem, "every node declares on-prem"
    assert read <= 4, read

    _register(url, "cloud", 1, common_pb2.DEPLOYMENT_MODE_CLOUD)
    fleet, read = await explained()
    assert fleet == as_cloud, "the nodes' modes differ: cloud"
    assert read <= 4, read
