"""``signalbox admin evidence``: the evidence store (query, chains, prune) and Evidence
Packs exported from and imported into it."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC
from pathlib import Path

from signalbox.api.admin.v1 import admin_pb2
from signalbox.shell.admin_cli.commands.base import Stub
from signalbox.shell.admin_cli.output import (
    EVIDENCE_CHAIN_COLUMNS,
    EVIDENCE_COLUMNS,
    EVIDENCE_PRUNED_COLUMNS,
    Output,
    evidence_chain_row,
    evidence_pruned_row,
    evidence_row,
)
from signalbox.text import printable

# ---- evidence store ----


async def evidence_query(stub: Stub, ns: argparse.Namespace) -> Output:
    request = admin_pb2.QueryEvidenceRequest(
        correlation_id=ns.correlation_id or "",
        tenant_id=ns.tenant or "",
        api_key_id=ns.api_key or "",
        model=ns.model or "",
        outcome=ns.outcome or "",
        limit=ns.limit or 0,
    )
    if ns.since is not None:
        request.since.FromDatetime(ns.since)
    if ns.until is not None:
        request.until.FromDatetime(ns.until)
    r = await stub.QueryEvidence(request)
    output = Output(r, EVIDENCE_COLUMNS, [evidence_row(x) for x in r.records])
    for pruned in r.pruned:
        print(
            f"(chain {printable(pruned.chain_id, 100)}: records 1..{pruned.last_seq}, older than "
            f"{pruned.pruned_before.ToDatetime(UTC).isoformat()}, were pruned; --json has the signed statement)",
            file=sys.stderr,
        )
    if r.truncated:
        print(
            f"(more records match: raise --limit above {len(r.records)} or narrow the filters)",
            file=sys.stderr,
        )
    return output


async def evidence_prune(stub: Stub, ns: argparse.Namespace) -> Output:
    request = admin_pb2.PruneEvidenceRequest()
    request.before.FromDatetime(ns.before)
    r = await stub.PruneEvidence(request)
    return Output(r, EVIDENCE_PRUNED_COLUMNS, [evidence_pruned_row(x) for x in r.ranges])


async def evidence_chains(stub: Stub, ns: argparse.Namespace) -> Output:
    r = await stub.ListEvidenceChains(admin_pb2.ListEvidenceChainsRequest())
    return Output(r, EVIDENCE_CHAIN_COLUMNS, [evidence_chain_row(c) for c in r.chains])


# ---- evidence packs ----


async def evidence_export(stub: Stub, ns: argparse.Namespace) -> Output:
    """Write the pack to ``--out`` through a private temporary file renamed at the end: an
    error or an interruption leaves nothing (not a half pack) behind."""
    request = admin_pb2.ExportEvidenceRequest(
        correlation_id=ns.correlation_id or "",
        tenant_id=ns.tenant or "",
        api_key_id=ns.api_key or "",
        model=ns.model or "",
        outcome=ns.outcome or "",
    )
    if ns.since is not None:
        request.since.FromDatetime(ns.since)
    if ns.until is not None:
        request.until.FromDatetime(ns.until)
    from signalbox.shell.progress import records_bar  # tqdm: only the commands that show progress load it

    out = Path(ns.out)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.part")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    first: admin_pb2.EvidencePackChunk | None = None
    try:
        with os.fdopen(fd, "wb") as f, records_bar(None, "export") as bar:
            async for chunk in stub.ExportEvidence(request):
                if first is None:
                    first = chunk
                    bar.reset(total=chunk.records)
                    continue
                f.write(chunk.data)
                bar.update(min(chunk.data.count(b"\n"), bar.total - bar.n))
            f.flush()
            os.fsync(f.fileno())
        if first is None:
            raise OSError("the control plane ended the export without a pack")
        os.replace(temporary, out)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return Output(first, text=f"wrote {out}: {first.records} records (pack {first.pack_id})\n")


IMPORT_CHUNK_BYTES = 1024 * 1024
IMPORTED_COLUMNS = ("chain", "stored", "duplicates", "head", "checkpoints", "error")


async def evidence_import(stub: Stub, ns: argparse.Namespace) -> Output:
    """Stream the pack in pieces; one row per chain: what was stored, already held, the head.
    Exit 1 when the store refused any chain from some record on (named on stderr)."""
    from dataplane.evidence import pack
    from signalbox.shell.progress import records_bar

    path = Path(ns.pack)
    f = await asyncio.to_thread(open, path, "rb")
    with f, records_bar(pack.record_count_hint(path), "import") as bar:

        async def chunks() -> AsyncIterator[admin_pb2.EvidencePackChunk]:
            while data := await asyncio.to_thread(f.read, IMPORT_CHUNK_BYTES):
                bar.update(min(data.count(b"\n"), max(0, (bar.total or 0) - bar.n)))
                yield admin_pb2.EvidencePackChunk(data=data)

        r = await stub.ImportEvidence(chunks())
    rows = [
        (
            c.chain_id,
            c.stored,
            c.duplicates,
            c.head_seq,
            c.checkpoints,
            f"seq {c.error_seq}: {c.error}" if c.error else "-",
        )
        for c in r.chains
    ]
    # A pack that verified can still be refused by the store from some record on (a gap,
    # a record stored with another hash): exit 1, so a script does not take it for imported.
    refused = [c for c in r.chains if c.error]
    for c in refused:
        print(
            f"signalbox admin: chain {printable(repr(c.chain_id), 100)} not imported from seq "
            f"{c.error_seq}: {printable(c.error)}",
            file=sys.stderr,
        )
    return Output(r, IMPORTED_COLUMNS, rows, exit_code=1 if refused else 0)
