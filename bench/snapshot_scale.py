"""Config distribution at fleet scale: how long one snapshot takes to build, check, sign,
store and apply at 10,000 tenants / 50,000 API keys / 1,000 models, and what one admin
change costs end to end.

    .venv/bin/python bench/snapshot_scale.py                       # the full size
    .venv/bin/python bench/snapshot_scale.py --tenants 200 --keys 1000 --models 50 --changes 5
    .venv/bin/python bench/snapshot_scale.py --profile out.svg     # py-spy record the control plane

It starts a control plane in this process (embedded PostgreSQL under a temporary data dir,
or ``--database-url``), seeds the configuration straight into the database in one
transaction (bulk ``INSERT ... SELECT generate_series``: this is a seeding tool, not an
admin path), then prints one row per measured step. See bench/README.md for each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controlplane.app import ControlPlane, ControlPlaneSettings
from controlplane.keys import sign_all, trusted_keys
from controlplane.limits import DEFAULT_GROUP
from controlplane.repositories import config as config_repo
from controlplane.snapshots.rows import FullRows, RowCache, cut
from controlplane.snapshots.scope import GroupView
from dataplane.routing.table import build_route_table
from dataplane.snapshot.compiled import Compiled
from dataplane.snapshot.delta import delta_message, diff, rebuild
from dataplane.snapshot.envelope import verify
from dataplane.snapshot.layout import TRUSTED_KEYS, Layout, make_layout, record, scan
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.config.v1 import snapshot_pb2, sync_pb2
from signalbox.api.infer.v1 import infer_pb2

PROVIDERS = 10


@dataclass(frozen=True, slots=True)
class Size:
    tenants: int
    keys: int
    models: int
    policies: int


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """The fleet size to seed (``Size``), and where the database lives."""
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--models", type=int, default=1_000)
    parser.add_argument(
        "--policies", type=int, default=100, help="tenant policies (plus the platform default)"
    )
    parser.add_argument(
        "--database-url", default=None, help="an empty PostgreSQL database (default: embedded)"
    )
    parser.add_argument("--data-dir", default=None)


def seed_sql(size: Size) -> list[tuple[str, dict[str, Any]]]:
    """Statements that fill an empty, migrated database with ``size`` worth of config."""
    keys_per_tenant = -(-size.keys // max(size.tenants, 1))
    default_policy = {"default_model": "bench-m00000", "allowed_models": ["bench-m00000", "bench-m00001"]}
    return [
        (
            "INSERT INTO providers (id, name, type, base_url, credential_env, credential_file, settings,"
            " timeout_ms, location, site, region, jurisdiction, created_at)"
            " SELECT gen_random_uuid(), 'bench-p' || lpad(i::text, 3, '0'), 'simulated',"
            " 'http://127.0.0.1:9/v1', 'SIGNALBOX_CRED_SIM', '', '{}'::jsonb, 30000, 1, '',"
            " 'eu-west-' || (i %% 3), 'EU', now() FROM generate_series(0, %(providers)s - 1) i",
            {"providers": PROVIDERS},
        ),
        (
            "INSERT INTO models (id, alias, capabilities, context_window, max_output_tokens,"
            " input_price_nanos_per_mtok, output_price_nanos_per_mtok, cached_input_price_nanos_per_mtok,"
            " certified_for, certifications, typical_latency_ms, attributes, created_at)"
            " SELECT gen_random_uuid(), 'bench-m' || lpad(i::text, 5, '0'), '[1, 6]'::jsonb, 128000, 4096,"
            " 1000 + i, 2000 + i, 500, '[1, 2]'::jsonb, '[]'::jsonb, 300 + i %% 500,"
            " jsonb_build_object('family', 'fam-' || (i %% 20)), now()"
            " FROM generate_series(0, %(models)s - 1) i",
            {"models": size.models},
        ),
        (
            # Two deployments per model, on two different providers.
            "INSERT INTO deployments (id, model_id, provider_id, upstream_model, weight, position)"
            " SELECT gen_random_uuid(), m.id, p.id, m.alias || '-up' || d, 1, d"
            " FROM (SELECT id, alias, row_number() OVER (ORDER BY alias) AS n FROM models) m"
            " CROSS JOIN generate_series(0, 1) d"
            " JOIN (SELECT id, row_number() OVER (ORDER BY name) - 1 AS n FROM providers) p"
            "   ON p.n = (m.n + d) %% %(providers)s",
            {"providers": PROVIDERS},
        ),
        (
            "INSERT INTO tenants (id, name, tier, active, labels, created_at)"
            " SELECT gen_random_uuid(), 'bench-t' || lpad(i::text, 6, '0'),"
            " (ARRAY['gold', 'silver', 'bronze'])[1 + i %% 3], true,"
            " jsonb_build_object('team', 'team-' || (i %% 50)), now()"
            " FROM generate_series(0, %(tenants)s - 1) i",
            {"tenants": size.tenants},
        ),
        (
            "INSERT INTO api_keys (id, tenant_id, name, prefix, secret_sha256, scopes, expires_at, created_at)"
            " SELECT gen_random_uuid(), t.id, 'key-' || k, 'sbx_bench000',"
            " sha256(convert_to('bench-secret-' || t.name || '-' || k, 'UTF8')),"
            " CASE WHEN k = 0 THEN '[]'::jsonb ELSE '[\"model:bench-m00000\"]'::jsonb END,"
            " NULL, now() + make_interval(secs => t.n * %(per)s + k)"
            " FROM (SELECT id, name, row_number() OVER (ORDER BY name) AS n FROM tenants) t"
            " CROSS JOIN generate_series(0, %(per)s - 1) k"
            " ORDER BY t.n, k LIMIT %(keys)s",
            {"per": keys_per_tenant, "keys": size.keys},
        ),
        (
            "INSERT INTO policies (id, tenant_id, version, document_json, deleted, created_at, created_by)"
            " VALUES (gen_random_uuid(), NULL, 1, %(doc)s, false, now(), 'bench')",
            {"doc": json.dumps(default_policy, sort_keys=True, separators=(",", ":"))},
        ),
        (
            # Tenant policies that route by rule over a handful of models each.
            "INSERT INTO policies (id, tenant_id, version, document_json, deleted, created_at, created_by)"
            " SELECT gen_random_uuid(), t.id, 1,"
            " json_build_object('default_model', 'bench-m' || lpad((t.n %% %(models)s)::text, 5, '0'),"
            "   'allowed_models', json_build_array("
            "     'bench-m' || lpad((t.n %% %(models)s)::text, 5, '0'),"
            "     'bench-m' || lpad(((t.n + 1) %% %(models)s)::text, 5, '0')),"
            "   'rules', json_build_array(json_build_object('name', 'cheap',"
            "     'match', json_build_object('tiers', json_build_array('gold')),"
            "     'models', json_build_array('bench-m' || lpad(((t.n + 1) %% %(models)s)::text, 5, '0'),"
            "       'bench-m' || lpad((t.n %% %(models)s)::text, 5, '0')),"
            "     'strategy', 'cheapest')))::text,"
            " false, now(), 'bench'"
            " FROM (SELECT id, row_number() OVER (ORDER BY name) AS n FROM tenants) t"
            " WHERE t.n <= %(policies)s",
            {"models": size.models, "policies": size.policies},
        ),
    ]


def seed(url: str, size: Size) -> float:
    """Fill the database in one transaction; returns the seconds it took."""
    started = time.perf_counter()
    with psycopg.connect(url) as conn, conn.transaction():
        for sql, params in seed_sql(size):
            conn.execute(sql, params)
    return time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(name: str, value: str) -> None:
    print(f"{name:<46} {value}", flush=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:9.1f} ms"


class LoopLag:
    """The event loop's worst lateness: a task that asks to wake every ``tick`` seconds."""

    def __init__(self, tick: float = 0.005) -> None:
        self.tick = tick
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.tick)
            self.worst = max(self.worst, time.perf_counter() - before - self.tick)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def timed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await fn()
    return time.perf_counter() - started, result


@asynccontextmanager
async def control_plane(data_dir: Path, database_url: str | None) -> AsyncIterator[ControlPlane]:
    settings = ControlPlaneSettings(
        listen="127.0.0.1:0",
        node_listen="127.0.0.1:0",
        data_dir=data_dir,
        database_url=database_url,
        max_message_bytes=256 * 1024 * 1024,
        snapshot_retention=10,
    )
    async with ControlPlane(settings) as cp:
        yield cp


@dataclass(frozen=True, slots=True)
class Pipeline:
    """What ``measure_pipeline`` produced, for the node-side figures."""

    base: Compiled
    base_envelope: snapshot_pb2.SignedEnvelope
    delta: sync_pb2.SnapshotDelta


async def measure_pipeline(cp: ControlPlane) -> Pipeline:
    """Each step of a publish as the publisher runs it: rows read (cold, then warm after a
    one-tenant change), the cut, the compile (whole once, then by difference), the delta,
    signing and storing."""
    assert cp.keyring is not None
    assert cp._engine is not None
    from controlplane.db.session import session_factory

    sessions = session_factory(cp._engine)
    cache = RowCache()
    group = GroupView(DEFAULT_GROUP)
    now = datetime.now(UTC)

    def header(version: int) -> snapshot_pb2.Snapshot:
        h = snapshot_pb2.Snapshot(version=version, previous_hash=b"\0" * 32, scope=group.scope)
        h.created_at.FromDatetime(now)
        h.expires_at.FromDatetime(now + timedelta(days=30))
        return h

    async with sessions() as session, session.begin():
        await config_repo.lock_config(session)
        cold_s, full = await timed(lambda: cache.read(session))
        trusted = [
            record(TRUSTED_KEYS, snapshot_pb2.TrustedKey(key_id=k, ed25519_public_key=p).SerializeToString())
            for k, p, _ in await trusted_keys(session)
        ]
        signers = await cp.keyring.signers(session)
        await session.execute(
            text("UPDATE tenants SET labels = '{\"bench\": \"changed\"}' WHERE name = 'bench-t000001'")
        )
        warm_s, changed = await timed(lambda: cache.read(session))
        await session.rollback()

    def body(rows: FullRows, version: int) -> Layout:
        records: dict[int, Sequence[bytes]] = dict(cut(rows, group).records)
        records[TRUSTED_KEYS] = trusted
        return make_layout(header(version), records)

    started = time.perf_counter()
    layout = body(full, 1)
    cut_s = time.perf_counter() - started
    payload = layout.payload()
    started = time.perf_counter()
    base = Compiled.full(layout, payload)
    compile_s = time.perf_counter() - started
    new = body(changed, 2)
    started = time.perf_counter()
    splices, changes = diff(layout, new)
    diff_s = time.perf_counter() - started
    started = time.perf_counter()
    new_payload = new.payload()
    digest = hashlib.sha256(new_payload).digest()
    join_s = time.perf_counter() - started
    started = time.perf_counter()
    base.advance(new, changes, new_payload, digest)
    advance_s = time.perf_counter() - started
    started = time.perf_counter()
    envelope = sign_all(signers, new_payload)
    raw = envelope.SerializeToString(deterministic=True)
    sign_s = time.perf_counter() - started
    delta = delta_message((1, hashlib.sha256(payload).digest()), new, splices, digest, envelope)
    async with sessions() as session, session.begin():
        started = time.perf_counter()
        await session.execute(text("CREATE TEMP TABLE bench_store (envelope bytea) ON COMMIT DROP"))
        await session.execute(text("ALTER TABLE bench_store ALTER COLUMN envelope SET STORAGE EXTERNAL"))
        await session.execute(text("INSERT INTO bench_store VALUES (:e)"), {"e": raw})
        store_s = time.perf_counter() - started
    row("snapshot size", f"{len(payload) / 1e6:9.2f} MB payload, {len(raw) / 1e6:.2f} MB envelope")
    row("  rows read, cold (first publish of a process)", ms(cold_s))
    row("  rows read, warm (after a one-tenant change)", ms(warm_s))
    row("  cut (default group)", ms(cut_s))
    row("  compile whole (first publish of a process)", ms(compile_s))
    row("  diff against the previous version", ms(diff_s))
    row("  compile by difference", ms(advance_s))
    row("  payload join + SHA-256", ms(join_s))
    row("  sign (+ envelope serialize)", ms(sign_s))
    row("  store (one INSERT of the envelope)", ms(store_s))
    row("  delta to the previous version", f"{len(delta.SerializeToString())} bytes, {len(splices)} splices")
    base_envelope = sign_all(signers, payload)
    return Pipeline(base, base_envelope, delta)


def measure_apply(cp: ControlPlane, pipeline: Pipeline) -> None:
    """What a node does: a whole envelope (verify, layout, compile, route table), then the
    next version as a delta (rebuild, verify, compile by difference)."""
    assert cp.signer is not None
    trusted = {cp.signer.key_id: cp.signer.public_key}
    envelope = pipeline.base_envelope
    started = time.perf_counter()
    verify(envelope, trusted)
    verify_s = time.perf_counter() - started
    started = time.perf_counter()
    layout = scan(envelope.payload)
    scan_s = time.perf_counter() - started
    started = time.perf_counter()
    whole = Compiled.full(layout, envelope.payload)
    compile_s = time.perf_counter() - started
    started = time.perf_counter()
    build_route_table(whole.config)
    routes_s = time.perf_counter() - started
    row(
        "node, whole: verify / layout / compile / routes",
        f"{ms(verify_s)} / {ms(scan_s)} / {ms(compile_s)} / {ms(routes_s)}",
    )
    started = time.perf_counter()
    rebuilt = rebuild(whole.layout, pipeline.delta)
    rebuild_s = time.perf_counter() - started
    started = time.perf_counter()
    verify(pipeline.delta.envelope, trusted, message=rebuilt.message)
    verify_s = time.perf_counter() - started
    started = time.perf_counter()
    whole.advance(rebuilt.layout, rebuilt.changes, rebuilt.payload, rebuilt.digest)
    advance_s = time.perf_counter() - started
    row(
        "node, delta: rebuild / verify / compile",
        f"{ms(rebuild_s)} / {ms(verify_s)} / {ms(advance_s)}  (routes reused)",
    )


async def measure_changes(cp: ControlPlane, token: str, changes: int, clients: int) -> None:
    """Admin changes over the real Admin API: latency one at a time, then throughput."""
    metadata = (("authorization", f"Bearer {token}"),)
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(cp.address, options=options) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)

        async def change(i: int, who: str) -> float:
            started = time.perf_counter()
            await admin.UpdateTenant(
                admin_pb2.UpdateTenantRequest(tenant=f"bench-t{i:06d}", labels={"bench": f"{who}-{i}"}),
                metadata=metadata,
                timeout=120,
            )
            return time.perf_counter() - started

        with LoopLag() as lag:
            latencies = [await change(i, "serial") for i in range(changes)]
        row(
            f"admin change, one at a time (n={changes})",
            f"p50 {pct(latencies, 0.5) * 1000:.1f} ms  p99 {pct(latencies, 0.99) * 1000:.1f} ms",
        )
        row("  worst event-loop lag meanwhile", ms(lag.worst))

        async def client(c: int) -> list[float]:
            return [await change(c * changes + i, f"c{c}") for i in range(changes)]

        before = await admin.GetSnapshot(admin_pb2.GetSnapshotRequest(), metadata=metadata)
        started = time.perf_counter()
        with LoopLag() as lag:
            results = await asyncio.gather(*(client(c) for c in range(clients)))
        wall = time.perf_counter() - started
        after = await admin.GetSnapshot(admin_pb2.GetSnapshotRequest(), metadata=metadata)
        flat = [x for r in results for x in r]
        row(
            f"admin changes, {clients} clients x {changes}",
            f"{len(flat) / wall:6.1f} changes/s  p50 {pct(flat, 0.5) * 1000:.1f} ms"
            f"  p99 {pct(flat, 0.99) * 1000:.1f} ms  versions +{after.version - before.version}",
        )
        row("  worst event-loop lag meanwhile", ms(lag.worst))


async def measure_first_change(cp: ControlPlane, token: str) -> None:
    """The first change a process publishes reads every row and compiles whole (its caches
    are empty); every later one reads and compiles what changed."""
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(cp.address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        started = time.perf_counter()
        await admin.UpdateTenant(
            admin_pb2.UpdateTenantRequest(tenant="bench-t000000", labels={"bench": "first"}),
            metadata=metadata,
            timeout=120,
        )
    row("first admin change of the process (cold caches)", ms(time.perf_counter() - started))


async def measure_explain(cp: ControlPlane, token: str, count: int) -> None:
    """``ExplainRoute`` (``signalbox admin route explain``) at fleet size, one call after
    another once the snapshot is compiled: what an admin waits for per question."""
    metadata = (("authorization", f"Bearer {token}"),)
    ask = infer_pb2.InferRequest()
    ask.messages.add(role=infer_pb2.ROLE_USER).content.add(text="hello")
    request = admin_pb2.ExplainRouteRequest(tenant="bench-t000001", request=ask)
    async with grpc.aio.insecure_channel(cp.address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        await admin.ExplainRoute(request, metadata=metadata, timeout=120)  # compiles the snapshot
        times = []
        for _ in range(count):
            started = time.perf_counter()
            await admin.ExplainRoute(request, metadata=metadata, timeout=120)
            times.append(time.perf_counter() - started)
    row(f"route explain, {count} calls", f"p50 {ms(pct(times, 0.5))}  p99 {ms(pct(times, 0.99))}")


async def measure_key_creation(cp: ControlPlane, token: str, count: int, label: str) -> None:
    """Keys created one by one (each its own change and snapshot): the cost per key."""
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(cp.address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        with contextlib.suppress(grpc.aio.AioRpcError):
            await admin.CreateTenant(admin_pb2.CreateTenantRequest(name="bench-keys"), metadata=metadata)
        started = time.perf_counter()
        for _ in range(count):
            await admin.CreateApiKey(
                admin_pb2.CreateApiKeyRequest(tenant="bench-keys"), metadata=metadata, timeout=120
            )
        per_key = (time.perf_counter() - started) / count
    row(f"key creation one by one, {label}", f"{per_key * 1000:9.1f} ms/key ({1 / per_key:.1f} keys/s)")


async def measure_import(cp: ControlPlane, token: str, tenants: int, keys: int) -> None:
    """``ImportConfig`` (what ``signalbox admin import`` sends) of that many new tenants and keys."""
    lines = [json.dumps({"kind": "tenant", "name": f"imp-t{i:06d}", "tier": "gold"}) for i in range(tenants)]
    per = -(-keys // max(tenants, 1))
    lines += [
        json.dumps({"kind": "api_key", "tenant": f"imp-t{i // per:06d}", "name": f"k{i}"})
        for i in range(keys)
    ]
    data = "\n".join(lines).encode()
    metadata = (("authorization", f"Bearer {token}"),)
    options = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(cp.address, options=options) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        started = time.perf_counter()
        with LoopLag() as lag:
            reply = await admin.ImportConfig(
                admin_pb2.ImportConfigRequest(jsonl=data), metadata=metadata, timeout=600
            )
        seconds = time.perf_counter() - started
    row(
        f"import {tenants} tenants + {keys} keys ({len(data) / 1e6:.1f} MB)",
        f"{seconds:7.1f} s  -> v{reply.snapshot_version}, {len(reply.keys)} secrets; worst loop lag {lag.worst * 1000:.0f} ms",
    )


def start_profiler(out: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(os.getpid()),
            "--output",
            out,
            "--rate",
            "200",
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def main(args: argparse.Namespace) -> None:
    size = Size(args.tenants, args.keys, args.models, args.policies)
    with tempfile.TemporaryDirectory(prefix="signalbox-scale-") as tmp:
        # Traversable: embedded PostgreSQL runs as its own user when we are root.
        os.chmod(tmp, 0o711)
        data_dir = Path(args.data_dir or tmp)
        async with control_plane(data_dir, args.database_url) as cp:
            assert cp.admin is not None
            _, token = await cp.admin.create_token("bench")
            url = cp.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
            if args.key_creations:
                await measure_key_creation(cp, token, args.key_creations, "empty database")
            seconds = await asyncio.to_thread(seed, url, size)
            row(
                "seeded",
                f"{size.tenants} tenants, {size.keys} keys, {size.models} models, "
                f"{size.policies + 1} policies in {seconds:.1f} s",
            )
            profiler = start_profiler(args.profile) if args.profile else None
            try:
                pipeline = await measure_pipeline(cp)
                measure_apply(cp, pipeline)
                await measure_first_change(cp, token)
                if args.explains:
                    await measure_explain(cp, token, args.explains)
                if args.key_creations:
                    await measure_key_creation(cp, token, args.key_creations, f"at {size.keys} keys")
                await measure_changes(cp, token, args.changes, args.clients)
                if args.import_tenants or args.import_keys:
                    await measure_import(cp, token, args.import_tenants, args.import_keys)
            finally:
                if profiler is not None:
                    profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                    profiler.wait()
                    row("py-spy profile", args.profile)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_size_arguments(parser)
    parser.add_argument("--changes", type=int, default=50, help="admin changes per client")
    parser.add_argument("--clients", type=int, default=8, help="concurrent admin clients")
    parser.add_argument(
        "--key-creations", type=int, default=10, help="keys created one by one, before and after seeding"
    )
    parser.add_argument("--explains", type=int, default=50, help="route explain calls, one after another")
    parser.add_argument("--import-tenants", type=int, default=10_000, help="tenants imported at the end")
    parser.add_argument("--import-keys", type=int, default=50_000, help="API keys imported at the end")
    parser.add_argument("--profile", default=None, help="write a py-spy flame graph (SVG) of this run")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
