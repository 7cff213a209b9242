"""The incremental snapshot body (``controlplane.snapshots.rows``) at fleet size: what reading
the config tables costs cold, after one tenant update and after a few new keys, and what
cutting a group's body costs, next to the full rebuild it replaces.

    .venv/bin/python bench/rows_bench.py                        # 10,000 tenants, 50,000 keys
    .venv/bin/python bench/rows_bench.py --tenants 20 --keys 50 --models 5 --policies 2   # smoke run

It starts a control plane in this process (embedded PostgreSQL under a temporary data dir,
or ``--database-url``), seeds it with ``snapshot_scale.seed``, then times each step inside a
transaction that holds the config lock, as the publisher will. Changes between reads are
plain SQL in their own committed transactions (no publish runs: only the read is measured).
Each warm figure is the median of ``--repeat`` rounds; the worst event-loop lag during the
reads is printed too. Before timing, it checks once that the default group's body is
byte-identical to ``scope_snapshot(build_snapshot(...))``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.snapshot_scale import LoopLag, Size, add_size_arguments, control_plane, ms, row, seed, timed
from controlplane.db.session import session_factory
from controlplane.repositories import config as config_repo
from controlplane.snapshots import rows
from controlplane.snapshots.build import build_snapshot
from controlplane.snapshots.scope import GroupView, scope_snapshot
from dataplane.config.model import DeploymentMode
from signalbox.api.config.v1 import snapshot_pb2


async def locked(
    sessions: async_sessionmaker[AsyncSession], fn: Callable[[AsyncSession], Awaitable[Any]]
) -> Any:
    async with sessions() as session, session.begin():
        await config_repo.lock_config(session)
        return await fn(session)


async def execute(sessions: async_sessionmaker[AsyncSession], sql: str) -> None:
    async with sessions() as session, session.begin():
        await session.execute(text(sql))


def cut_seconds(full: rows.FullRows, group: GroupView) -> float:
    started = time.perf_counter()
    rows.cut(full, group)
    return time.perf_counter() - started


async def timed_read(
    sessions: async_sessionmaker[AsyncSession], cache: rows.RowCache, lag: LoopLag
) -> tuple[float, rows.FullRows]:
    async def read(session: AsyncSession) -> tuple[float, rows.FullRows]:
        started = time.perf_counter()
        full = await cache.read(session)
        return time.perf_counter() - started, full

    with lag:
        result: tuple[float, rows.FullRows] = await locked(sessions, read)
    return result


async def rebuild(session: AsyncSession, group: GroupView) -> bytes:
    """Fields 10..14 of the group's payload the way publish.py makes them today."""
    now = datetime.now(UTC)
    full = await build_snapshot(
        session,
        version=1,
        previous_hash=b"",
        created_at=now,
        expires_at=now + timedelta(days=1),
        scope=snapshot_pb2.Scope(),
        trusted=[],
    )

    def cut_and_serialize() -> bytes:
        scoped = scope_snapshot(full, group)
        for name in ("version", "created_at", "expires_at", "previous_hash", "scope", "trusted_keys"):
            scoped.ClearField(name)
        return scoped.SerializeToString(deterministic=True)

    return await asyncio.to_thread(cut_and_serialize)


async def main(args: argparse.Namespace) -> None:
    size = Size(args.tenants, args.keys, args.models, args.policies)
    with tempfile.TemporaryDirectory(prefix="signalbox-rows-") as tmp:
        os.chmod(tmp, 0o711)  # traversable: embedded PostgreSQL runs as its own user when we are root
        async with control_plane(Path(args.data_dir or tmp), args.database_url) as cp:
            url = cp.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
            seconds = await asyncio.to_thread(seed, url, size)
            row(
                "seeded", f"{size.tenants} tenants, {size.keys} keys, {size.models} models in {seconds:.1f} s"
            )
            assert cp._engine is not None
            sessions = session_factory(cp._engine)
            # Statistics, as autovacuum would gather them after a bulk load: without them the
            # planner does not know the keys table is large enough for its index.
            await execute(sessions, "ANALYZE")
            default = GroupView("default")
            listed = GroupView(
                "listed",
                tenants=frozenset(f"bench-t{i:06d}" for i in range(0, size.tenants, 10)),
                providers=frozenset(f"bench-p{i:03d}" for i in range(5)),
                models=frozenset(f"bench-m{i:05d}" for i in range(0, size.models, 2)),
            )
            air = GroupView("vault", DeploymentMode.AIR_GAPPED, site="nowhere")

            cold_lag = LoopLag()
            cache = rows.RowCache()
            cold, full = await timed_read(sessions, cache, cold_lag)
            row("read, cold (every row encoded)", ms(cold))
            row("  worst event-loop lag meanwhile", ms(cold_lag.worst))
            rebuild_s, expected = await locked(sessions, lambda s: timed(lambda: rebuild(s, default)))
            body = rows.cut(full, default).encoded()
            if body != expected:
                raise SystemExit("the default group's body differs from scope_snapshot(build_snapshot())")
            row("  body of the default group", f"{len(body) / 1e6:9.2f} MB, identical to the rebuild")
            row("rebuild today (build + scope + serialize)", ms(rebuild_s))

            lag = LoopLag()
            reads: dict[str, list[float]] = {"unchanged": [], "tenant": [], "keys": []}
            cuts: dict[str, list[float]] = {"default": [], "listed": [], "air": []}
            for i in range(args.repeat):
                reads["unchanged"].append((await timed_read(sessions, cache, lag))[0])
                await execute(
                    sessions,
                    f"UPDATE tenants SET labels = labels || '{{\"bench\": \"{i}\"}}' WHERE name = 'bench-t000042'",
                )
                reads["tenant"].append((await timed_read(sessions, cache, lag))[0])
                await execute(
                    sessions,
                    "INSERT INTO api_keys (id, tenant_id, name, prefix, secret_sha256, scopes, created_at)"
                    f" SELECT gen_random_uuid(), t.id, 'new-{i}-' || k, 'sbx_bench000',"
                    f" sha256(convert_to('new-{i}-' || k, 'UTF8')), '[]', clock_timestamp() + interval '1 day'"
                    " FROM tenants t CROSS JOIN generate_series(1, 8) k WHERE t.name = 'bench-t000007'",
                )
                elapsed, full = await timed_read(sessions, cache, lag)
                reads["keys"].append(elapsed)
                for name, group in (("default", default), ("listed", listed), ("air", air)):
                    cuts[name].append(cut_seconds(full, group))
            median = statistics.median
            row(f"read, nothing changed (median of {args.repeat})", ms(median(reads["unchanged"])))
            row("read after one tenant update", ms(median(reads["tenant"])))
            row("read after 8 new keys", ms(median(reads["keys"])))
            row("cut: default group (fast path)", ms(median(cuts["default"])))
            row(f"cut: listed group ({len(listed.tenants or ())} tenants)", ms(median(cuts["listed"])))
            row("cut: air-gapped group (no provider reachable)", ms(median(cuts["air"])))
            row(
                "warm read + cut default, + cut listed",
                f"{(median(reads['tenant']) + median(cuts['default'])) * 1000:9.1f} ms,"
                f" {(median(reads['tenant']) + median(cuts['default']) + median(cuts['listed'])) * 1000:.1f} ms",
            )
            row("  worst event-loop lag during the warm reads", ms(lag.worst))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_size_arguments(parser)
    parser.add_argument("--repeat", type=int, default=5, help="rounds of each warm measurement")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
