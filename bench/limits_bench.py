"""Rate-limit and budget check cost per request, with 50,000 limited keys loaded.

    .venv/bin/python bench/limits_bench.py                      # 50,000 keys, 20,000 calls
    .venv/bin/python bench/limits_bench.py --keys 1000 --calls 500   # smoke run

A snapshot payload with ``--keys`` API keys over 1,000 tenants, every tenant and every key
with all four limits (requests/min, tokens/min, budget per day and per month), is compiled by
the node's own compiler; every key's buckets are then filled as leases would fill them (no
control plane: the lease loop is off the request path and not what is measured). Timed
in-process, one request at a time, cycling through the keys (so the buckets dict holds every
key's four buckets and its tenant's four: 204,000 at 50,000 keys): ``Quotas.admit`` (eight buckets: requests, tokens and
two budgets, of the tenant and of the key) plus ``Quotas.settle``, alone and after
``dataplane.auth.authenticate`` (the API key check). Output: median and p99 in microseconds,
and the target (identity and limits together under 50 us median) as PASS/FAIL.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from identity_bench import measure

from dataplane import auth
from dataplane.quota import Kind, Quotas
from dataplane.snapshot.compile import compile_payload
from signalbox.api.config.v1 import snapshot_pb2

TOGETHER_TARGET_US = 50.0
TENANTS = 1000
LIMITS = snapshot_pb2.Limits(
    requests_per_minute=600,
    tokens_per_minute=100_000,
    budget_day_nanos=10_000_000_000,
    budget_month_nanos=200_000_000_000,
)


def build(keys: int) -> tuple[bytes, list[str]]:
    snap = snapshot_pb2.Snapshot(version=1)
    for t in range(TENANTS):
        snap.tenants.add(id=f"t{t}", name=f"tenant-{t}", active=True, limits=LIMITS)
    secrets_list = []
    for i in range(keys):
        secret = "sbx_" + secrets.token_urlsafe(32)
        secrets_list.append(secret)
        snap.api_keys.add(
            id=f"k{i}",
            tenant_id=f"t{i % TENANTS}",
            secret_sha256=hashlib.sha256(secret.encode()).digest(),
            limits=LIMITS,
        )
    return snap.SerializeToString(), secrets_list


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=50_000, help="API keys in the snapshot, each limited")
    parser.add_argument("--calls", type=int, default=20_000, help="timed calls per row")
    ns = parser.parse_args(argv)
    payload, keys = build(ns.keys)
    config = compile_payload(payload)
    now = time.time()
    quotas = Quotas()
    callers = [auth.authenticate(config, key, now) for key in keys]
    for caller in callers:
        for kind in Kind:
            for key_id, limits in (("", caller.tenant.limits), (caller.key_id, caller.key_limits)):
                assert limits is not None
                quotas.bucket(caller.tenant, key_id, limits, kind)
    for bucket in quotas.buckets.values():
        # As leases leave them: leased, holding plenty.
        bucket.leased, bucket.holding = True, 1e18

    position = 0

    def limits_only() -> object:
        nonlocal position
        caller = callers[position % len(callers)]
        position += 1
        reservation = quotas.admit(caller.tenant, caller.key_id, caller.key_limits, 1000, 10_000)
        quotas.settle(reservation, 900, 9_000)
        return reservation

    def identity_and_limits() -> object:
        nonlocal position
        key = keys[position % len(keys)]
        position += 1
        caller = auth.authenticate(config, key, now)
        reservation = quotas.admit(caller.tenant, caller.key_id, caller.key_limits, 1000, 10_000)
        quotas.settle(reservation, 900, 9_000)
        return reservation

    print(
        f"{ns.keys} API keys over {TENANTS} tenants, all limited (4 limits each); "
        f"{len(quotas.buckets)} buckets; {ns.calls} calls per row"
    )
    print(f"{'check':<34} {'median us':>10} {'p99 us':>10}")
    verdict = 0
    for name, call in (
        ("api key", lambda: auth.authenticate(config, keys[position % len(keys)], now)),
        ("limits (admit + settle, 8 buckets)", limits_only),
        ("api key + limits", identity_and_limits),
    ):
        median, p99 = measure(call, ns.calls)
        note = ""
        if name == "api key + limits":
            ok = median < TOGETHER_TARGET_US
            note = f"  target < {TOGETHER_TARGET_US:.0f} us: {'PASS' if ok else 'FAIL'}"
            verdict = 0 if ok else 1
        print(f"{name:<34} {median:>10.1f} {p99:>10.1f}{note}")
    return verdict


if __name__ == "__main__":
    raise SystemExit(main())
