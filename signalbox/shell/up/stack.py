"""The local stack: simulator, control plane and one node as a process tree on localhost.

:class:`LocalStack` starts them in dependency order (bootstrap the admin token, serve the
control plane, seed it through ``demo.py``, start the node, wait until it applied the
newest snapshot) and stops them in reverse; :class:`StackConfig` says where they live
and listen and which cores each may use.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dataplane.identity import IdentityFiles
from signalbox.api.admin.v1 import admin_pb2, admin_pb2_grpc
from signalbox.api.infer.v1 import infer_pb2, infer_pb2_grpc
from signalbox.ports import free_port
from signalbox.shell.client_cli import build_request
from signalbox.shell.simulator import Simulator, parse_listen
from signalbox.shell.up.demo import (
    DEMO_PROMPT,
    create_api_key,
    create_tenant,
    register_catalogue,
    seeded_summary,
)

NODE_ID = "up-node-1"
NODE_GROUP = "default"


class StackError(RuntimeError):
    """A part of the local stack failed to start or died; the message says which and why."""


@dataclass(frozen=True, slots=True)
class StackConfig:
    """Where the local stack lives and listens, and which cores each process may use."""

    data_dir: Path
    controlplane_listen: str = "127.0.0.1:7700"
    controlplane_node_listen: str = "127.0.0.1:7703"
    """The control plane's node port (config sync over mutual TLS)."""
    dataplane_listen: str = "127.0.0.1:7701"
    simulator_listen: str = "127.0.0.1:7702"
    dataplane_http_listen: str = "127.0.0.1:7704"
    """The node's OpenAI-compatible HTTP front door."""
    dataplane_metrics_listen: str | None = "127.0.0.1:7705"
    """The node's Prometheus endpoint (metrics are on in ``up``, off by default in production;
    None: off, as a benchmark's variant without them)."""
    controlplane_metrics_listen: str = "127.0.0.1:7706"
    """The control plane's Prometheus endpoint."""
    simulator_in_process: bool = True
    """False runs the simulator as a child process (the benchmark pins it to a core)."""
    controlplane_cpus: str | None = None
    """A ``taskset -c`` CPU list for the control plane (and its PostgreSQL); None: unpinned."""
    dataplane_cpus: str | None = None
    simulator_cpus: str | None = None
    startup_timeout: float = 120.0
    """Seconds each child gets to become healthy."""
    dataplane_env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment of the node process (benchmarks: e.g. a variant of the node)."""

    @classmethod
    def ephemeral(cls, data_dir: Path, **options: Any) -> StackConfig:
        """A config on ports free now, for tests and benchmarks; ``options`` set the other fields."""
        ports: dict[str, Any] = {
            "controlplane_listen": "127.0.0.1:0",
            "controlplane_node_listen": "127.0.0.1:0",
            "dataplane_listen": "127.0.0.1:0",
            "simulator_listen": "127.0.0.1:0",
            "dataplane_http_listen": "127.0.0.1:0",
            "dataplane_metrics_listen": "127.0.0.1:0",
            "controlplane_metrics_listen": "127.0.0.1:0",
        }
        return cls(data_dir=data_dir, **{**ports, **options}).with_concrete_ports()

    def with_concrete_ports(self) -> StackConfig:
        """The same config with every port 0 replaced by a port that is free now. Not the
        metrics ports: nothing here connects to them, so a 0 stays for the process to bind
        (a port picked here and bound later can be taken in between)."""
        taken: set[str] = set()  # free_port may name one port twice: each is checked, then let go
        return replace(
            self,
            controlplane_listen=_concrete(self.controlplane_listen, taken),
            controlplane_node_listen=_concrete(self.controlplane_node_listen, taken),
            dataplane_listen=_concrete(self.dataplane_listen, taken),
            dataplane_http_listen=_concrete(self.dataplane_http_listen, taken),
            simulator_listen=self.simulator_listen
            if self.simulator_in_process
            else _concrete(self.simulator_listen, taken),
        )


def _metrics_url(listen: str) -> str:
    if listen.endswith(":0"):
        return f"a port the kernel picked on {listen.rpartition(':')[0]} (/metrics)"
    return f"http://{listen}/metrics"


@dataclass(slots=True)
class _Child:
    name: str
    process: asyncio.subprocess.Process
    log: Path


@dataclass(slots=True)
class LocalStack:
    """Simulator, control plane and one node on localhost; seeded with a demo tenant."""

    config: StackConfig
    admin_token: str = ""
    api_key: str = ""
    snapshot_version: int = 0
    simulator_url: str = ""
    _simulator: Simulator | None = None
    _children: list[_Child] = field(default_factory=list)
    _progress: Callable[[str], None] = field(default=lambda _: None)

    @property
    def controlplane_dir(self) -> Path:
        return self.config.data_dir / "controlplane"

    @property
    def node_dir(self) -> Path:
        return self.config.data_dir / "node"

    @property
    def log_dir(self) -> Path:
        return self.config.data_dir / "logs"

    @property
    def dataplane_target(self) -> str:
        return self.config.dataplane_listen

    def pid_of(self, name: str) -> int:
        """The PID of child ``name`` ("controlplane", "dataplane", "simulator")."""
        for child in self._children:
            if child.name == name:
                return child.process.pid
        raise KeyError(name)

    async def start(self, progress: Callable[[str], None] | None = None) -> None:
        """Start everything in dependency order and seed the control plane. Idempotent over
        an existing data dir: a second ``up`` reuses the database and updates the seed."""
        if progress is not None:
            self._progress = progress
        cfg = self.config
        for directory in (cfg.data_dir, self.controlplane_dir, self.node_dir, self.log_dir):
            # Keys, snapshots, evidence and logs: for this user only.
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.chmod(0o700)

        # The simulator and the admin token (which initializes and migrates the database)
        # do not depend on each other: started together, ~2 s sooner to the first answer.
        simulator = asyncio.create_task(self._start_simulator())
        try:
            self.admin_token = await self._bootstrap_admin()
        except BaseException:
            simulator.cancel()
            await asyncio.wait([simulator])  # its child, if spawned, is stopped by stop()
            if not simulator.cancelled():
                simulator.exception()  # retrieved: the bootstrap's error is the one reported
            raise
        await simulator
        cp = await self._spawn(
            "controlplane",
            [
                "controlplane",
                "serve",
                "--listen",
                cfg.controlplane_listen,
                "--node-listen",
                cfg.controlplane_node_listen,
                "--metrics-listen",
                cfg.controlplane_metrics_listen,
                "--data-dir",
                str(self.controlplane_dir),
            ],
            cfg.controlplane_cpus,
        )
        await self._wait_healthy(cp, cfg.controlplane_listen)
        self._progress(
            f"control plane on {cfg.controlplane_listen} (data in {self.controlplane_dir}), "
            f"metrics at {_metrics_url(cfg.controlplane_metrics_listen)}"
        )

        await self._seed()
        trust_key = self.controlplane_dir / "trust-key.pub"
        if not trust_key.exists():
            raise StackError(f"control plane is serving but wrote no trust key at {trust_key}")

        # A real certificate: the node enrolls with a one-time token (through the environment,
        # never the command line) unless it already holds a valid one from an earlier `up`.
        env = dict(cfg.dataplane_env)
        if IdentityFiles.under(self.node_dir).problem(NODE_ID):
            env["SIGNALBOX_ENROLL_TOKEN"] = await self._enroll_token()
        node = await self._spawn(
            "dataplane",
            [
                "dataplane",
                "serve",
                "--listen",
                cfg.dataplane_listen,
                "--http-listen",
                cfg.dataplane_http_listen,
                *(["--metrics-listen", cfg.dataplane_metrics_listen] if cfg.dataplane_metrics_listen else []),
                "--control-plane",
                cfg.controlplane_node_listen,
                "--enroll-address",
                cfg.controlplane_listen,
                "--trust-key",
                str(trust_key),
                "--node-id",
                NODE_ID,
                "--data-dir",
                str(self.node_dir),
            ],
            cfg.dataplane_cpus,
            env=env,
        )
        # SERVING means the node has verified and applied a snapshot.
        await self._wait_healthy(node, cfg.dataplane_listen)
        await self._wait_converged(node)
        self._progress(
            f"node {NODE_ID} on {cfg.dataplane_listen} (gRPC) and http://{cfg.dataplane_http_listen}/v1 "
            f"(OpenAI-compatible HTTP) serving snapshot v{self.snapshot_version}"
            + (
                f", metrics at {_metrics_url(cfg.dataplane_metrics_listen)}"
                if cfg.dataplane_metrics_listen
                else ""
            )
        )

    async def stop(self) -> None:
        """Stop the node first (it drains), then the control plane (and its PostgreSQL), then the simulator."""
        order = {"dataplane": 0, "controlplane": 1, "simulator": 2}
        for child in sorted(self._children, key=lambda c: order.get(c.name, 3)):
            await _terminate(child.process)
        self._children.clear()
        if self._simulator is not None:
            await self._simulator.stop()
            self._simulator = None

    async def wait_for_child_exit(self) -> str:
        """Block until any child exits; returns its name and the tail of its log."""
        waits = {asyncio.ensure_future(c.process.wait()): c for c in self._children}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        child = waits[next(iter(done))]
        return f"{child.name} exited with status {child.process.returncode}\n{_tail(child.log)}"

    async def demo_request(self, prompt: str = DEMO_PROMPT) -> infer_pb2.InferResponse:
        """Send one real Infer request with the demo API key."""
        async with grpc.aio.insecure_channel(self.dataplane_target) as channel:
            stub = infer_pb2_grpc.InferServiceStub(channel)
            response: infer_pb2.InferResponse = await stub.Infer(
                build_request(prompt), metadata=(("authorization", f"Bearer {self.api_key}"),), timeout=30
            )
            return response

    # ---- steps ----

    async def _start_simulator(self) -> None:
        await self._simulator_up()
        self._progress(f"simulator on {self.simulator_url}")

    async def _simulator_up(self) -> None:
        host, port = parse_listen(self.config.simulator_listen)
        if self.config.simulator_in_process:
            self._simulator = Simulator(host, port)
            await self._simulator.start()
            self.simulator_url = self._simulator.base_url
            return
        listen = _concrete(self.config.simulator_listen)
        child = await self._spawn(
            "simulator",
            # The simulator module alone: the bench upstream should not load either plane.
            ["serve", "--listen", listen],
            self.config.simulator_cpus,
            module="signalbox.shell.simulator",
        )
        self.simulator_url = f"http://{listen}"
        url = f"{self.simulator_url}/v1/models"

        async def reachable() -> bool:
            reader_writer = await asyncio.open_connection(host, int(listen.rsplit(":", 1)[1]))
            reader_writer[1].close()
            await reader_writer[1].wait_closed()
            return True

        await self._poll(child, reachable, f"simulator at {url}")

    async def _bootstrap_admin(self) -> str:
        log = self.log_dir / "bootstrap-admin.log"
        args = [
            "controlplane",
            "bootstrap-admin",
            "--data-dir",
            str(self.controlplane_dir),
            "--name",
            "signalbox-up",
        ]
        # The token goes through a pipe, never a file: it is shown once, on the terminal. The
        # pipe is read only after the command exits (an embedded PostgreSQL it starts may
        # outlive it and hold the write end open forever, so no read to EOF).
        read_end, write_end = os.pipe()
        try:
            with _private_log(log) as err:
                process = await asyncio.create_subprocess_exec(
                    *self._command(args, self.config.controlplane_cpus),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=write_end,
                    stderr=err,
                    start_new_session=True,
                )
        finally:
            os.close(write_end)
        try:
            return await self._bootstrap_token(process, log, read_end)
        finally:
            os.close(read_end)

    async def _bootstrap_token(self, process: asyncio.subprocess.Process, log: Path, read_end: int) -> str:
        try:
            async with asyncio.timeout(self.config.startup_timeout):
                code = await process.wait()
        except TimeoutError:
            await _terminate(process, sig=signal.SIGINT)
            raise StackError(
                f"bootstrap-admin did not finish in {self.config.startup_timeout}s\n{_tail(log)}"
            ) from None
        except asyncio.CancelledError:
            # Ctrl-C during start-up: it is not among the children stop() knows about. SIGINT,
            # not SIGTERM: a one-shot command has no SIGTERM handler, and only an orderly
            # Python exit stops the embedded PostgreSQL it started.
            await _terminate(process, sig=signal.SIGINT)
            raise
        lines = _drain(read_end).decode(errors="replace").strip().splitlines()
        if code != 0 or not lines:
            raise StackError(f"bootstrap-admin failed with status {code}\n{_tail(log)}")
        return lines[-1].strip()

    async def _seed(self) -> None:
        metadata = (("authorization", f"Bearer {self.admin_token}"),)
        async with grpc.aio.insecure_channel(self.config.controlplane_listen) as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            await create_tenant(admin, metadata)
            # A fresh key each run: secrets are shown once, so an old one cannot be recovered.
            self.api_key = await create_api_key(admin, metadata)
            await register_catalogue(admin, metadata, self.simulator_url)
        self._progress(seeded_summary())

    async def _enroll_token(self) -> str:
        metadata = (("authorization", f"Bearer {self.admin_token}"),)
        async with grpc.aio.insecure_channel(self.config.controlplane_listen) as channel:
            created = await admin_pb2_grpc.AdminServiceStub(channel).CreateEnrollToken(
                admin_pb2.CreateEnrollTokenRequest(group=NODE_GROUP, ttl_seconds=600),
                metadata=metadata,
                timeout=10,
            )
        return str(created.token)

    async def _wait_converged(self, node: _Child) -> None:
        """Wait until the node has ACKed the latest snapshot: the seed is debounced into
        snapshots, and the node may have subscribed before the last one was built."""
        metadata = (("authorization", f"Bearer {self.admin_token}"),)
        async with grpc.aio.insecure_channel(self.config.controlplane_listen) as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)

            async def converged() -> bool:
                latest = await admin.GetSnapshot(
                    admin_pb2.GetSnapshotRequest(version=0), metadata=metadata, timeout=5
                )
                nodes = await admin.ListNodes(admin_pb2.ListNodesRequest(), metadata=metadata, timeout=5)
                applied = {n.node_id: n.applied_version for n in nodes.nodes}
                self.snapshot_version = applied.get(NODE_ID, 0)
                return self.snapshot_version >= latest.version > 0

            await self._poll(node, converged, f"node {NODE_ID} to apply the latest snapshot")

    # ---- processes ----

    def _command(self, args: Sequence[str], cpus: str | None, module: str = "signalbox") -> list[str]:
        pin = ["taskset", "-c", cpus] if cpus else []
        return [*pin, sys.executable, "-m", module, *args]

    async def _spawn(
        self,
        name: str,
        args: Sequence[str],
        cpus: str | None,
        module: str = "signalbox",
        env: dict[str, str] | None = None,
    ) -> _Child:
        log = self.log_dir / f"{name}.log"
        with _private_log(log) as sink:
            # A session of its own: Ctrl-C reaches only `up`, which then stops children in order.
            process = await asyncio.create_subprocess_exec(
                *self._command(args, cpus, module),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **env} if env else None,
            )
        child = _Child(name, process, log)
        self._children.append(child)
        return child

    async def _wait_healthy(self, child: _Child, target: str) -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def serving() -> bool:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

            await self._poll(child, serving, f"{child.name} health on {target}")

    async def _poll(self, child: _Child, probe: Callable[[], Awaitable[bool]], what: str) -> None:
        """Retry ``probe`` until it holds, failing fast if ``child`` dies meanwhile."""
        deadline = time.monotonic() + self.config.startup_timeout
        last = ""
        while True:
            if child.process.returncode is not None:
                raise StackError(
                    f"{child.name} exited with status {child.process.returncode}\n{_tail(child.log)}"
                )
            try:
                if await probe():
                    return
            except (grpc.aio.AioRpcError, OSError) as exc:
                last = (exc.details() or "") if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            if time.monotonic() > deadline:
                raise StackError(
                    f"timed out after {self.config.startup_timeout}s waiting for {what}"
                    f"{f' (last error: {last})' if last else ''}\n{_tail(child.log)}"
                )
            await asyncio.sleep(0.1)


async def _terminate(
    process: asyncio.subprocess.Process, grace: float = 15.0, sig: signal.Signals = signal.SIGTERM
) -> None:
    """Send ``sig``, wait ``grace`` seconds for the drain, then SIGKILL."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
    try:
        async with asyncio.timeout(grace):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def _private_log(path: Path) -> IO[bytes]:
    """``path`` opened for appending, 0600 (also when it already existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def _drain(fd: int, limit: int = 1 << 16) -> bytes:
    """What is buffered in pipe ``fd`` now, without waiting for EOF."""
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        try:
            chunk = os.read(fd, limit - size)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _tail(log: Path, lines: int = 30) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join(f"  | {line}" for line in text)


def _concrete(listen: str, taken: set[str] | None = None) -> str:
    """``listen`` with port 0 replaced by a free port, one not in ``taken`` (added to it)."""
    host, port = parse_listen(listen)
    if port:
        return f"{host}:{port}"  # given: kept as it is, even if given twice (refused at bind)
    concrete = f"{host}:{free_port(host)}"
    while concrete in (taken or ()):
        concrete = f"{host}:{free_port(host)}"
    if taken is not None:
        taken.add(concrete)
    return concrete
