"""A real Prometheus server (Debian's package, installed by tests/setup/prometheus.sh) scrapes
a node and the control plane under a short load; what its query API answers for requests,
tokens and cost matches the shipped evidence records exactly."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.shell.simulator import Simulator
from tests.e2e.conftest import loopback_node
from tests.e2e.test_config_push import TENANT, _admin, _converged, _seed
from tests.e2e.test_controlplane_killed import _free_port
from tests.fixtures.postgres import cp_settings, running_control_plane, sql_rows
from tests.helpers import eventually

SETUP = Path(__file__).resolve().parents[1] / "setup" / "prometheus.sh"
OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
ALERTS = OBSERVABILITY / "prometheus-alerts.yml"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
METRIC_NAME = re.compile(r"\b(?:signalbox|gen_ai)_[a-z_]+\b")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """The ``prometheus`` binary, installed by the project's own script when missing."""
    if shutil.which("prometheus") is None:
        subprocess.run(["bash", str(SETUP)], check=True, timeout=600)
    found = shutil.which("prometheus")
    assert found is not None, f"{SETUP} did not install prometheus"
    return found


def _write_config(directory: Path, targets: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {"job_name": job, "static_configs": [{"targets": [address]}]}
                    for job, address in targets.items()
                ],
            }
        )
    )
    return config


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


@asynccontextmanager
async def prometheus(binary: str, directory: Path, targets: dict[str, str]) -> AsyncIterator[str]:
    """A Prometheus server scraping ``targets`` (job -> host:port) every second; its base URL."""
    config = _write_config(directory, targets)
    listen = f"127.0.0.1:{_free_port()}"
    log = directory / "prometheus.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address={listen}",
            "--enable-feature=exemplar-storage",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=sink,
            stderr=asyncio.subprocess.STDOUT,
        )
    base = f"http://{listen}"
    try:

        async def ready() -> bool:
            assert process.returncode is None, _tail(log)
            try:
                async with aiohttp.ClientSession() as session, session.get(f"{base}/-/ready") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, timeout=60, message="prometheus ready")
        yield base
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()
        if sys.exc_info()[0] is not None:
            sys.stderr.write(_tail(log))


async def query(base: str, promql: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base}/api/v1/query", params={"query": promql}) as r,
    ):
        body = await r.json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def _by(result: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1]) for r in result}


async def _load(address: str, api_key: str, count: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = infer_pb2_grpc.InferServiceStub(channel)
        auth = (("authorization", f"Bearer {api_key}"),)

        async def one(i: int) -> None:
            request = infer_pb2.InferRequest(
                model="large" if i % 4 == 0 else "",
                correlation_id=f"load-{i}",
                messages=[
                    infer_pb2.Message(
                        role=infer_pb2.ROLE_USER, content=[infer_pb2.ContentPart(text=f"hi {i} " * i)]
                    )
                ],
            )
            await stub.Infer(request, metadata=auth, timeout=10)

        for start in range(0, count, 8):
            await asyncio.gather(*(one(i) for i in range(start, min(start + 8, count))))
        for bad in ("sbx_nope", ""):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Infer(
                    infer_pb2.InferRequest(
                        messages=[
                            infer_pb2.Message(
                                role=infer_pb2.ROLE_USER, content=[infer_pb2.ContentPart(text="x")]
                            )
                        ]
                    ),
                    metadata=(("authorization", f"Bearer {bad}"),) if bad else (),
                    timeout=10,
                )


async def test_prometheus_scrapes_node_and_control_plane_and_agrees_with_the_evidence(
    database_url: str, private_tmp: Path, simulator: Simulator, prometheus_binary: str
) -> None:
    settings = cp_settings(database_url, private_tmp, metrics_listen="127.0.0.1:0")
    async with AsyncExitStack() as stack:
        cp = await stack.enter_async_context(running_control_plane(settings))
        async with _admin(cp) as admin:
            api_key = await _seed(admin, simulator)
            await admin.ApplyPolicy(
                admin_pb2.ApplyPolicyRequest(
                    tenant=TENANT, document="default_model: small\nallowed_models: [small, large]"
                )
            )
            node = await loopback_node(
                cp,
                "metered-1",
                private_tmp,
                metrics_listen="127.0.0.1:0",
                http_listen="127.0.0.1:0",  # its connection series too
                evidence_ship_interval=0.05,
            )
            await node.start()
            stack.push_async_callback(node.stop)
            await _converged(admin, "metered-1")
        base = await stack.enter_async_context(
            prometheus(
                prometheus_binary,
                private_tmp / "prometheus",
                {"node": node.metrics_address, "controlplane": cp.cp.metrics_address},
            )
        )
        await _load(node.address, api_key, 40)
        assert node.shipper is not None
        shipper = node.shipper
        await eventually(
            lambda: shipper.status.shipped_seq == node.evidence.head.seq == 42,
            timeout=30,
            message="every record shipped",
        )
        bodies = [
            json.loads(bytes(row[0])) for row in sql_rows(database_url, "SELECT body FROM evidence_records")
        ]
        assert len(bodies) == 42

        # Wait for a scrape that saw every request (Prometheus scrapes every second).
        async def scraped_all() -> bool:
            total = await query(base, "sum(signalbox_requests_total)")
            return bool(total) and float(total[0]["value"][1]) == 42

        await eventually(scraped_all, timeout=30, message="prometheus to scrape every request")

        def served(body: dict[str, Any]) -> str:
            return str(((body.get("routing") or {}).get("served_by") or {}).get("model", ""))

        expected = Counter((b["tenant_id"], served(b), b["outcome"]["code"]) for b in bodies)
        requests = _by(
            await query(base, "sum by (tenant, model, status) (signalbox_requests_total)"),
            "tenant",
            "model",
            "status",
        )
        assert requests == {key: float(n) for key, n in expected.items()}

        tokens = _by(
            await query(
                base, "sum by (gen_ai_request_model, gen_ai_token_type) (gen_ai_client_token_usage_sum)"
            ),
            "gen_ai_request_model",
            "gen_ai_token_type",
        )
        usage: Counter[tuple[str, str]] = Counter()
        for b in bodies:
            if b.get("usage"):
                usage[(served(b), "input")] += b["usage"]["input_tokens"]
                usage[(served(b), "output")] += b["usage"]["output_tokens"]
        assert tokens == {key: float(n) for key, n in usage.items()}

        cost = _by(await query(base, "sum by (model) (signalbox_cost_usd_total)"), "model")
        spent: Counter[str] = Counter()
        for b in bodies:
            spent[served(b)] += b["cost"]["total_nanos"]
        assert cost == pytest.approx({(model,): nanos / 1e9 for model, nanos in spent.items() if nanos})

        # The control plane: what it stored, the node it serves, the admin calls it took.
        async def ingested_all() -> bool:
            found = await query(base, "signalbox_evidence_ingested_records_total")
            return bool(found) and float(found[0]["value"][1]) == 42

        # The control plane's scrape reads the fleet from its database: it may land a beat later.
        await eventually(ingested_all, timeout=30, message="the control plane scraped after ingest")
        nodes = _by(await query(base, "signalbox_nodes"), "group", "state")
        assert nodes == {("default", "connected"): 1.0}
        lag = await query(base, 'signalbox_node_convergence_lag_versions{group="default"}')
        assert float(lag[0]["value"][1]) == 0
        calls = _by(await query(base, "signalbox_admin_calls_total"), "method", "result")
        assert calls[("CreateTenant", "OK")] == 1
        assert calls[("ApplyPolicy", "OK")] == 2

        await _check_rules_and_dashboard(base)

        # Exemplars: a request's correlation id next to its latency.
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{base}/api/v1/query_exemplars",
                params={
                    "query": "gen_ai_server_request_duration_seconds_bucket",
                    "start": "0",
                    "end": "9999999999",
                },
            ) as r,
        ):
            exemplars = (await r.json())["data"]
        ids = {e["labels"]["correlation_id"] for series in exemplars for e in series["exemplars"]}
        assert ids
        assert ids <= {b["correlation_id"] for b in bodies}


async def _get(base: str, path: str, **params: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(f"{base}{path}", params=params) as r:
        body = await r.json()
    assert body["status"] == "success", body
    return body["data"]


def _declared() -> set[str]:
    """Every series name our registries can expose (labelled ones have none until first used)."""
    from controlplane.metrics import ControlPlaneMetrics
    from dataplane.evidence.spool import Spool
    from dataplane.metrics_server import NodeMetrics, NodeState

    node = NodeMetrics(
        NodeState(lambda: None, lambda: None, lambda: None, Spool(), lambda: None, lambda: None),
        worker=0,
        workers=1,
        data_dir=Path("/nonexistent"),
    )
    names: set[str] = set()
    for registry in (node.registry, ControlPlaneMetrics(nodes=None).registry):  # type: ignore[arg-type]
        for family in registry.collect():
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(
                family.type, ("",)
            )
            names.update(family.name + suffix for suffix in suffixes)
    return names


async def _check_rules_and_dashboard(base: str) -> None:
    """The alert rules load and evaluate cleanly; every dashboard query runs; both name only
    series our endpoints expose (scraped now, or declared and not yet used)."""

    async def evaluated() -> bool:
        groups = (await _get(base, "/api/v1/rules"))["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return len(rules) == ALERTS.read_text().count("- alert: ") and all(r["health"] == "ok" for r in rules)

    await eventually(evaluated, timeout=30, message="every alert rule evaluated")
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    for expr in expressions:
        await _get(base, "/api/v1/query", query=expr.replace("$__rate_interval", "1m"))
    known = set(await _get(base, "/api/v1/label/__name__/values")) | _declared()
    # Label names in ``by (...)`` look like metric names: not those.
    text = re.sub(r"\bby \([^)]*\)", "", ALERTS.read_text() + "\n".join(expressions))
    referenced = set(METRIC_NAME.findall(text))
    assert referenced - known == set()
