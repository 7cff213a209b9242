"""An air-gapped node's own quota ledger: the node is the whole group.

A node with no control plane (a pinned snapshot, or no ``--control-plane``) still enforces
its snapshot's rate limits and budgets, at the full limit. Its worker 0 runs this ledger and
serves ``QuotaService.Lease`` on a unix socket in the node's data dir (``SOCKET``, in a 0700
directory: only the node's own user reaches it); every worker, worker 0 included, leases
from it with the same ``QuotaLeaser`` a connected node points at the control plane. So
``--workers N`` holds the limit for the node as a whole, not N times over, and under uneven
load across workers too: a busy worker gets what quiet ones hand back, as a busy node does
across a group (why not a static 1/N split: ``controlplane/quota.py``). The grants are
computed by the same rules as the control plane's (``signalbox.quota_grants``), the limits
read from worker 0's current snapshot.

Rates live in memory: a restarted node starts with full buckets (one burst, as a new
control-plane bucket does). Budgets are counted per UTC day and month and persisted in
``<data dir>/quota/budgets.json`` (atomic replace, fsynced) *before* a grant is answered:
what was granted is counted on disk before any worker can spend it. The count is what was
granted less what was handed back, plus what was overspent (until the window is used up:
then it stays so, ``signalbox.quota_grants``). A graceful stop's last lease round reports the
drain's overspend and hands back what each worker holds (``QuotaLeaser.close``): the count is
then the real spend (worker 0 serves the ledger until every worker that leased has made that
last call, ``LocalLedger.last_leases``). Quota a worker held when the node was killed counts as
spent (never less than the real spend: the safe side). What a worker spent past what it
held (a mirror's cost, known when the mirror ends) reaches the file only with its next lease
round, a quarter lease period later at least: at every start each budget of the current day
and month is raised to what the node's evidence says was spent (``LocalLedger.load``), the
larger of the two, so a node killed in that gap never restarts with the charge forgotten. A
charge a lease round reported is in both counts: it counts once.

A missing file, or one that cannot be read or parsed (torn by a failing disk, deleted or
edited by hand: a crash cannot tear it, the replace is atomic), is recounted from the node's
own evidence (``spent``: every record's cost, written before its answer), the current day
and month only; an unreadable file is logged as an error and moved aside as
``budgets.json.corrupt`` for the operator. The recount is what the records say was spent,
which can be less than what was granted (quota a worker held when the file was lost), never
more than was spent. On a node's first start there is no evidence and nothing was spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

from dataplane.config.model import LimitsConfig, RuntimeConfig
from dataplane.files import atomic_write, private_dir, read_regular
from dataplane.quota.buckets import Kind, limit_of
from dataplane.quota.leaser import MAX_ASKS
from signalbox import quota_grants as grants
from signalbox.api.config.v1 import quota_pb2, quota_pb2_grpc

log = logging.getLogger("signalbox.dataplane.quota")

QUOTA_DIR = "quota"
"""Under the data dir: the budgets file and the ledger's socket."""
BUDGETS_FILE = "budgets.json"
MAX_BUDGETS_FILE_BYTES = 64 * 1024 * 1024
"""A larger budgets file is not read (an entry is ~100 bytes; four per tenant and key), but
set aside and recounted like an unreadable one."""
SOCKET = "lease.sock"
MAX_SOCKET_PATH = 107
"""A unix socket path's bound (``sun_path`` is 108 bytes with its NUL)."""
DEFAULT_BURST_SECONDS = 60.0
"""A rate's bucket holds this many seconds of its limit, as on the control plane."""
INT64_MAX = 2**63 - 1
FORMAT = 1
KINDS = frozenset(int(k) for k in Kind)

BudgetKey = tuple[str, str, int, str]
"""(tenant id, API key id or "", kind, window)."""


def socket_path(data_dir: Path) -> Path:
    return data_dir / QUOTA_DIR / SOCKET


def windows(now: float) -> dict[int, str]:
    """The UTC day and month windows of ``now`` (unix seconds), by budget kind."""
    moment = datetime.fromtimestamp(now, UTC)
    return {Kind.BUDGET_DAY: moment.strftime("%Y-%m-%d"), Kind.BUDGET_MONTH: moment.strftime("%Y-%m")}


def oldest_kept(now: float) -> dict[int, str]:
    """By budget kind, the oldest window whose count is kept at ``now``: the one before the
    current (windows sort as their strings do). A clock stepped back across midnight or a
    month's end (an NTP step, a VM restored) finds the count of the window it re-enters, and
    that of the later one when it catches up, instead of a fresh budget each time."""
    moment = datetime.fromtimestamp(now, UTC)
    first = moment.replace(day=1)
    return {
        Kind.BUDGET_DAY: (moment - timedelta(days=1)).strftime("%Y-%m-%d"),
        Kind.BUDGET_MONTH: (first - timedelta(days=1)).strftime("%Y-%m"),
    }


class _Limits:
    """Limits by (tenant id, key id), indexed once per snapshot version."""

    def __init__(self, config: Callable[[], RuntimeConfig | None]) -> None:
        self._config = config
        self._version = -1
        self._index: Mapping[tuple[str, str], LimitsConfig] = {}

    def of(self, tenant_id: str, key_id: str, kind: int) -> int:
        config = self._config()
        if config is None:
            return 0
        if config.version != self._version:
            index = {(t.id, ""): t.limits for t in config.tenants.values() if t.limits is not None}
            index.update(
                {(k.tenant_id, k.id): k.limits for k in config.api_keys.values() if k.limits is not None}
            )
            self._index, self._version = index, config.version
        limits = self._index.get((tenant_id, key_id))
        return 0 if limits is None else limit_of(limits, Kind(kind))


class LocalLedger:
    """Grants of one air-gapped node; ``load`` once, then ``lease`` per call."""

    def __init__(
        self,
        config: Callable[[], RuntimeConfig | None],
        state_dir: Path,
        *,
        burst_seconds: float = DEFAULT_BURST_SECONDS,
        clock: Callable[[], float] = time.time,
        rate_clock: Callable[[], float] = time.monotonic,
        spent: Callable[[float], Iterable[tuple[str, str, float, int]]] = lambda since: (),
    ) -> None:
        """``clock``: the wall clock, which names the budgets' UTC days and months;
        ``rate_clock``: the monotonic clock the rates refill by (they live in memory only, and a
        wall clock stepped an hour ahead would refill them a whole burst at once).
        ``spent(since)``: (tenant id, key id, time, nano-USD) of what the node's evidence
        says was spent since a time: the recount when the budgets file is missing or bad."""
        self._spent = spent
        self._limits = _Limits(config)
        self._dir = state_dir
        self.burst_seconds = burst_seconds
        self._clock = clock
        self._rate_clock = rate_clock
        self._rates: dict[tuple[str, str, int], grants.Row] = {}
        self._budgets: dict[BudgetKey, grants.Row] = {}
        self._dirty = False
        self._writing = asyncio.Lock()
        self._holders: dict[str, bool] = {}
        """Holder -> whether it made its last call (``last_leases``)."""
        self._leased = asyncio.Event()

    @property
    def path(self) -> Path:
        return self._dir / BUDGETS_FILE

    def spent(self, tenant_id: str, key_id: str, kind: Kind) -> int:
        """Units of a budget counted in its current window (granted less handed back)."""
        window = windows(self._clock())[kind]
        row = self._budgets.get((tenant_id, key_id, int(kind), window))
        return 0 if row is None else row.used

    def load(self) -> None:
        """Read the budgets file, each budget of this day and month at least what the evidence
        says was spent; missing or unreadable, recount from the evidence (see the module
        docstring)."""
        private_dir(self._dir)
        try:
            # Bounded and without blocking: a FIFO planted here hung the start, and a device
            # such as /dev/zero was read until memory ran out.
            raw = read_regular(self.path, MAX_BUDGETS_FILE_BYTES)
        except FileNotFoundError:
            self._recount(f"no {self.path}")
            return
        except OSError as exc:
            self._corrupt(f"cannot be read: {exc.strerror}")
            return
        try:
            self._budgets = _parse(raw)
        except ValueError as exc:
            self._corrupt(str(exc))
            return
        self._catch_up()

    def _catch_up(self) -> None:
        """Raise each budget of this day and month to what the evidence says was spent, where
        it says more: a charge the ledger hears of only with a worker's next lease round (a
        mirror's cost, a cost past what was reserved) is in the evidence first, and a node
        killed in between lost it from the file. The larger of the two, as the control plane
        counts (``controlplane.evidence.spend``): what a lease round reported is in both, so
        it counts once; a crash never lowers a budget's spend."""
        counted, _ = self._from_evidence()
        raised = 0
        for key, row in counted.items():
            held = self._budgets.setdefault(key, grants.Row())
            if row.used > held.used:
                held.used = row.used
                raised += 1
        if raised:
            atomic_write(self.path, self._body())
            log.warning(
                "quota budgets: the node's evidence says %d budgets spent more this period than %s "
                "counts (a charge the node was stopped before reporting, e.g. killed); counted as "
                "the evidence says",
                raised,
                self.path,
            )

    def _corrupt(self, problem: str) -> None:
        aside = self.path.with_name(BUDGETS_FILE + ".corrupt")
        try:
            os.replace(self.path, aside)
        except OSError:
            aside = self.path
        log.error("quota budgets: %s %s; the unreadable file is kept as %s", self.path, problem, aside)
        self._recount("the budgets file was unreadable")

    def _recount(self, why: str) -> None:
        """This day's and month's spend per tenant and key, from the evidence."""
        budgets, records = self._from_evidence()
        self._budgets = budgets
        # Written at once (load runs off the event loop): the recount is the file from now on.
        atomic_write(self.path, self._body())
        log.warning(
            "quota budgets: %s; recounted this period's spend from the node's evidence: %d records, "
            "%d budgets",
            why,
            records,
            len({(t, k) for t, k, _, _ in budgets}),
        )

    def _from_evidence(self) -> tuple[dict[BudgetKey, grants.Row], int]:
        """This day's and month's spend per tenant and key as the node's evidence says, and
        how many records say so."""
        now = self._clock()
        current = windows(now)
        moment = datetime.fromtimestamp(now, UTC)
        month_start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()
        day_start = moment.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        budgets: dict[BudgetKey, grants.Row] = {}
        records = 0
        for tenant_id, key_id, at, cost in self._spent(month_start):
            records += 1
            kinds = (Kind.BUDGET_DAY, Kind.BUDGET_MONTH) if at >= day_start else (Kind.BUDGET_MONTH,)
            for kind in kinds:
                for scope in ("", key_id) if key_id else ("",):
                    row = budgets.setdefault((tenant_id, scope, int(kind), current[kind]), grants.Row())
                    row.used = min(row.used + cost, INT64_MAX)
        return budgets, records

    async def last_leases(self, timeout: float) -> list[str]:
        """Wait until every holder that leased since the start has made its last call (its
        worker stopping, ``QuotaLeaser.close``), at most ``timeout`` seconds; the holders that
        have not. Worker 0 keeps serving the ledger until then: another worker's drain may
        outlast its own, and that worker's last lease must find the ledger."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not all(self._holders.values()):
                    self._leased.clear()
                    await self._leased.wait()
        return sorted(h for h, last in self._holders.items() if not last)

    def lease(
        self, asks: Sequence[quota_pb2.QuotaAsk], holder: str, *, last: bool = False
    ) -> list[quota_pb2.QuotaGrant]:
        """Grants in the order of ``asks``; ``ValueError`` names the first bad ask. ``last``:
        the holder's last call (``last_leases``), even if it fails."""
        self._holders[holder] = last
        self._leased.set()
        if len(asks) > MAX_ASKS:
            raise ValueError(f"asks: at most {MAX_ASKS} per call (got {len(asks)})")
        now, elapsed = self._clock(), self._rate_clock()
        current = windows(now)
        out = []
        for i, ask in enumerate(asks):
            kind = int(ask.scope.kind)
            if kind not in KINDS:
                raise ValueError(f"asks[{i}].scope.kind: unknown kind {kind}")
            tenant_id, key_id = ask.scope.tenant_id, ask.scope.api_key_id
            limit = self._limits.of(tenant_id, key_id, kind)
            window = current.get(kind, "")
            if not limit:
                out.append(quota_pb2.QuotaGrant(scope=ask.scope, limit=0, window=window))
                continue
            if window:
                row = self._budgets.setdefault((tenant_id, key_id, kind, window), grants.Row())
                same = ask.returned_window == window
                grant = grants.grant_budget(
                    row,
                    limit=limit,
                    want=ask.want,
                    returned=ask.returned if same else 0,
                    overspent=ask.overspent if same else 0,
                    int_max=INT64_MAX,
                )
                self._dirty = self._dirty or bool(grant.granted or ask.returned or ask.overspent)
            else:
                rate = self._rates.get((tenant_id, key_id, kind))
                if rate is None:
                    # A new bucket starts full, as on the control plane.
                    level = grants.capacity(limit, self.burst_seconds)
                    rate = self._rates[(tenant_id, key_id, kind)] = grants.Row(
                        level=level, updated_at=elapsed
                    )
                grant = grants.grant_rate(
                    rate,
                    limit=limit,
                    burst_seconds=self.burst_seconds,
                    want=ask.want,
                    returned=ask.returned,
                    overspent=ask.overspent,
                    now=elapsed,
                    holder=holder,
                )
            out.append(
                quota_pb2.QuotaGrant(
                    scope=ask.scope,
                    granted=grant.granted,
                    window=window,
                    limit=limit,
                    exhausted=grant.exhausted,
                    refill_seconds=grant.refill_seconds,
                    window_seconds_left=grants.window_seconds_left(window, now) if window else 0.0,
                )
            )
        return out

    def _body(self) -> bytes:
        return _encode(self._budgets)

    async def persist(self) -> None:
        """Write the budgets when they changed. Windows older than the one before the
        current are dropped (``oldest_kept``); the previous window and any later one (the clock
        stepped back) are kept, so a clock that steps back and forth never reopens either. So
        are each budget's two newest windows whatever the clock says: a clock that jumped years
        ahead (a node booted in 2099) and is then set right finds its day and month as spent
        as they were."""
        async with self._writing:
            if not self._dirty:
                return
            self._dirty = False
            oldest = oldest_kept(self._clock())
            newest: dict[tuple[str, str, int], list[str]] = {}
            for tenant_id, key_id, kind, window in self._budgets:
                newest.setdefault((tenant_id, key_id, kind), []).append(window)
            latest = {scope: sorted(found)[-2:] for scope, found in newest.items()}
            self._budgets = {
                k: row for k, row in self._budgets.items() if k[3] >= oldest[k[2]] or k[3] in latest[k[:3]]
            }
            # A caller cancelled mid-write (its Lease call given up, the node stopping) does
            # not stop the thread: the lock is held until the write is done, or a second
            # write of the same file would race it (both use one temporary name).
            write = asyncio.ensure_future(asyncio.to_thread(atomic_write, self.path, self._body()))
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                self._dirty = True  # until the write is known to be done
                with contextlib.suppress(Exception):
                    await write
                if write.done() and write.exception() is None:
                    self._dirty = False
                raise
            except BaseException:
                self._dirty = True
                raise


def _encode(budgets: Mapping[BudgetKey, grants.Row]) -> bytes:
    body = {
        "format": FORMAT,
        "budgets": [
            {"tenant_id": t, "api_key_id": k, "kind": kind, "window": w, "used": row.used}
            for (t, k, kind, w), row in sorted(budgets.items())
        ],
    }
    return json.dumps(body).encode()


def _parse(raw: bytes) -> dict[BudgetKey, grants.Row]:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        # JSONDecodeError and UnicodeDecodeError both; RecursionError: nested past json's
        # depth limit, no ValueError, and it was a traceback at the node's start.
        raise ValueError("is not JSON") from None
    if (
        not isinstance(body, dict)
        or body.get("format") != FORMAT
        or not isinstance(body.get("budgets"), list)
    ):
        raise ValueError(f"is not a budgets file of format {FORMAT}")
    budgets: dict[BudgetKey, grants.Row] = {}
    for i, entry in enumerate(body["budgets"]):
        if not isinstance(entry, dict):
            raise ValueError(f"budgets[{i}]: not a budget entry")
        tenant_id, key_id, kind, window, used = (
            entry.get(name) for name in ("tenant_id", "api_key_id", "kind", "window", "used")
        )
        if not (
            isinstance(tenant_id, str)
            and isinstance(key_id, str)
            and kind in (Kind.BUDGET_DAY, Kind.BUDGET_MONTH)
            and isinstance(window, str)
            and isinstance(used, int)
            and 0 <= used <= INT64_MAX
        ):
            raise ValueError(f"budgets[{i}]: not a budget entry")
        budgets[(tenant_id, key_id, int(kind), window)] = grants.Row(used=used)
    return budgets


class LocalQuotaServicer(quota_pb2_grpc.QuotaServiceServicer):
    """``QuotaService`` for the workers of this node, over its unix socket."""

    def __init__(self, ledger: LocalLedger, node_id: str) -> None:
        self._ledger = ledger
        self._node_id = node_id

    async def Lease(
        self, request: quota_pb2.LeaseRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> quota_pb2.LeaseResponse:
        if not request.holder.startswith(f"{self._node_id}/"):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"holder: a worker of node {self._node_id} ('<node>/<i>')"
            )
        try:
            granted = self._ledger.lease(request.asks, request.holder, last=request.last)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        await self._ledger.persist()
        return quota_pb2.LeaseResponse(grants=granted)


async def serve(ledger: LocalLedger, node_id: str, data_dir: Path) -> grpc.aio.Server:
    """Start the ledger's server on ``socket_path(data_dir)`` (a stale socket of an earlier
    run is replaced); ``ValueError`` when that path is too long for a unix socket."""
    path = socket_path(data_dir).absolute()
    if len(str(path)) > MAX_SOCKET_PATH:
        raise ValueError(
            f"--data-dir: {data_dir} is too long for the quota ledger's socket {path} "
            f"(at most {MAX_SOCKET_PATH} characters)"
        )
    private_dir(path.parent)
    path.unlink(missing_ok=True)
    server = grpc.aio.server()
    quota_pb2_grpc.add_QuotaServiceServicer_to_server(LocalQuotaServicer(ledger, node_id), server)
    if server.add_insecure_port(f"unix:{path}") == 0:
        raise OSError(f"cannot listen on unix:{path}")
    await server.start()
    return server
