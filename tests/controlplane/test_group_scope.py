"""``scope_snapshot``: what one node group sees of the full snapshot (a pure function)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from controlplane.snapshots.scope import GroupView, describe, reachable, scope_snapshot
from dataplane.config.model import DeploymentMode
from dataplane.snapshot.layout import make_layout, scan
from signalbox.api.config.v1 import snapshot_pb2

PUBLIC = snapshot_pb2.PROVIDER_LOCATION_PUBLIC_CLOUD
ON_PREM = snapshot_pb2.PROVIDER_LOCATION_ON_PREM
SITE = snapshot_pb2.PROVIDER_LOCATION_SITE


def _full() -> snapshot_pb2.Snapshot:
    return snapshot_pb2.Snapshot(
        version=7,
        created_at=Timestamp(seconds=1000),
        expires_at=Timestamp(seconds=2000),
        previous_hash=b"p" * 32,
        tenants=[snapshot_pb2.Tenant(id="t1", name="acme"), snapshot_pb2.Tenant(id="t2", name="beta")],
        api_keys=[
            snapshot_pb2.ApiKey(id="k1", tenant_id="t1", secret_sha256=b"1" * 32),
            snapshot_pb2.ApiKey(id="k2", tenant_id="t2", secret_sha256=b"2" * 32),
        ],
        providers=[
            snapshot_pb2.Provider(id="p-cloud", name="openai", location=PUBLIC),
            snapshot_pb2.Provider(id="p-unspecified", name="legacy"),
            snapshot_pb2.Provider(id="p-prem", name="dc", location=ON_PREM),
            snapshot_pb2.Provider(id="p-a", name="vllm-a", location=SITE, site="site-a"),
            snapshot_pb2.Provider(id="p-b", name="vllm-b", location=SITE, site="site-b"),
        ],
        models=[
            snapshot_pb2.Model(
                id="m1",
                alias="small",
                deployments=[
                    snapshot_pb2.Deployment(id="d1", provider_id="p-cloud"),
                    snapshot_pb2.Deployment(id="d2", provider_id="p-a"),
                ],
            ),
            snapshot_pb2.Model(
                id="m2", alias="far", deployments=[snapshot_pb2.Deployment(provider_id="p-b")]
            ),
            snapshot_pb2.Model(id="m3", alias="bare"),
        ],
        policies=[
            snapshot_pb2.Policy(id="pd", tenant_id="", document_json="{}"),
            snapshot_pb2.Policy(id="p1", tenant_id="t1", document_json="{}"),
            snapshot_pb2.Policy(id="p2", tenant_id="t2", document_json="{}"),
        ],
        trusted_keys=[snapshot_pb2.TrustedKey(key_id="kid", ed25519_public_key=b"k" * 32)],
    )


def test_a_group_that_sees_everything_gets_everything_with_its_scope() -> None:
    group = GroupView("default", deployment="eu")
    scoped = scope_snapshot(_full(), group)
    assert scoped.scope == snapshot_pb2.Scope(deployment="eu", node_group="default")
    expected = _full()
    expected.scope.CopyFrom(scoped.scope)
    assert scoped == expected


def test_an_air_gapped_group_keeps_only_the_providers_of_its_own_site() -> None:
    scoped = scope_snapshot(_full(), GroupView("vault", DeploymentMode.AIR_GAPPED, site="site-a"))
    assert [p.name for p in scoped.providers] == ["vllm-a"]
    assert scoped.scope.site == "site-a"
    # small keeps its site-a deployment only; far (site-b only) is gone; bare had none to lose.
    models = {m.alias: m for m in scoped.models}
    assert sorted(models) == ["bare", "small"]
    assert [d.provider_id for d in models["small"].deployments] == ["p-a"]
    # The full snapshot is not changed by the cut.
    assert len(_full().models[0].deployments) == 2


def test_reachability_is_the_routing_rule() -> None:
    full = _full()
    vault = GroupView("vault", DeploymentMode.AIR_GAPPED, site="site-a")
    prem = GroupView("prem", DeploymentMode.ON_PREM, site="site-a")
    cloud = GroupView("cloud")
    assert [p.id for p in full.providers if reachable(p, vault)] == ["p-a"]
    # A policy may allow an on-prem node egress, so it could use every provider.
    assert [p.id for p in full.providers if reachable(p, prem)] == [p.id for p in full.providers]
    assert all(reachable(p, cloud) for p in full.providers)


def test_lists_name_tenants_providers_and_models_by_id_or_name() -> None:
    group = GroupView(
        "acme-only",
        tenants=frozenset({"acme"}),
        providers=frozenset({"p-cloud", "vllm-b"}),
        models=frozenset({"small", "m2"}),
    )
    scoped = scope_snapshot(_full(), group)
    assert [t.name for t in scoped.tenants] == ["acme"]
    assert [k.id for k in scoped.api_keys] == ["k1"]  # keys follow their tenant
    # The platform default policy is in every group; beta's policy left with beta.
    assert [p.tenant_id for p in scoped.policies] == ["", "t1"]
    assert [p.id for p in scoped.providers] == ["p-cloud", "p-b"]
    assert {m.alias: [d.provider_id for d in m.deployments] for m in scoped.models} == {
        "small": ["p-cloud"],
        "far": ["p-b"],
    }
    assert list(scoped.trusted_keys) == list(_full().trusted_keys)


def test_a_provider_listed_but_unreachable_stays_out() -> None:
    group = GroupView(
        "vault", DeploymentMode.AIR_GAPPED, site="site-a", providers=frozenset({"openai", "vllm-a"})
    )
    assert [p.name for p in scope_snapshot(_full(), group).providers] == ["vllm-a"]


def _payload(snapshot: snapshot_pb2.Snapshot) -> bytes:
    return snapshot.SerializeToString(deterministic=True)


def test_the_body_ignores_what_every_reissue_changes() -> None:
    """The publisher compares layouts (``Layout.body_equals``) to skip unchanged groups."""
    one, two = _full(), _full()
    two.version, two.previous_hash = 2**40, b"h" * 32
    two.created_at.seconds, two.expires_at.seconds = 100, 2**33
    assert scan(_payload(one)).body_equals(scan(_payload(two)))
    two.ClearField("previous_hash")
    two.ClearField("version")
    assert scan(_payload(one)).body_equals(scan(_payload(two)))
    two.scope.node_group = "vault"  # the scope is config: it counts
    assert not scan(_payload(one)).body_equals(scan(_payload(two)))
    two.scope.node_group = ""
    two.tenants[0].tier = "gold"
    assert not scan(_payload(one)).body_equals(scan(_payload(two)))


def test_header_then_records_is_the_whole_payload() -> None:
    """The publisher signs the header bytes followed by the records: that must be the message."""
    full = _full()
    header = snapshot_pb2.Snapshot(
        version=full.version,
        created_at=full.created_at,
        expires_at=full.expires_at,
        previous_hash=full.previous_hash,
    )
    if full.HasField("scope"):
        header.scope.CopyFrom(full.scope)
    layout = make_layout(header, scan(_payload(full)).records)
    assert layout.payload() == _payload(full)
    assert snapshot_pb2.Snapshot.FromString(layout.payload()) == full


def test_describe_names_the_policy_and_model_at_a_path() -> None:
    full = _full()
    assert describe(full, "$.policies[1].allowed_models[0]") == "the policy of tenant 'acme' (version 0)"
    assert describe(full, "$.policies[0]") == "the platform default policy (version 0)"
    assert describe(full, "$.models[1].deployments[0]") == "model 'far'"
    assert describe(full, "$.policies[9]") == "$.policies[9]"
    assert describe(full, "$.tenants[0]") == "$.tenants[0]"
