"""``signalbox admin``'s command line: the global options, and one subcommand per resource
and verb, each bound to its coroutine in ``commands/``."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from signalbox import settings, tls
from signalbox.shell.admin_cli.commands.admins import (
    admin_mtls_add,
    admin_mtls_list,
    admin_mtls_remove,
    admin_token_create,
    admin_token_list,
    admin_token_revoke,
    audit_list,
)
from signalbox.shell.admin_cli.commands.base import Action, bounded_int, count, nanos, stored_version
from signalbox.shell.admin_cli.commands.config import (
    model_create,
    model_delete,
    model_list,
    model_update,
    policy_apply,
    policy_delete,
    policy_diff,
    policy_get,
    policy_history,
    provider_create,
    provider_delete,
    provider_list,
    provider_update,
    route_explain,
)
from signalbox.shell.admin_cli.commands.evidence import (
    evidence_chains,
    evidence_export,
    evidence_import,
    evidence_prune,
    evidence_query,
)
from signalbox.shell.admin_cli.commands.fleet import (
    group_create,
    group_delete,
    group_list,
    group_show,
    group_update,
    node_certify,
    node_enroll_token,
    node_list,
    node_revoke,
    signing_key_list,
    signing_key_revoke,
    signing_key_rotate,
    snapshot_diff,
    snapshot_list,
    snapshot_rollback,
    snapshot_show,
)
from signalbox.shell.admin_cli.commands.governance import add_governance_commands
from signalbox.shell.admin_cli.commands.hash_keys import add_hash_key_commands
from signalbox.shell.admin_cli.commands.limits import add_limits_commands
from signalbox.shell.admin_cli.commands.tenants import (
    identity_jwt_add,
    identity_jwt_list,
    identity_jwt_remove,
    identity_mtls_add,
    identity_mtls_list,
    identity_mtls_remove,
    import_config,
    key_create,
    key_delete,
    key_list,
    tenant_create,
    tenant_delete,
    tenant_get,
    tenant_list,
    tenant_update,
)
from signalbox.shell.admin_cli.commands.usage import add_usage_commands
from signalbox.shell.admin_cli.output import EVIDENCE_CONTENT_FLAG, SPOOL_FULL_FLAG
from signalbox.shell.admin_cli.run import admin_command

COMMAND = "admin"


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text[:40]!r}") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0.1 and 3600 seconds")
    return value


def _utc_time(text: str) -> datetime:
    """An ISO 8601 time on the command line; without a zone it is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time, got {text[:40]!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


_version = bounded_int("a positive integer", 1)
"""A snapshot version or count on the command line."""


def _duration(raw: str) -> float:
    try:
        return settings.parse_duration(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    p.add_argument(
        "--sealed-credential-file",
        metavar="FILE",
        help="a local file holding the credential: sealed here to --sealed-for-group's public key "
        "(update only: the seal binds the provider's id); the control plane never sees it in clear",
    )
    p.add_argument("--sealed-for-group", metavar="GROUP", help="the node group whose nodes may open it")
    p.add_argument("--setting", action="append", metavar="KEY=VALUE")
    p.add_argument("--timeout-ms", type=count)
    p.add_argument("--location", default="public_cloud", help="public_cloud, on_prem or site")
    p.add_argument("--site")
    p.add_argument("--region")
    p.add_argument("--jurisdiction")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("alias")
    p.add_argument("--deployment", action="append", required=True, metavar="PROVIDER:UPSTREAM[:WEIGHT]")
    p.add_argument("--capability", action="append", help="chat, tools, vision, json_mode, streaming, ...")
    p.add_argument("--context-window", type=count)
    p.add_argument("--max-output-tokens", type=count)
    p.add_argument("--input-price", type=nanos, help="nano-USD per million input tokens")
    p.add_argument("--output-price", type=nanos, help="nano-USD per million output tokens")
    p.add_argument("--attribute", action="append", metavar="KEY=VALUE")


def _evidence_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--correlation-id", help="the request's correlation id")
    p.add_argument("--tenant", help="tenant id or name")
    p.add_argument("--api-key", help="API key id")
    p.add_argument("--model", help="the model that served it")
    p.add_argument("--outcome", help="outcome code, e.g. OK or PERMISSION_DENIED")
    p.add_argument(
        "--since", type=_utc_time, help="records at or after this time (ISO 8601; UTC when no zone)"
    )
    p.add_argument("--until", type=_utc_time, help="records before this time (ISO 8601; UTC when no zone)")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``signalbox admin``."""
    parser = commands.add_parser(COMMAND, help="manage tenants, keys, providers, models, policies")
    settings.add(
        parser,
        "--target",
        env="SIGNALBOX_ADMIN_TARGET",
        type=settings.address,
        default="127.0.0.1:7700",
        help="HOST:PORT of the control plane",
        command=COMMAND,
    )
    tls.add_client_flags(parser, env_prefix="SIGNALBOX_ADMIN", command=COMMAND)
    settings.add(
        parser,
        "--token",
        env="SIGNALBOX_ADMIN_TOKEN",
        type=settings.credential,
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
        type=settings.seconds,
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
    _tenant_evidence_options(p)
    _verb(tenant, "list", tenant_list, "list tenants")
    _verb(tenant, "get", tenant_get, "show one tenant").add_argument("name", help="id or name")
    p = _verb(tenant, "update", tenant_update, "change a tenant")
    p.add_argument("name", help="id or name")
    p.add_argument("--tier")
    p.add_argument("--active", dest="active", action="store_true", default=None)
    p.add_argument("--inactive", dest="active", action="store_false")
    p.add_argument("--label", action="append", metavar="KEY=VALUE")
    p.add_argument("--replace-labels", action="store_true")
    _tenant_evidence_options(p)
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

    p = sub.add_parser(
        "import",
        help="import tenants and API keys from a JSON Lines file, all or nothing, in one snapshot (admin role)",
    )
    p.set_defaults(admin_action=import_config)
    p.add_argument("file", metavar="FILE", help='one object a line: {"kind": "tenant"|"api_key", ...}')
    settings.add(
        p,
        "--secrets-out",
        env="SIGNALBOX_ADMIN_IMPORT_SECRETS_OUT",
        default=None,
        help="file the new keys' secrets are written to (JSON Lines, created 0600; never overwritten)",
        command=f"{COMMAND} import",
    )
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
    p.add_argument("--version", type=stored_version)
    _verb(policy, "history", policy_history, "every version").add_argument("--tenant")
    _verb(policy, "delete", policy_delete, "delete the current policy").add_argument("--tenant")
    p = _verb(
        policy, "diff", policy_diff, "unified diff of two stored versions (default: previous vs current)"
    )
    p.add_argument("--tenant")
    p.add_argument(
        "--from", dest="from_", type=stored_version, metavar="V", help="older version (default: the previous)"
    )
    p.add_argument("--to", type=stored_version, metavar="V", help="newer version (default: the current)")

    node = _resource(sub, "node", "data-plane nodes")
    p = _verb(
        node,
        "list",
        node_list,
        "nodes: version, mode, scope, applied snapshot, lag, last ACK/NACK, last seen, STALE",
    )
    p.add_argument(
        "--watch", action="store_true", help="redraw the table every --interval seconds until Ctrl-C"
    )
    p.add_argument(
        "--interval", type=_positive_seconds, default=2.0, help="seconds between redraws (default 2)"
    )
    p.add_argument("--iterations", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--group", help="only the nodes of this node group (default: every group)")
    p = _verb(
        node,
        "enroll-token",
        node_enroll_token,
        "create a one-time bootstrap token for a node group (admin role; printed once), "
        "or `enroll-token list` its ids, groups, expiry and use",
    )
    p.add_argument("action", nargs="?", choices=("create", "list"), default="create")
    p.add_argument("--group", help="node group the enrolled node belongs to (required to create)")
    p.add_argument(
        "--ttl",
        type=_duration,
        default=3600.0,
        help="how long the token stays valid (e.g. 1h, 30m, 2d; max 7d)",
    )
    p.add_argument(
        "--mode", default="", help="deployment mode bound into the certificate: cloud, on-prem, air-gapped"
    )
    p.add_argument("--site", default="", help="site bound into the certificate")
    _verb(
        node,
        "revoke",
        node_revoke,
        "revoke every certificate of a node and close its sync streams (admin role)",
    ).add_argument("node_id", metavar="NODE_ID")
    p = _verb(
        node,
        "certify",
        node_certify,
        "provision a node that cannot enroll online (air-gapped): a certificate for the key in "
        "its CSR (`signalbox dataplane identity request`), written as a PEM bundle for "
        "`signalbox dataplane identity install` (admin role)",
    )
    p.add_argument("--node-id", required=True, help="the node's id (as in its CSR's request)")
    p.add_argument("--csr", required=True, type=Path, help="the node's CSR file (PEM)")
    p.add_argument("--group", required=True, help="node group: its mode and site go into the certificate")
    p.add_argument(
        "--ttl", type=_duration, default=0.0, help="how long the certificate is valid (default and max: 365d)"
    )
    p.add_argument("--out", type=Path, help="write the bundle here (0600) instead of to stdout")
    route = _resource(sub, "route", "routing")
    p = _verb(route, "explain", route_explain, "dry-run routing for a tenant under its current policy")
    p.add_argument("--tenant", required=True)
    p.add_argument("--model", help="explicit model alias, as a caller would send")
    p.add_argument("--capability", action="append", help="required capability (repeatable)")
    p.add_argument("--task")
    p.add_argument("--message", action="append", help="user message text (repeatable): sizes the request")
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="request metadata (repeatable)")
    p.add_argument("--data-classification", help="public, internal, confidential or restricted")
    p.add_argument("--max-output-tokens", type=count)
    p.add_argument("--correlation-id", help="request id: draws the split arm when the sticky key is absent")
    snapshot = _resource(sub, "snapshot", "snapshots")
    p = _verb(snapshot, "list", snapshot_list, "stored versions, newest first, who published each and why")
    p.add_argument("--limit", type=_version, help="at most this many (default 20)")
    p.add_argument(
        "--before", type=_version, metavar="VERSION", help="only versions below this one (next page)"
    )
    p = _verb(snapshot, "show", snapshot_show, "the newest (or a given) snapshot and the config it carries")
    p.add_argument("version_arg", nargs="?", type=_version, metavar="VERSION", help="default: the newest")
    p.add_argument("--version", type=_version, help=argparse.SUPPRESS)
    p = _verb(snapshot, "diff", snapshot_diff, "what changed from version A to version B, per object")
    p.add_argument("a", type=_version, metavar="A")
    p.add_argument("b", type=_version, metavar="B")
    p = _verb(
        snapshot,
        "rollback",
        snapshot_rollback,
        "restore a stored version's config and publish it as a new version (admin role)",
    )
    p.add_argument("version", type=_version, metavar="VERSION")
    for verb in ("list", "show", "diff", "rollback"):
        snapshot.choices[verb].add_argument(
            "--group", default="default", help="the node group whose snapshots these are (default: default)"
        )
    group = _resource(sub, "group", "node groups: mode, site and what their nodes may see")
    for verb, action, text in (
        ("create", group_create, "create a node group and publish its first snapshot (admin role)"),
        (
            "update",
            group_update,
            "change a node group; only the groups whose content changes get a new version",
        ),
    ):
        p = _verb(group, verb, action, text)
        p.add_argument("name", metavar="NAME", help="1..63 characters of a-z, 0-9, '-'")
        p.add_argument("--mode", help="cloud, on-prem or air-gapped (create: default cloud)")
        p.add_argument("--site", help="the group's site (required for air-gapped)")
        p.add_argument("--deployment", help="deployment label in the group's snapshot scope")
        p.add_argument(
            "--sealing-public-key",
            metavar="KEY",
            help="the group's X25519 public key (base64, from `signalbox dataplane sealing-key generate`) "
            "provider credentials are sealed to",
        )
        for kind, flag in (("tenants", "tenant"), ("providers", "provider"), ("models", "model")):
            p.add_argument(
                f"--{flag}",
                dest=kind,
                action="append",
                help=f"a {flag} the group sees, id or name (repeatable; replaces the list)",
            )
            p.add_argument(f"--all-{kind}", action="store_true", help=f"the group sees every {flag}")
    _verb(group, "list", group_list, "node groups, their newest snapshot version and node count")
    _verb(group, "show", group_show, "one node group").add_argument("name", metavar="NAME")
    _verb(
        group, "delete", group_delete, "delete a node group no connected node runs (admin role)"
    ).add_argument("name", metavar="NAME")
    signing = _resource(sub, "signing-key", "snapshot signing keys")
    _verb(signing, "list", signing_key_list, "key ids, state (active/retiring/revoked), created")
    _verb(
        signing,
        "rotate",
        signing_key_rotate,
        "new active key; the old one keeps signing beside it until revoked (admin role)",
    )
    p = _verb(signing, "revoke", signing_key_revoke, "stop signing with a retiring key for good (admin role)")
    p.add_argument("key_id", metavar="KEY_ID")
    identity = _resource(sub, "identity", "caller identities besides API keys: JWT issuers, mTLS mappings")
    jwt = identity.add_parser("jwt", help="a tenant's JWT issuers (JWKS uploaded, never fetched)")
    jwt_verbs = jwt.add_subparsers(dest="jwt_verb", required=True, metavar="VERB")
    p = _verb(jwt_verbs, "add", identity_jwt_add, "trust bearer JWTs of an issuer for a tenant (admin role)")
    p.add_argument("--tenant", required=True, help="id or name")
    p.add_argument("--issuer", required=True, help='the exact "iss" claim')
    p.add_argument("--audience", action="append", required=True, help='accepted "aud" (repeatable)')
    p.add_argument(
        "--algorithm",
        action="append",
        required=True,
        help="allowed alg (repeatable): RS256, ES256, EdDSA, ...",
    )
    p.add_argument("--jwks", required=True, metavar="FILE", help="the issuer's JWKS document (public keys)")
    p.add_argument("--leeway", type=count, default=0, help="clock skew tolerated, seconds (at most 300)")
    p.add_argument("--subject-claim", default="sub", help="claim naming the caller (default: sub)")
    p.add_argument("--tier-claim", help="claim whose value is the caller's tier for routing")
    p.add_argument(
        "--metadata-claim",
        action="append",
        metavar="KEY=CLAIM",
        help="request metadata KEY from CLAIM (repeatable)",
    )
    p.add_argument(
        "--scope", action="append", metavar="KIND:VALUE", help="scopes of these callers (repeatable)"
    )
    _verb(jwt_verbs, "list", identity_jwt_list, "list JWT issuers").add_argument("--tenant")
    _verb(jwt_verbs, "remove", identity_jwt_remove, "stop trusting an issuer (admin role)").add_argument("id")
    mtls = identity.add_parser("mtls", help="client certificate URI SANs mapped to a tenant")
    mtls_verbs = mtls.add_subparsers(dest="mtls_verb", required=True, metavar="VERB")
    p = _verb(mtls_verbs, "add", identity_mtls_add, "map a URI SAN (or a prefix) to a tenant (admin role)")
    p.add_argument("--tenant", required=True, help="id or name")
    p.add_argument("--uri", required=True, help="e.g. spiffe://example.org/team/billing")
    p.add_argument("--prefix", action="store_true", help="match every URI starting with --uri")
    p.add_argument(
        "--scope", action="append", metavar="KIND:VALUE", help="scopes of these callers (repeatable)"
    )
    _verb(mtls_verbs, "list", identity_mtls_list, "list mTLS mappings").add_argument("--tenant")
    _verb(mtls_verbs, "remove", identity_mtls_remove, "remove a mapping (admin role)").add_argument("id")

    add_limits_commands(sub)
    add_governance_commands(sub)
    add_hash_key_commands(sub)

    evidence = _resource(sub, "evidence", "shipped evidence records and their chains")
    p = _verb(evidence, "query", evidence_query, "stored records, newest first, by the filters given (AND)")
    _evidence_filters(p)
    p.add_argument("--limit", type=_version, help="at most this many (default 100, at most 1000)")
    _verb(
        evidence, "chains", evidence_chains, "per chain: node, shipped seq, last received, state and alarms"
    )
    p = _verb(
        evidence,
        "export",
        evidence_export,
        "an Evidence Pack of the matching records and what was searched (check: signalbox evidence verify)",
    )
    _evidence_filters(p)
    p.add_argument("--out", required=True, metavar="PACK", help="the pack file to write (0600)")

    p = _verb(
        evidence,
        "import",
        evidence_import,
        "store an air-gapped node's own pack (`dataplane evidence export`) as if shipped (admin role)",
    )
    p.add_argument("pack", metavar="PACK", help="the pack file")

    p = _verb(
        evidence,
        "prune",
        evidence_prune,
        "drop the monthly partitions before a time, a signed pruned-range statement per chain first "
        "(admin role)",
    )
    p.add_argument(
        "--before",
        type=_utc_time,
        required=True,
        help="prune months that end by this time (ISO 8601; UTC when no zone)",
    )

    add_usage_commands(sub, utc_time=_utc_time, positive_seconds=_positive_seconds)

    _admin_security(sub)


ROLE_HELP = (
    "platform_admin (everything), tenant_admin (one tenant: its keys, caller identities, policies, "
    "evidence) or auditor (reads; platform-wide, or one tenant's with --tenant)"
)


def _admin_security(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    admins = _resource(sub, "admins", "who may administer: admin tokens and admin client certificates")
    token = admins.add_parser("token", help="admin tokens (stored as SHA-256 only)")
    token_verbs = token.add_subparsers(dest="token_verb", required=True, metavar="VERB")
    p = _verb(
        token_verbs,
        "create",
        admin_token_create,
        "a new admin token, printed once (a tenant admin: tenant_admin or auditor of its tenant)",
    )
    p.add_argument("name", help="who it is for (audit rows name it admin:NAME)")
    p.add_argument(
        "--role", required=True, choices=("platform_admin", "tenant_admin", "auditor"), help=ROLE_HELP
    )
    p.add_argument("--tenant", help="id or name: required for tenant_admin, optional for auditor")
    _verb(token_verbs, "list", admin_token_list, "list admin tokens (never the tokens)").add_argument(
        "--tenant", help="only this tenant's (id or name)"
    )
    _verb(token_verbs, "revoke", admin_token_revoke, "revoke a token now").add_argument("id")
    mtls = admins.add_parser(
        "mtls", help="client certificate URI SANs mapped to admin identities (platform admins only)"
    )
    mtls_verbs = mtls.add_subparsers(dest="admins_mtls_verb", required=True, metavar="VERB")
    p = _verb(mtls_verbs, "add", admin_mtls_add, "map a client certificate's URI SAN to an admin identity")
    p.add_argument("--uri", required=True, help="the exact URI SAN, e.g. spiffe://corp/admin/alice")
    p.add_argument("--name", required=True, help="who it is (audit rows name it admin:NAME)")
    p.add_argument(
        "--role", required=True, choices=("platform_admin", "tenant_admin", "auditor"), help=ROLE_HELP
    )
    p.add_argument("--tenant", help="id or name: required for tenant_admin, optional for auditor")
    _verb(mtls_verbs, "list", admin_mtls_list, "list admin certificate mappings")
    _verb(mtls_verbs, "remove", admin_mtls_remove, "remove a mapping").add_argument("id")

    audit = _resource(sub, "audit", "the append-only trail of every admin call")
    p = _verb(audit, "list", audit_list, "admin calls, newest first, by the filters given (AND)")
    p.add_argument("--actor", help="e.g. admin:alice")
    p.add_argument("--tenant", help="id or name: calls about it or made by its identities")
    p.add_argument("--action", help="the RPC, e.g. DeleteApiKey")
    p.add_argument("--since", type=_utc_time, help="calls at or after this time (ISO 8601; UTC when no zone)")
    p.add_argument("--until", type=_utc_time, help="calls before this time (ISO 8601; UTC when no zone)")
    p.add_argument("--limit", type=_version, help="at most this many (default 100, at most 1000)")
    # The same setting as `signalbox admin --json` (SIGNALBOX_ADMIN_JSON), also accepted here.
    p.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON instead of a table"
    )


def _tenant_evidence_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--evidence-content",
        choices=list(EVIDENCE_CONTENT_FLAG.values()),
        help="digest: records carry SHA-256 digests only (default); full: the request's messages "
        "and the answer's text too (capped per record)",
    )
    p.add_argument(
        "--evidence-spool-full",
        choices=list(SPOOL_FULL_FLAG.values()),
        help="while a node's unacknowledged evidence is over its bound: serve_and_alarm (default) "
        "or refuse (UNAVAILABLE; the refusal is still recorded)",
    )
