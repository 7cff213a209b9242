"""``signalbox evidence verify PACK --trust-key KEY`` and ``signalbox evidence show PACK``:
Evidence Packs checked and read offline, with the data-plane install alone (no control
plane, no database)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from dataplane.evidence import pack, pack_facts, pack_verify
from dataplane.evidence.pruned import PrunedStatement, decode_statement
from dataplane.snapshot.envelope import load_trust_keys
from dataplane.trust_cli import add_trust_key, trust_key_paths
from signalbox.shell.progress import records_bar
from signalbox.text import printable

SHOWN_LINE_CHARS = 2000
"""The longest line ``show`` prints of a pack's statement or a record (longer ones are clipped)."""

COMMAND = "evidence"
VERIFY = "evidence verify"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``signalbox evidence verify|show``."""
    parser = commands.add_parser(COMMAND, help="check and read Evidence Packs offline")
    sub = parser.add_subparsers(dest="evidence_command", required=True, metavar="COMMAND")
    verify = sub.add_parser("verify", help="check every signature, record, link and proof of a pack")
    verify.add_argument("pack", metavar="PACK", help="the pack file")
    # The same --trust-key as ``dataplane verify``: one control-plane key checks both.
    add_trust_key(verify, VERIFY)
    verify.add_argument(
        "--node-ca",
        type=Path,
        metavar="CA.pem",
        help="a node's own pack: the node CA you trust; its certificate must be issued by it",
    )
    verify.set_defaults(handler=verify_command)
    show = sub.add_parser("show", help="the pack for people: the statement, then each record")
    show.add_argument("pack", metavar="PACK", help="the pack file")
    show.add_argument("--json", action="store_true", help="one JSON document instead of text")
    show.set_defaults(handler=show_command)


def verify_command(ns: argparse.Namespace) -> int:
    """``OK`` and the statement, exit 0; or ``INVALID`` and the first problem, exit 1."""
    path = Path(ns.pack)
    try:
        trusted = load_trust_keys(trust_key_paths(ns))
        node_ca = None
        if ns.node_ca is not None:
            try:
                node_ca = x509.load_pem_x509_certificate(ns.node_ca.read_bytes())
            except ValueError:
                print(f"evidence verify: --node-ca: {ns.node_ca} is not a PEM certificate", file=sys.stderr)
                return 2
        if not trusted and _kind(path) != pack.KIND_NODE:
            print(
                "evidence verify: --trust-key FILE is required (the control plane's public key)",
                file=sys.stderr,
            )
            return 2
        with records_bar(pack.record_count_hint(path), "verify") as bar:
            report = pack_verify.verify(path, trusted, progress=bar.update, node_ca=node_ca)
    except (pack.PackInvalid, OSError, ValueError) as exc:
        print(f"INVALID {path}: {exc}")
        return 1
    print(f"OK {path}: {report.records} records in {len(report.chains)} chains, signed by {report.signed_by}")
    for note in report.notes:
        print(f"note: {note}")
    for line in statement(
        report.kind,
        report.pack_id,
        report.created,
        report.query,
        report.chains,
        report.unmatched,
        report.alarms,
        report.pruned,
        report.revoked,
        report.witnessed,
    ):
        print(line)
    return 0


def _kind(path: Path) -> str:
    """The kind the pack's header names (not verified: which checks apply)."""
    with open(path, "rb") as f:
        for section, _, value in pack.read_sections(f):
            return str(value) if section == "header" else ""
    return ""


def statement(
    kind: str,
    pack_id: str,
    created: str,
    query: dict[str, Any],
    chains: list[pack.Searched],
    unmatched: list[pack.Searched],
    alarms: list[dict[str, Any]],
    pruned: Mapping[str, Sequence[PrunedStatement]] | None = None,
    revoked: Sequence[tuple[str, str, str]] = (),
    witnessed: Mapping[str, int] | None = None,
) -> Iterator[str]:
    """The pack's statement, line by line: what was asked, which ranges were searched, what
    retention pruned before them (``pruned``), which node certificates were revoked
    (``(node_id, certificate SHA-256, time)``) and when the control plane witnessed each
    chain's checkpoint (``witnessed``: verified cosignatures only)."""
    asked = ", ".join(f"{k}={v}" for k, v in sorted(query.items())) or "everything"
    yield f"pack {pack_id} ({kind}), created {created}"
    yield f"query: {asked}"
    for s in [*chains, *unmatched]:
        found = f"{s.records} matched" if s.records else "no match"
        statements = (pruned or {}).get(s.chain_id, ())
        line = f"chain {s.chain_id}: "
        if statements:
            line += f"{_pruned(statements)}; "
        if s.from_seq > s.to_seq and statements:
            line += "nothing after them is covered by a checkpoint, nothing searched"
        elif s.to_seq:
            line += f"every stored record with seq {s.from_seq}..{s.to_seq} searched, {found}"
        else:
            line += "nothing searched (no signed checkpoint yet)"
        if s.chain_id in (witnessed or {}):
            at = pack_facts.rfc3339(datetime.fromtimestamp((witnessed or {})[s.chain_id], UTC))
            line += f"; its checkpoint witnessed by the control plane at {at}"
        if s.head_seq > s.to_seq:
            line += f"; {s.to_seq + 1}..{s.head_seq} stored but not searched (no checkpoint covers them yet)"
        if s.state != "ok":
            line += f"; state {s.state}: {s.alarm}"
        yield line
    for node_id, sha256, when in revoked:
        yield f"certificate {sha256[:16]}… of node {node_id} revoked at {when}"
    for a in alarms:
        yield f"alarm: chain {a.get('chain_id')} seq {a.get('seq')} {a.get('kind')} at {a.get('at')}: {a.get('detail')}"


def _pruned(statements: Sequence[PrunedStatement]) -> str:
    ranges = ", ".join(
        f"{p.first_seq}..{p.last_seq} on {pack_facts.rfc3339(p.at)} (older than {pack_facts.rfc3339(p.pruned_before)})"
        for p in statements
    )
    return f"records 1..{statements[-1].last_seq} pruned by retention: {ranges}, signed by the control plane"


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    """What a person asks of a record: when, who, which model and why, under what, and the result."""

    def part(name: str) -> dict[str, Any]:
        value = record.get(name)
        return value if isinstance(value, dict) else {}

    routing, served = part("routing"), part("routing").get("served_by")
    served = served if isinstance(served, dict) else {}
    return {
        "chain_id": record.get("chain_id"),
        "seq": record.get("seq"),
        "record_id": record.get("record_id"),
        "ts": record.get("ts"),
        "correlation_id": record.get("correlation_id"),
        "tenant_id": record.get("tenant_id"),
        "caller": record.get("api_key_id"),
        "model": served.get("model"),
        "provider": served.get("provider"),
        "why": {k: routing.get(k) for k in ("rule", "strategy", "reason") if routing.get(k) is not None},
        "policy": part("policy") or None,
        "snapshot": part("snapshot") or None,
        "outcome": part("outcome").get("code"),
        "tokens": part("usage") or None,
        "cost": part("cost") or None,
    }


def _time(ts: Any) -> str:
    import datetime as dt

    if not isinstance(ts, int | float):
        return "?"
    try:
        when = dt.datetime.fromtimestamp(ts, dt.UTC)
    except (OverflowError, ValueError, OSError):  # NaN, infinite or beyond any datetime
        return "?"
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _money(cost: Mapping[str, Any]) -> str:
    nanos = cost.get("total_nanos")
    if not isinstance(nanos, int):
        return "-"
    try:
        return f"{nanos / 1e9:.9f} {cost.get('currency', '')}".strip()
    except OverflowError:  # an integer beyond a float
        return "?"


def _render(s: dict[str, Any]) -> list[str]:
    why = s["why"]
    reason = ", ".join(f"{k} {v}" for k, v in why.items()) or "-"
    policy, snapshot, tokens, cost = (
        s["policy"] or {},
        s["snapshot"] or {},
        s["tokens"] or {},
        s["cost"] or {},
    )
    money = _money(cost)
    reasoning = tokens.get("reasoning_output_tokens")
    # Shown when a reasoning model spent some (records before it was recorded have none).
    thought = f" (reasoning {reasoning})" if type(reasoning) is int and reasoning > 0 else ""
    return [
        f"{_time(s['ts'])}  {s['chain_id']} #{s['seq']}  correlation {s['correlation_id'] or '-'}",
        f"    tenant {s['tenant_id'] or '-'}  caller {s['caller'] or '-'}",
        f"    model {s['model'] or '-'} ({s['provider'] or '-'}), why: {reason}",
        f"    policy {policy.get('id', '-')} v{policy.get('version', '-')}  "
        f"snapshot v{snapshot.get('version', '-')} {str(snapshot.get('sha256', '-'))[:16]}",
        f"    outcome {s['outcome'] or '-'}  tokens in {tokens.get('input_tokens', '-')} "
        f"out {tokens.get('output_tokens', '-')}{thought}  cost {money}",
    ]


def show_command(ns: argparse.Namespace) -> int:
    """The statement (from the manifest), then each record; not a verification."""
    path = Path(ns.pack)
    try:
        seal, kind, chains, pruned, revoked = _read_statement(path)
        m = seal.manifest
        unmatched = [
            pack.Searched.from_json(u, "searched_without_match") for u in m.get("searched_without_match", [])
        ]
        alarms = [a for a in m.get("alarms", []) if isinstance(a, dict)]
        asked = m.get("query")
        query: dict[str, Any] = asked if isinstance(asked, dict) else {}
        if ns.json:
            records = [_summary(r.fields()) for r in _records(path)]
            document = {
                "manifest": m,
                "verified": False,
                "pruned": {
                    chain: [
                        {
                            "first_seq": p.first_seq,
                            "last_seq": p.last_seq,
                            "at": pack_facts.rfc3339(p.at),
                            "pruned_before": pack_facts.rfc3339(p.pruned_before),
                        }
                        for p in statements
                    ]
                    for chain, statements in pruned.items()
                },
                "revoked": [{"node_id": n, "certificate_sha256": c, "at": t} for n, c, t in revoked],
                "records": records,
            }
            json.dump(document, sys.stdout, indent=2, ensure_ascii=False)
            print()
            return 0
        print(f"Evidence pack {path} (not verified here: run `signalbox evidence verify`)")
        # Everything below is the pack's word, unverified: each line is printed with control
        # characters escaped and bounded, so a string in it cannot forge lines or drive the
        # terminal (ESC sequences), whoever wrote the pack.
        for line in statement(
            kind,
            str(m.get("pack_id")),
            str(m.get("created")),
            query,
            chains,
            unmatched,
            alarms,
            pruned,
            revoked,
        ):
            print(printable(line, SHOWN_LINE_CHARS))
        print()
        for record in _records(path):
            print("\n".join(printable(line, SHOWN_LINE_CHARS) for line in _render(_summary(record.fields()))))
    except (pack.PackInvalid, OSError, ValueError) as exc:
        print(f"evidence show: {path}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # | head
        return 0
    return 0


def _read_statement(
    path: Path,
) -> tuple[pack.Seal, str, list[pack.Searched], dict[str, list[PrunedStatement]], list[tuple[str, str, str]]]:
    """What ``show`` prints before the records, as the pack states it (nothing verified)."""
    kind, chains, seal = "", [], None
    pruned: dict[str, list[PrunedStatement]] = {}
    revoked: list[tuple[str, str, str]] = []
    with open(path, "rb") as f:
        for section, _, value in pack.read_sections(f):
            if section == "header":
                kind = value
            elif section == "certificates" and value.revoked:
                revoked = [
                    (node_id, sha256, value.revoked[sha256])
                    for node_id, pems in sorted(value.nodes.items())
                    for sha256 in map(pack.certificate_sha256, pems)
                    if sha256 in value.revoked
                ]
            elif section == "pruned":
                pruned = {
                    chain: [decode_statement(e) for e in envelopes] for chain, envelopes in value.items()
                }
            elif section == "chain":
                chains.append(value.searched)
            elif section == "seal":
                seal = value
    assert seal is not None  # read_sections ends at the seal or raises
    return seal, kind, chains, pruned, revoked


def _records(path: Path) -> Iterator[pack.Record]:
    with open(path, "rb") as f:
        for section, _, value in pack.read_sections(f):
            if section == "record":
                yield value
