"""``signalbox admin node|snapshot|group|signing-key``: what the fleet is served. Nodes and
their identity, snapshots, node groups and the keys that sign snapshots."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dataplane.providers.sealing import decode_public_key
from dataplane.snapshot.files import atomic_write
from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.common.v1 import common_pb2
from signalbox.shell.admin_cli.commands.base import Stub, enum_value
from signalbox.shell.admin_cli.output import (
    ENROLL_TOKEN_COLUMNS,
    GROUP_COLUMNS,
    NODE_COLUMNS,
    SIGNING_KEY_COLUMNS,
    SNAPSHOT_COLUMNS,
    SNAPSHOT_LIST_COLUMNS,
    Output,
    deleted,
    enroll_token_row,
    group_row,
    node_row,
    signing_key_row,
    snapshot_content,
    snapshot_list_row,
    snapshot_row,
    table,
)
from signalbox.shell.admin_cli.output import snapshot_diff as render_diff

# ---- nodes and snapshots ----


async def node_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListNodes(admin_pb2.ListNodesRequest(group=ns.group or ""))
    return Output(r, NODE_COLUMNS, [node_row(n) for n in r.nodes])


async def node_enroll_token(stub: Stub, ns: argparse.Namespace) -> Output:
    if ns.action == "list":
        r = await stub.ListEnrollTokens(admin_pb2.ListEnrollTokensRequest())
        return Output(r, ENROLL_TOKEN_COLUMNS, [enroll_token_row(t) for t in r.tokens])
    if not ns.group:
        raise SystemExit("node enroll-token: --group: required")
    created = await stub.CreateEnrollToken(
        admin_pb2.CreateEnrollTokenRequest(
            group=ns.group, ttl_seconds=max(1, round(ns.ttl)), mode=ns.mode, site=ns.site
        )
    )
    info = created.info
    print(
        f"enrollment token {info.id} for group {info.group!r}, single use, valid until "
        f"{info.expires_at.ToDatetime():%Y-%m-%d %H:%M:%S} UTC (shown once; give it to the node as "
        "SIGNALBOX_ENROLL_TOKEN or a file, not on its command line):",
        file=sys.stderr,
    )
    # The token alone on stdout, so `TOKEN=$(signalbox admin node enroll-token ...)` works.
    return Output(created, text=created.token + "\n")


async def node_revoke(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.RevokeNode(admin_pb2.RevokeNodeRequest(node_id=ns.node_id))
    return Output(r, text=f"revoked {r.revoked_certificates} certificates of node {ns.node_id}\n")


MAX_CSR_FILE_BYTES = 16 * 1024


async def node_certify(stub: Stub, ns: argparse.Namespace) -> Output:
    csr = _read_small(ns.csr, "--csr", MAX_CSR_FILE_BYTES)
    issued = await stub.CertifyNode(
        admin_pb2.CertifyNodeRequest(
            node_id=ns.node_id, csr_pem=csr, group=ns.group, ttl_seconds=round(ns.ttl)
        )
    )
    # The node's certificate first, then the node CA: what `dataplane identity install` reads.
    bundle = issued.certificate_pem.rstrip("\n") + "\n" + issued.ca_pem.rstrip("\n") + "\n"
    until = f"{issued.not_after.ToDatetime():%Y-%m-%d %H:%M:%S} UTC"
    if ns.out is None:
        return Output(issued, text=bundle)
    atomic_write(ns.out, bundle.encode())
    return Output(issued, text=f"certificate {issued.serial} for node {ns.node_id} until {until}: {ns.out}\n")


def _read_small(path: Path, flag: str, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise SystemExit(f"{flag}: cannot read {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise SystemExit(f"{flag}: {path} is larger than {limit} bytes")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise SystemExit(f"{flag}: {path} is not UTF-8 text") from None


async def snapshot_show(stub: Stub, ns: argparse.Namespace) -> Output:
    version = ns.version_arg or ns.version or 0
    s = await stub.GetSnapshot(
        admin_pb2.GetSnapshotRequest(version=version, include_content=True, group=ns.group)
    )
    return Output(s, SNAPSHOT_COLUMNS, [snapshot_row(s)], text=snapshot_content(s))


async def snapshot_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListSnapshots(
        admin_pb2.ListSnapshotsRequest(limit=ns.limit or 0, before=ns.before or 0, group=ns.group)
    )
    out = Output(r, SNAPSHOT_LIST_COLUMNS, [snapshot_list_row(s) for s in r.snapshots])
    if r.next_before:
        out.text = f"{table(out.headers, out.rows)}\n(more: --before {r.next_before})\n"
    return out


async def snapshot_diff(stub: Stub, ns: argparse.Namespace) -> Output:
    d = await stub.DiffSnapshots(
        admin_pb2.DiffSnapshotsRequest(from_version=ns.a, to_version=ns.b, group=ns.group)
    )
    return Output(d, text=render_diff(d))


async def snapshot_rollback(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.RollbackSnapshot(admin_pb2.RollbackSnapshotRequest(version=ns.version, group=ns.group))
    which = "" if ns.group == "default" else f"group {ns.group} "
    text = f"rolled back {which}to v{r.restored_from}: published v{r.snapshot_version}\n"
    if r.keys_not_restored:
        text += "API keys deleted since stay deleted: " + ", ".join(r.keys_not_restored) + "\n"
    return Output(r, text=text)


# ---- node groups ----


def _selection(names: Sequence[str] | None, every: bool, flag: str) -> admin_pb2.Selection | None:
    """``--FLAG`` (repeatable) lists; ``--all-FLAGs`` selects everything; neither: None."""
    if every and names:
        raise SystemExit(f"--{flag}: not with --all-{flag}s")
    if every:
        return admin_pb2.Selection(all=True)
    return admin_pb2.Selection(names=list(names)) if names else None


def _group_lists(ns: argparse.Namespace) -> dict[str, admin_pb2.Selection]:
    out = {}
    for kind, flag in (("tenants", "tenant"), ("providers", "provider"), ("models", "model")):
        selection = _selection(getattr(ns, kind), getattr(ns, f"all_{kind}"), flag)
        if selection is not None:
            out[kind] = selection
    return out


def _mode(name: str) -> Any:
    return enum_value(common_pb2.DeploymentMode, "DEPLOYMENT_MODE_", name, "--mode")


def _public_key(text: str) -> bytes:
    try:
        return decode_public_key(text, "--sealing-public-key")
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


async def group_create(stub: Stub, ns: argparse.Namespace) -> Output:
    group = admin_pb2.NodeGroup(
        name=ns.name, mode=_mode(ns.mode or "cloud"), site=ns.site or "", deployment=ns.deployment or ""
    )
    for kind, selection in _group_lists(ns).items():
        getattr(group, kind).CopyFrom(selection)
    if ns.sealing_public_key is not None:
        group.sealing_public_key = _public_key(ns.sealing_public_key)
    g = await stub.CreateNodeGroup(admin_pb2.CreateNodeGroupRequest(group=group))
    return Output(g, GROUP_COLUMNS, [group_row(g)])


async def group_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListNodeGroups(admin_pb2.ListNodeGroupsRequest())
    return Output(r, GROUP_COLUMNS, [group_row(g) for g in r.groups])


async def group_show(stub: Stub, ns: argparse.Namespace) -> Output:
    g = await stub.GetNodeGroup(admin_pb2.GetNodeGroupRequest(name=ns.name))
    return Output(g, GROUP_COLUMNS, [group_row(g)])


async def group_update(stub: Stub, ns: argparse.Namespace) -> Output:
    request = admin_pb2.UpdateNodeGroupRequest(name=ns.name)
    for kind, selection in _group_lists(ns).items():
        getattr(request, kind).CopyFrom(selection)
    if ns.mode is not None:
        request.mode = _mode(ns.mode)
    if ns.site is not None:
        request.site = ns.site
    if ns.deployment is not None:
        request.deployment = ns.deployment
    if ns.sealing_public_key is not None:
        request.sealing_public_key = _public_key(ns.sealing_public_key)
    g = await stub.UpdateNodeGroup(request)
    return Output(g, GROUP_COLUMNS, [group_row(g)])


async def group_delete(stub: Stub, ns: argparse.Namespace) -> Output:
    return deleted(await stub.DeleteNodeGroup(admin_pb2.DeleteNodeGroupRequest(name=ns.name)))


# ---- signing keys ----


async def signing_key_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListSigningKeys(admin_pb2.ListSigningKeysRequest())
    return Output(r, SIGNING_KEY_COLUMNS, [signing_key_row(k) for k in r.keys])


async def signing_key_rotate(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.RotateSigningKey(admin_pb2.RotateSigningKeyRequest())
    text = f"new active signing key {r.key.key_id} (published v{r.snapshot_version})\n"
    if r.retiring:
        text += "still signing until revoked: " + ", ".join(r.retiring) + "\n"
    return Output(r, text=text)


async def signing_key_revoke(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.RevokeSigningKey(admin_pb2.RevokeSigningKeyRequest(key_id=ns.key_id))
    return Output(r, text=f"revoked signing key {r.key.key_id} (published v{r.snapshot_version})\n")
