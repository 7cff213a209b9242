"""One scrape of a node with several workers, whatever its callers sent: worker 0 reads the
others' OpenMetrics text, so nothing a caller chooses may make that text unreadable."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from dataplane.collector import YOUNG_THRESHOLD
from dataplane.evidence.log import log_path
from dataplane.evidence.records import read_records
from dataplane.evidence.spool import Spool
from dataplane.files import private_dir
from dataplane.metrics_server import NodeMetrics, NodeState, socket_path
from dataplane.pipeline.metrics import DURATION, _Collector, exemplar_id
from signalbox.metrics_http import OPENMETRICS, exposition
from signalbox.ports import free_port
from tests.dataplane.conftest import API_KEY, pinned_serve_args
from tests.dataplane.test_pin_watch_process import site_pin
from tests.dataplane.test_workers import workers_up
from tests.helpers import eventually

NODE = "node-m"
PRINTABLE = "".join(map(chr, range(0x21, 0x7F)))
"""Every character a correlation id may hold (``dataplane.validation``)."""


def test_every_correlation_id_a_caller_may_send_leaves_the_openmetrics_text_readable() -> None:
    registry = CollectorRegistry()
    collector = _Collector("1")
    registry.register(collector)
    ids = [PRINTABLE[i : i + 90] for i in range(0, len(PRINTABLE), 7)] + ['"', '\\"', '"}#{', "\\"]
    for i, cid in enumerate(ids):
        # One bucket per id: each keeps its own exemplar.
        collector.series(DURATION, ("chat", "p", "m", f"t{i}", "")).observe(0.3, exemplar_id(cid))
    body, _ = exposition(registry, OPENMETRICS)
    families = list(openmetrics_families(body.decode()))
    kept = {s.exemplar.labels["correlation_id"] for f in families for s in f.samples if s.exemplar}
    # Kept verbatim or left out, never garbled.
    assert kept <= set(ids)
    assert kept


async def test_a_hostile_correlation_id_does_not_take_down_the_scrape_of_a_node_with_workers(
    tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey, simulator: Any
) -> None:
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(site_pin(signing_key, 3, simulator.base_url))
    data_dir = tmp_path / "node"
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    args = pinned_serve_args(pin, trust_key, data_dir, "--node-id", NODE, "--workers", "2")
    args += [
        "--listen",
        f"127.0.0.1:{grpc_port}",
        "--http-listen",
        f"127.0.0.1:{http_port}",
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
    ]
    async with workers_up(args, 2):
        chain = log_path(data_dir, NODE, "1")
        # A new connection per request: the kernel spreads them over both workers; go on until
        # worker 1 served some (a request id with a quote is one any caller may send).
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:

            async def worker_1_served() -> bool:
                for i in range(10):
                    async with session.post(
                        f"http://127.0.0.1:{http_port}/v1/chat/completions",
                        json={"model": "sim-fast", "messages": [{"role": "user", "content": "hi"}]},
                        headers={"authorization": f"Bearer {API_KEY}", "x-request-id": f'q"{i}'},
                    ) as response:
                        assert response.status == 200, await response.text()
                return chain.exists() and any(True for _ in read_records(chain))

            await eventually(worker_1_served, timeout=30, message="worker 1 served a request")
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{metrics_port}/metrics") as scraped,
        ):
            text = await scraped.text()
            assert scraped.status == 200, text
        workers = {
            s.labels["worker"]
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "signalbox_requests_total"
        }
        assert workers == {"0", "1"} or workers == {"1"}
        assert "signalbox_metrics_peer_failures_total{" not in text


async def _unreadable(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    body = b'# TYPE x counter\nx_total 1 # {a="\\"} 1\n# EOF\n'
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    writer.close()


async def test_a_worker_answering_unreadable_metrics_is_left_out_of_the_scrape_not_failing_it(
    tmp_path: Path,
) -> None:
    metrics = NodeMetrics(
        NodeState(lambda: None, lambda: None, lambda: None, Spool(), lambda: None, lambda: None),
        worker=0,
        workers=2,
        data_dir=tmp_path,
    )
    path = socket_path(tmp_path, 1)
    private_dir(path.parent)
    peer = await asyncio.start_unix_server(_unreadable, str(path))
    await metrics.start(f"127.0.0.1:{free_port()}")
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{metrics.port}/metrics") as scraped,
        ):
            text = await scraped.text()
            assert scraped.status == 200, text
    finally:
        await metrics.stop()
        peer.close()
        await peer.wait_closed()
    assert 'signalbox_metrics_peer_failures_total{peer="1",worker="0"} 1.0' in text
    assert "signalbox_snapshot_version" in text


async def test_every_worker_runs_the_garbage_collector_at_the_serving_pace_and_reports_it(
    tmp_path: Path, trust_key: Path, signing_key: Ed25519PrivateKey, simulator: Any
) -> None:
    pin = tmp_path / "site.snapshot"
    pin.write_bytes(site_pin(signing_key, 3, simulator.base_url))
    metrics_port = free_port()
    args = pinned_serve_args(pin, trust_key, tmp_path / "node", "--node-id", NODE, "--workers", "2")
    args += ["--listen", f"127.0.0.1:{free_port()}", "--metrics-listen", f"127.0.0.1:{metrics_port}"]
    async with workers_up(args, 2), aiohttp.ClientSession() as session:

        async def scraped() -> dict[tuple[str, str, str], float]:
            async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                text = await response.text()
                assert response.status == 200, text
            samples = {
                (s.name, s.labels["generation"], s.labels["worker"]): s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name.startswith(("python_gc_", "signalbox_gc_"))
            }
            assert {worker for _, _, worker in samples} == {"0", "1"}  # worker 1's, once it answers
            return samples

        samples = await eventually(scraped, timeout=30, message="both workers' collector metrics")
    for worker in ("0", "1"):
        assert samples[("signalbox_gc_threshold", "0", worker)] == YOUNG_THRESHOLD
        for generation in ("0", "1", "2"):
            assert samples[("python_gc_collections_total", generation, worker)] >= 0
            assert ("python_gc_objects_collected_total", generation, worker) in samples
            assert ("python_gc_objects_uncollectable_total", generation, worker) in samples
