"""``signalbox admin governance apply|get|history|diff|test|delete``: governance profiles of a
tenant, or the platform default (no ``--tenant``, or ``--platform``).

``test`` runs the profile that governs a tenant over a text without calling a model and
prints, per rule, what it found (positions, never the values) and did, then the text as
the model would receive it."""

from __future__ import annotations

import argparse
import asyncio
import json

from signalbox.api.admin.v1 import admin_pb2
from signalbox.shell.admin_cli.commands.base import Action, Stub, read_text_input, stored_version
from signalbox.shell.admin_cli.output import Output, deleted, table

PROFILE_COLUMNS = ("tenant", "version", "created_by", "created_at", "snapshot", "document")
RESULT_COLUMNS = ("rule", "detector", "action", "count", "positions", "effect")
MAX_INPUT_BYTES = 1024 * 1024
"""The most read from a file or stdin; the control plane bounds what it takes further."""
MAX_POSITIONS_SHOWN = 8


def _tenant(ns: argparse.Namespace) -> str:
    if getattr(ns, "platform", False) and ns.tenant:
        raise SystemExit("governance: give --tenant or --platform, not both")
    return str(ns.tenant or "")


def _read_bounded(source: str) -> str:
    """A file's text, or stdin's for ``-``, at most ``MAX_INPUT_BYTES``."""
    return read_text_input(source, "governance", MAX_INPUT_BYTES)


def _row(p: admin_pb2.GovernanceProfile) -> tuple[object, ...]:
    created = p.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if p.HasField("created_at") else ""
    document = "(deleted)" if p.deleted else p.document_json
    if len(document) > 60:
        document = document[:57] + "..."
    return (
        p.tenant_id or "(default)",
        p.version,
        p.created_by,
        created,
        p.snapshot_version or "",
        document,
    )


def _document(document_json: str, fmt: str) -> str:
    document = json.loads(document_json)
    if fmt == "yaml":
        import yaml  # only this output format needs it

        return str(yaml.safe_dump(document, sort_keys=True, allow_unicode=True, default_flow_style=False))
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


async def governance_apply(stub: Stub, ns: argparse.Namespace) -> Output:
    document = await asyncio.to_thread(_read_bounded, ns.file)
    p = await stub.ApplyGovernanceProfile(
        admin_pb2.ApplyGovernanceProfileRequest(tenant=_tenant(ns), document=document)
    )
    return Output(p, PROFILE_COLUMNS, [_row(p)])


async def governance_get(stub: Stub, ns: argparse.Namespace) -> Output:
    p = await stub.GetGovernanceProfile(
        admin_pb2.GetGovernanceProfileRequest(tenant=_tenant(ns), version=ns.version or 0)
    )
    who = p.tenant_id or "platform default"
    header = f"# governance profile of {who}, v{p.version}, by {p.created_by}\n"
    if ns.format == "yaml":
        return Output(p, text=header + _document(p.document_json, "yaml"))
    return Output(p, text=_document(p.document_json, "json"))


async def governance_history(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListGovernanceProfileHistory(
        admin_pb2.ListGovernanceProfileHistoryRequest(tenant=_tenant(ns))
    )
    return Output(r, PROFILE_COLUMNS, [_row(p) for p in r.versions])


async def governance_diff(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.DiffGovernanceProfile(
        admin_pb2.DiffGovernanceProfileRequest(
            tenant=_tenant(ns), from_version=ns.from_ or 0, to_version=ns.to or 0, format=ns.format
        )
    )
    return Output(r, text=r.diff or f"v{r.from_version} and v{r.to_version} are the same\n")


async def governance_delete(stub: Stub, ns: argparse.Namespace) -> Output:
    return deleted(
        await stub.DeleteGovernanceProfile(admin_pb2.DeleteGovernanceProfileRequest(tenant=_tenant(ns)))
    )


def _positions(result: admin_pb2.GovernanceRuleResult) -> str:
    spans = [f"{s.start}-{s.end}" + (f" {s.kind}" if s.kind else "") for s in result.spans]
    if len(spans) > MAX_POSITIONS_SHOWN:
        spans = [*spans[:MAX_POSITIONS_SHOWN], f"(+{len(spans) - MAX_POSITIONS_SHOWN})"]
    return ", ".join(spans) or "-"


def test_report(r: admin_pb2.TestGovernanceProfileResponse) -> str:
    """The readable form of a test: the profile, a table of rules, the outcome, the text."""
    if not r.profile_version:
        return "no governance profile governs this tenant (nor a platform default): nothing runs\n"
    who = f"tenant {r.profile_tenant_id}" if r.profile_tenant_id else "the platform default"
    rows = [(x.rule, x.detector, x.action, x.count, _positions(x), x.effect or "-") for x in r.results]
    lines = [f"profile: {who}, v{r.profile_version}, {r.stage} rules", ""]
    lines.append(table(RESULT_COLUMNS, rows) if rows else f"(no {r.stage} rules)")
    lines.append("")
    if r.blocked_by:
        lines.append(f"outcome: refused by rule {r.blocked_by}")
    else:
        lines.append("outcome: allowed" + (f", data class raised to {r.data_class}" if r.data_class else ""))
        lines.append("text as it goes on:")
        lines.append(r.result_text)
    return "\n".join(lines) + "\n"


async def governance_test(stub: Stub, ns: argparse.Namespace) -> Output:
    if ns.stdin not in (None, "-"):
        raise SystemExit(
            f"governance test: unexpected argument {ns.stdin!r} (use --file FILE, or - for stdin)"
        )
    given = [s for s in (ns.text is not None, ns.file is not None, ns.stdin == "-") if s]
    if len(given) != 1:
        raise SystemExit("governance test: give exactly one of --text, --file, or - (stdin)")
    if ns.text is not None:
        text = ns.text
    else:
        text = await asyncio.to_thread(_read_bounded, ns.file if ns.file is not None else "-")
    r = await stub.TestGovernanceProfile(
        admin_pb2.TestGovernanceProfileRequest(tenant=_tenant(ns), text=text, stage=ns.stage)
    )
    return Output(r, text=test_report(r))


def _target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tenant", help="tenant id or name; omit (or --platform) for the platform default")
    p.add_argument("--platform", action="store_true", help="the platform default profile")


def add_governance_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``governance apply|get|history|diff|test|delete`` under ``signalbox admin``."""
    resource = sub.add_parser("governance", help="governance profiles (PII, data classes, output rules)")
    verbs = resource.add_subparsers(dest="governance_verb", required=True, metavar="VERB")

    def verb(name: str, action: Action, help: str) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help)
        p.set_defaults(admin_action=action)
        _target(p)
        return p

    p = verb("apply", governance_apply, "store a new profile version (YAML or JSON); publishes a snapshot")
    p.add_argument("file", metavar="FILE", help="profile file, or - for stdin")
    p = verb("get", governance_get, "show the current (or a given) version")
    p.add_argument("--version", type=stored_version, help="a stored version (default: the current)")
    p.add_argument("--format", choices=("yaml", "json"), default="json")
    verb("history", governance_history, "every version, oldest first")
    p = verb("diff", governance_diff, "unified diff of two stored versions (default: previous vs current)")
    p.add_argument(
        "--from", dest="from_", type=stored_version, metavar="V", help="older version (default: the previous)"
    )
    p.add_argument("--to", type=stored_version, metavar="V", help="newer version (default: the current)")
    p.add_argument("--format", choices=("yaml", "json"), default="json")
    p = verb("test", governance_test, "run the tenant's profile over a text, no model called")
    p.add_argument("--text", help="the text to test")
    p.add_argument("--file", help="read the text from a file")
    p.add_argument("stdin", nargs="?", metavar="-", help="read the text from stdin")
    p.add_argument("--stage", choices=("input", "output"), default="input", help="which rules run")
    # The same setting as `signalbox admin --json` (SIGNALBOX_ADMIN_JSON), also accepted here.
    p.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON instead of a table"
    )
    verb("delete", governance_delete, "delete the current profile (the tenant falls back to the default)")
