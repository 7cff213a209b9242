"""``signalbox admin --target ADDR --token TOKEN <resource> <verb>``: the Admin API from a shell.

Human-readable tables by default, ``--json`` for machines. A gRPC error becomes
one line on stderr and an exit code from ``EXIT_CODES``.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from dataplane.scopes import ScopeSyntaxError, validate_scopes
from signalbox import settings, tls
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.common.v1 import common_pb2
from signalbox.api.config.v1 import snapshot_pb2
from signalbox.api.infer.v1 import infer_pb2
from signalbox.text import printable

COMMAND = "admin"

EXIT_CODES: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 2,
    grpc.StatusCode.UNAUTHENTICATED: 3,
    grpc.StatusCode.PERMISSION_DENIED: 4,
    grpc.StatusCode.NOT_FOUND: 5,
    grpc.StatusCode.ALREADY_EXISTS: 6,
    grpc.StatusCode.FAILED_PRECONDITION: 7,
    grpc.StatusCode.UNAVAILABLE: 8,
}

# The AdminService stub with token and deadline bound (``_with_call_options``); grpc-stubs
# types stubs as synchronous, which grpc.aio ones are not.
Stub = Any
Action = Callable[[Stub, argparse.Namespace], Coroutine[Any, Any, "Output"]]


class Output:
    """What a command prints: the message (for --json) and, for people, a table or ``text``."""

    def __init__(
        self,
        message: Message,
        headers: Sequence[str] = (),
        rows: Sequence[Sequence[object]] = (),
        text: str | None = None,
    ):
        self.message = message
        self.headers = headers
        self.rows = rows
        self.text = text


def _pairs(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag}: expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _enum(enum: Any, prefix: str, name: str, flag: str) -> Any:  # the enum's ValueType
    try:
        return int(enum.Value(prefix + name.upper().replace("-", "_")))
    except ValueError:
        names: list[str] = list(enum.keys())
        known = ", ".join(n.removeprefix(prefix).lower() for n in names if not n.endswith("UNSPECIFIED"))
        raise SystemExit(f"{flag}: unknown value {name!r} (known: {known})") from None


def _enum_name(enum: Any, prefix: str, value: int) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h).upper() for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


# ---- rows ----

TENANT_COLUMNS = ("id", "name", "tier", "active", "labels")
KEY_COLUMNS = ("id", "tenant", "name", "prefix", "scopes", "expires")
PROVIDER_COLUMNS = ("id", "name", "type", "base_url", "credential", "location")
MODEL_COLUMNS = ("id", "alias", "capabilities", "context", "deployments")
POLICY_COLUMNS = ("tenant", "version", "created_by", "created_at", "document")
NODE_COLUMNS = ("node", "version", "mode", "applied", "connected", "last_nack", "reason", "last_seen")
SNAPSHOT_COLUMNS = ("version", "sha256", "created_at", "key_id", "bytes")


def _time(ts: Any) -> str:
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if ts.seconds else ""


def tenant_row(t: admin_pb2.Tenant) -> tuple[object, ...]:
    return (t.id, t.name, t.tier, "yes" if t.active else "no", json.dumps(dict(t.labels), sort_keys=True))


def _scopes(scopes: Sequence[str]) -> str:
    """A key's scopes for a table, comma-separated; a key without scopes is unrestricted."""
    return ",".join(sorted(scopes)) or "unrestricted"


def key_row(k: admin_pb2.ApiKey) -> tuple[object, ...]:
    return (k.id, k.tenant_id, k.name, k.prefix + "...", _scopes(k.scopes), _time(k.expires_at))


def provider_row(p: admin_pb2.Provider) -> tuple[object, ...]:
    cred = (
        f"env:{p.credential.env}"
        if p.credential.env
        else (f"file:{p.credential.file}" if p.credential.file else "")
    )
    location = _enum_name(snapshot_pb2.ProviderLocation, "PROVIDER_LOCATION_", p.location)
    return (p.id, p.name, p.type, p.base_url, cred, location)


def model_row(m: admin_pb2.Model) -> tuple[object, ...]:
    caps = ",".join(_enum_name(common_pb2.Capability, "CAPABILITY_", c) for c in m.capabilities)
    deployments = ", ".join(f"{d.provider}:{d.upstream_model}x{d.weight}" for d in m.deployments)
    return (m.id, m.alias, caps, m.context_window, deployments)


def policy_row(p: admin_pb2.Policy) -> tuple[object, ...]:
    return (
        p.tenant_id or "(default)",
        p.version,
        p.created_by,
        _time(p.created_at),
        p.document_json or "(deleted)",
    )


def node_row(n: admin_pb2.Node) -> tuple[object, ...]:
    mode = _enum_name(common_pb2.DeploymentMode, "DEPLOYMENT_MODE_", n.mode)
    # What nodes said is shown escaped: a control plane of another version may store it raw.
    return (
        printable(n.node_id),
        printable(n.software_version, 100),
        mode,
        f"v{n.applied_version} {n.applied_hash.hex()[:12]}",
        "yes" if n.connected else "no",
        f"v{n.last_nack_version}" if n.last_nack_version else "",
        printable(n.last_nack_reason, 200),
        _time(n.last_seen_at),
    )


def snapshot_row(s: admin_pb2.SnapshotInfo) -> tuple[object, ...]:
    return (s.version, s.payload_sha256.hex(), _time(s.created_at), s.signing_key_id, s.size_bytes)


def deleted(response: admin_pb2.DeleteResponse) -> Output:
    return Output(response, ("snapshot_version",), [(response.snapshot_version,)])


# ---- tenants ----


async def tenant_create(stub: Stub, ns: argparse.Namespace) -> Output:
    t = await stub.CreateTenant(
        admin_pb2.CreateTenantRequest(name=ns.name, tier=ns.tier or "", labels=_pairs(ns.label, "--label"))
    )
    return Output(t, TENANT_COLUMNS, [tenant_row(t)])


async def tenant_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListTenants(admin_pb2.ListTenantsRequest())
    return Output(r, TENANT_COLUMNS, [tenant_row(t) for t in r.tenants])


async def tenant_get(stub: Stub, ns: argparse.Namespace) -> Output:
    t = await stub.GetTenant(admin_pb2.GetTenantRequest(tenant=ns.name))
    return Output(t, TENANT_COLUMNS, [tenant_row(t)])


async def tenant_update(stub: Stub, ns: argparse.Namespace) -> Output:
    request = admin_pb2.UpdateTenantRequest(
        tenant=ns.name, labels=_pairs(ns.label, "--label"), replace_labels=ns.replace_labels
    )
    if ns.tier is not None:
        request.tier = ns.tier
    if ns.active is not None:
        request.active = ns.active
    t = await stub.UpdateTenant(request)
    return Output(t, TENANT_COLUMNS, [tenant_row(t)])


async def tenant_delete(stub: Stub, ns: argparse.Namespace) -> Output:
    return deleted(await stub.DeleteTenant(admin_pb2.DeleteTenantRequest(tenant=ns.name)))


# ---- API keys ----


async def key_create(stub: Stub, ns: argparse.Namespace) -> Output:
    scopes = ns.scope or []
    try:
        validate_scopes(scopes)  # the grammar the control plane and nodes apply
    except ScopeSyntaxError as exc:
        raise SystemExit(f"--scope: {exc}") from None
    r = await stub.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(tenant=ns.tenant, name=ns.name or "", scopes=scopes)
    )
    # The secret is the last column, so scripts can take it with `tail -1 | awk '{print $NF}'`.
    return Output(
        r,
        ("id", "tenant", "prefix", "scopes", "secret (shown once)"),
        [(r.key.id, r.key.tenant_id, r.key.prefix, _scopes(r.key.scopes), r.secret)],
    )


async def key_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListApiKeys(admin_pb2.ListApiKeysRequest(tenant=ns.tenant or ""))
    return Output(r, KEY_COLUMNS, [key_row(k) for k in r.keys])


async def key_delete(stub: Stub, ns: argparse.Namespace) -> Output:
    return deleted(await stub.DeleteApiKey(admin_pb2.DeleteApiKeyRequest(id=ns.id)))


# ---- providers ----


def _provider(ns: argparse.Namespace) -> admin_pb2.Provider:
    if ns.credential_env and ns.credential_file:
        raise SystemExit("--credential-env and --credential-file: give one, not both")
    credential = snapshot_pb2.SecretRef()
    if ns.credential_env:
        credential.env = ns.credential_env
    elif ns.credential_file:
        credential.file = ns.credential_file
    return admin_pb2.Provider(
        name=ns.name,
        type=ns.type,
        base_url=ns.base_url or "",
        credential=credential,
        settings=_pairs(ns.setting, "--setting"),
        timeout_ms=ns.timeout_ms or 0,
        location=_enum(snapshot_pb2.ProviderLocation, "PROVIDER_LOCATION_", ns.location, "--location"),
        site=ns.site or "",
        region=ns.region or "",
        jurisdiction=ns.jurisdiction or "",
    )


async def provider_create(stub: Stub, ns: argparse.Namespace) -> Output:
    p = await stub.CreateProvider(admin_pb2.CreateProviderRequest(provider=_provider(ns)))
    return Output(p, PROVIDER_COLUMNS, [provider_row(p)])


async def provider_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListProviders(admin_pb2.ListProvidersRequest())
    return Output(r, PROVIDER_COLUMNS, [provider_row(p) for p in r.providers])


async def provider_update(stub: Stub, ns: argparse.Namespace) -> Output:
    p = await stub.UpdateProvider(admin_pb2.UpdateProviderRequest(provider=_provider(ns)))
    return Output(p, PROVIDER_COLUMNS, [provider_row(p)])


async def provider_delete(stub: Stub, ns: argparse.Namespace) -> Output:
    return deleted(await stub.DeleteProvider(admin_pb2.DeleteProviderRequest(provider=ns.name)))


# ---- models ----


def _deployment(text: str) -> admin_pb2.Deployment:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise SystemExit(f"--deployment: expected PROVIDER:UPSTREAM_MODEL[:WEIGHT], got {text!r}")
    weight = int(parts[2]) if len(parts) == 3 else 1
    return admin_pb2.Deployment(provider=parts[0], upstream_model=parts[1], weight=weight)


def _model(ns: argparse.Namespace) -> admin_pb2.Model:
    return admin_pb2.Model(
        alias=ns.alias,
        deployments=[_deployment(d) for d in ns.deployment or ()],
        capabilities=[
            _enum(common_pb2.Capability, "CAPABILITY_", c, "--capability") for c in ns.capability or ()
        ],
        context_window=ns.context_window or 0,
        max_output_tokens=ns.max_output_tokens or 0,
        input_price_nanos_per_mtok=ns.input_price or 0,
        output_price_nanos_per_mtok=ns.output_price or 0,
        attributes=_pairs(ns.attribute, "--attribute"),
    )


async def model_create(stub: Stub, ns: argparse.Namespace) -> Output:
    m = await stub.CreateModel(admin_pb2.CreateModelRequest(model=_model(ns)))
    return Output(m, MODEL_COLUMNS, [model_row(m)])


async def model_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListModels(admin_pb2.ListModelsRequest())
    return Output(r, MODEL_COLUMNS, [model_row(m) for m in r.models])


async def model_update(stub: Stub, ns: argparse.Namespace) -> Output:
    m = await stub.UpdateModel(admin_pb2.UpdateModelRequest(model=_model(ns)))
    return Output(m, MODEL_COLUMNS, [model_row(m)])


async def model_delete(stub: Stub, ns: argparse.Namespace) -> Output:
    return deleted(await stub.DeleteModel(admin_pb2.DeleteModelRequest(model=ns.alias)))


# ---- policies ----


async def policy_apply(stub: Stub, ns: argparse.Namespace) -> Output:
    document = sys.stdin.read() if ns.file == "-" else await asyncio.to_thread(Path(ns.file).read_text)
    p = await stub.ApplyPolicy(admin_pb2.ApplyPolicyRequest(tenant=ns.tenant or "", document=document))
    return Output(p, POLICY_COLUMNS, [policy_row(p)])


async def policy_get(stub: Stub, ns: argparse.Namespace) -> Output:
    p = await stub.GetPolicy(admin_pb2.GetPolicyRequest(tenant=ns.tenant or "", version=ns.version or 0))
    return Output(p, POLICY_COLUMNS, [policy_row(p)])


async def policy_history(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListPolicyHistory(admin_pb2.ListPolicyHistoryRequest(tenant=ns.tenant or ""))
    return Output(r, POLICY_COLUMNS, [policy_row(p) for p in r.versions])


def _pretty_lines(p: admin_pb2.Policy) -> list[str]:
    pretty = json.dumps(json.loads(p.document_json), indent=2, sort_keys=True, ensure_ascii=False)
    return (pretty + "\n").splitlines(keepends=True)


async def policy_diff(stub: Stub, ns: argparse.Namespace) -> Output:
    tenant = ns.tenant or ""
    newer = await stub.GetPolicy(admin_pb2.GetPolicyRequest(tenant=tenant, version=ns.to or 0))
    older_version = ns.from_
    if older_version is None:
        # The stored version before it (deletion markers have no document to compare).
        history = await stub.ListPolicyHistory(admin_pb2.ListPolicyHistoryRequest(tenant=tenant))
        earlier = [p.version for p in history.versions if p.version < newer.version and p.document_json]
        if not earlier:
            raise SystemExit(f"policy diff: no version before v{newer.version} to compare with")
        older_version = earlier[-1]
    older = await stub.GetPolicy(admin_pb2.GetPolicyRequest(tenant=tenant, version=older_version))
    name = f"policy of {tenant}" if tenant else "platform default policy"
    diff = difflib.unified_diff(
        _pretty_lines(older),
        _pretty_lines(newer),
        fromfile=f"{name} v{older.version}",
        tofile=f"{name} v{newer.version}",
    )
    return Output(admin_pb2.ListPolicyHistoryResponse(versions=[older, newer]), text="".join(diff))


async def policy_delete(stub: Stub, ns: argparse.Namespace) -> Output:
    return deleted(await stub.DeletePolicy(admin_pb2.DeletePolicyRequest(tenant=ns.tenant or "")))


# ---- nodes and snapshots ----


async def node_list(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListNodes(admin_pb2.ListNodesRequest())
    return Output(r, NODE_COLUMNS, [node_row(n) for n in r.nodes])


async def snapshot_show(stub: Stub, ns: argparse.Namespace) -> Output:
    s = await stub.GetSnapshot(admin_pb2.GetSnapshotRequest(version=ns.version or 0))
    return Output(s, SNAPSHOT_COLUMNS, [snapshot_row(s)])


# ---- routing ----


async def route_explain(stub: Stub, ns: argparse.Namespace) -> Output:
    request = infer_pb2.InferRequest(
        model=ns.model or "",
        task=ns.task or "",
        required_capabilities=[
            _enum(common_pb2.Capability, "CAPABILITY_", c, "--capability") for c in ns.capability or ()
        ],
        data_classification=_enum(
            common_pb2.DataClassification,
            "DATA_CLASSIFICATION_",
            ns.data_classification or "unspecified",
            "--data-classification",
        ),
        metadata=_pairs(ns.metadata, "--metadata"),
        correlation_id=ns.correlation_id or "",
        messages=[
            infer_pb2.Message(role=infer_pb2.ROLE_USER, content=[infer_pb2.ContentPart(text=text)])
            for text in ns.message or ()
        ],
    )
    if ns.max_output_tokens is not None:
        request.params.max_output_tokens = ns.max_output_tokens
    r = await stub.ExplainRoute(admin_pb2.ExplainRouteRequest(tenant=ns.tenant, request=request))
    return Output(r, text=explanation(r))


def explanation(r: admin_pb2.ExplainRouteResponse) -> str:
    """The decision for people: one labelled line per fact, one line per dropped candidate."""
    d = r.decision
    lines: list[tuple[str, str]] = [
        ("policy", f"{d.policy_id} v{d.policy_version}"),
        ("rule", d.rule),
        ("strategy", d.strategy),
        ("reason", d.reason),
        ("input tokens", f"{r.estimated_input_tokens} (estimated)"),
        ("considered", ", ".join(d.candidates)),
    ]
    lines += [("dropped", f"{x.model}: {x.reason}") for x in d.dropped] or [("dropped", "(none)")]
    lines.append(("chosen", f"{r.plan[0]} (deployment {d.chosen_deployment})" if r.plan else "(none)"))
    lines += [("fallback", f"{i}. {label}") for i, label in enumerate(r.plan[1:], 1)] or [
        ("fallback", "(none)")
    ]
    lines.append(("split arm", r.arm or "(none)"))
    lines.append(("shadow", r.shadow or "(none)"))
    width = max(len(label) for label, _ in lines)
    return "".join(f"{label.ljust(width)}  {value}\n" for label, value in lines)


# ---- wiring ----


def _verb(
    resource: argparse._SubParsersAction[argparse.ArgumentParser], name: str, action: Action, help: str
) -> argparse.ArgumentParser:
    parser = resource.add_parser(name, help=help)
    parser.set_defaults(admin_action=action)
    return parser


def _resource(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    parser = sub.add_parser(name, help=help)
    return parser.add_subparsers(dest=f"{name}_verb", required=True, metavar="VERB")


def _provider_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("--type", required=True, help="adapter type, e.g. openai, openai_compatible, simulated")
    p.add_argument("--base-url")
    p.add_argument("--credential-env", help="env var on the node holding the credential")
    p.add_argument("--credential-file", help="file on the node holding the credential")
    p.add_argument("--setting", action="append", metavar="KEY=VALUE")
    p.add_argument("--timeout-ms", type=int)
    p.add_argument("--location", default="public_cloud", help="public_cloud, on_prem or site")
    p.add_argument("--site")
    p.add_argument("--region")
    p.add_argument("--jurisdiction")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("alias")
    p.add_argument("--deployment", action="append", required=True, metavar="PROVIDER:UPSTREAM[:WEIGHT]")
    p.add_argument("--capability", action="append", help="chat, tools, vision, json_mode, streaming, ...")
    p.add_argument("--context-window", type=int)
    p.add_argument("--max-output-tokens", type=int)
    p.add_argument("--input-price", type=int, help="nano-USD per million input tokens")
    p.add_argument("--output-price", type=int, help="nano-USD per million output tokens")
    p.add_argument("--attribute", action="append", metavar="KEY=VALUE")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``signalbox admin``."""
    parser = commands.add_parser(COMMAND, help="manage tenants, keys, providers, models, policies")
    settings.add(
        parser,
        "--target",
        env="SIGNALBOX_ADMIN_TARGET",
        default="127.0.0.1:7700",
        help="HOST:PORT of the control plane",
        command=COMMAND,
    )
    tls.add_client_flags(parser, env_prefix="SIGNALBOX_ADMIN", command=COMMAND)
    settings.add(
        parser,
        "--token",
        env="SIGNALBOX_ADMIN_TOKEN",
        default=None,
        help="admin token (from `signalbox controlplane bootstrap-admin`)",
        command=COMMAND,
    )
    settings.add(
        parser,
        "--json",
        env="SIGNALBOX_ADMIN_JSON",
        default=False,
        action="store_true",
        help="print JSON instead of tables",
        command=COMMAND,
    )
    settings.add(
        parser,
        "--timeout",
        env="SIGNALBOX_ADMIN_TIMEOUT",
        default=30.0,
        type=float,
        help="seconds to wait for the control plane",
        command=COMMAND,
    )
    parser.set_defaults(handler=admin_command)
    sub = parser.add_subparsers(dest="admin_resource", required=True, metavar="RESOURCE")

    tenant = _resource(sub, "tenant", "tenants")
    p = _verb(tenant, "create", tenant_create, "create a tenant")
    p.add_argument("name")
    p.add_argument("--tier")
    p.add_argument("--label", action="append", metavar="KEY=VALUE")
    _verb(tenant, "list", tenant_list, "list tenants")
    _verb(tenant, "get", tenant_get, "show one tenant").add_argument("name", help="id or name")
    p = _verb(tenant, "update", tenant_update, "change a tenant")
    p.add_argument("name", help="id or name")
    p.add_argument("--tier")
    p.add_argument("--active", dest="active", action="store_true", default=None)
    p.add_argument("--inactive", dest="active", action="store_false")
    p.add_argument("--label", action="append", metavar="KEY=VALUE")
    p.add_argument("--replace-labels", action="store_true")
    _verb(tenant, "delete", tenant_delete, "delete a tenant, its keys and policies").add_argument("name")

    key = _resource(sub, "key", "API keys")
    p = _verb(key, "create", key_create, "create an API key; the secret is printed once")
    p.add_argument("--tenant", required=True)
    p.add_argument("--name")
    p.add_argument(
        "--scope",
        action="append",
        metavar="KIND:VALUE",
        help="restrict the key (repeatable): model:ALIAS, task:TASK, op:chat|stream|embed; "
        "several of one kind are alternatives, kinds combine; none: unrestricted. "
        "A model need not exist yet.",
    )
    _verb(key, "list", key_list, "list API keys").add_argument("--tenant")
    _verb(key, "delete", key_delete, "revoke an API key").add_argument("id")

    provider = _resource(sub, "provider", "providers")
    _provider_args(_verb(provider, "create", provider_create, "create a provider"))
    _verb(provider, "list", provider_list, "list providers")
    _provider_args(_verb(provider, "update", provider_update, "replace a provider (by name)"))
    _verb(provider, "delete", provider_delete, "delete a provider").add_argument("name")

    model = _resource(sub, "model", "models")
    _model_args(_verb(model, "create", model_create, "register a model"))
    _verb(model, "list", model_list, "list models")
    _model_args(_verb(model, "update", model_update, "replace a model (by alias)"))
    _verb(model, "delete", model_delete, "delete a model").add_argument("alias")

    policy = _resource(sub, "policy", "routing policies")
    p = _verb(policy, "apply", policy_apply, "store a new policy version (YAML or JSON)")
    p.add_argument("-f", "--file", required=True, help="policy file, or - for stdin")
    p.add_argument("--tenant", help="tenant id or name; omit for the platform default")
    p = _verb(policy, "get", policy_get, "show the current (or a given) version")
    p.add_argument("--tenant")
    p.add_argument("--version", type=int)
    _verb(policy, "history", policy_history, "every version").add_argument("--tenant")
    _verb(policy, "delete", policy_delete, "delete the current policy").add_argument("--tenant")
    p = _verb(
        policy, "diff", policy_diff, "unified diff of two stored versions (default: previous vs current)"
    )
    p.add_argument("--tenant")
    p.add_argument(
        "--from", dest="from_", type=int, metavar="V", help="older version (default: the previous)"
    )
    p.add_argument("--to", type=int, metavar="V", help="newer version (default: the current)")

    node = _resource(sub, "node", "data-plane nodes")
    _verb(node, "list", node_list, "nodes, their applied snapshot and last NACK")
    route = _resource(sub, "route", "routing")
    p = _verb(route, "explain", route_explain, "dry-run routing for a tenant under its current policy")
    p.add_argument("--tenant", required=True)
    p.add_argument("--model", help="explicit model alias, as a caller would send")
    p.add_argument("--capability", action="append", help="required capability (repeatable)")
    p.add_argument("--task")
    p.add_argument("--message", action="append", help="user message text (repeatable): sizes the request")
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="request metadata (repeatable)")
    p.add_argument("--data-classification", help="public, internal, confidential or restricted")
    p.add_argument("--max-output-tokens", type=int)
    p.add_argument("--correlation-id", help="request id: draws the split arm when the sticky key is absent")
    snapshot = _resource(sub, "snapshot", "snapshots")
    _verb(snapshot, "show", snapshot_show, "the newest (or a given) snapshot").add_argument(
        "--version", type=int
    )


def admin_command(ns: argparse.Namespace) -> int:
    if not ns.token:
        print("signalbox admin: --token / SIGNALBOX_ADMIN_TOKEN is required", file=sys.stderr)
        return 3
    action: Action = ns.admin_action

    async def run() -> Output:
        async with tls.aio_channel(ns.target, tls.client_tls(ns)) as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            metadata = (("authorization", f"Bearer {ns.token}"),)
            wrapped = _with_call_options(stub, metadata, ns.timeout)
            return await action(wrapped, ns)

    try:
        out = asyncio.run(run())
    except grpc.aio.AioRpcError as exc:
        print(f"signalbox admin: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return EXIT_CODES.get(exc.code(), 1)
    except (OSError, tls.TlsConfigError) as exc:
        print(f"signalbox admin: {exc}", file=sys.stderr)
        return 1
    if ns.json:
        print(json_format.MessageToJson(out.message, preserving_proto_field_name=True, indent=2))
    elif out.text is not None:
        print(out.text, end="")
    else:
        print(_table(out.headers, out.rows))
    return 0


class _with_call_options:
    """A stub whose every call carries the token and the deadline."""

    def __init__(self, stub: Stub, metadata: tuple[tuple[str, str], ...], timeout: float) -> None:
        self._stub = stub
        self._metadata = metadata
        self._timeout = timeout

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)

        def call(request: Message) -> Any:
            return method(request, metadata=self._metadata, timeout=self._timeout)

        return call
