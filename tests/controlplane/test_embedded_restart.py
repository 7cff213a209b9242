"""A control plane killed with SIGKILL leaves its embedded PostgreSQL behind; the next
one on the same data dir reclaims it (and stops it when it stops); a start right after
a database crash serves, and a start that fails at first is retried instead of exiting. A
stop shuts the database down with ``pg_ctl``, also where it runs as another user."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.db.embedded import EmbeddedPostgres, start_embedded
from signalbox.ports import free_port as _free_port
from tests.helpers import wait_until


def _postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().splitlines()[0])


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class _ControlPlaneProcess:
    def __init__(self, data_dir: Path, listen: str, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "SIGNALBOX_DATABASE_URL"}
        self.listen = listen
        self._sink = log.open("ab")
        self.log = log
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "signalbox",
                "controlplane",
                "serve",
                "--listen",
                listen,
                "--data-dir",
                str(data_dir),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def serving(self) -> bool:
        assert self.process.poll() is None, f"control plane exited:\n{self.log.read_text()[-3000:]}"
        with grpc.insecure_channel(self.listen) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._sink.close()


@pytest.fixture
def cp_dir(private_tmp: Path) -> Iterator[Path]:
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="cp-restart-", dir=private_tmp))
    yield directory
    # Whatever happened, leave no server running.
    pidfile = directory / "postgres" / "postmaster.pid"
    if pidfile.exists():
        with contextlib.suppress(ValueError, OSError, psutil.Error):
            psutil.Process(_postmaster_pid(directory / "postgres")).kill()


def test_a_restarted_control_plane_reclaims_the_orphaned_database_and_stops_it(cp_dir: Path) -> None:
    pgdata = cp_dir / "postgres"
    listen = f"127.0.0.1:{_free_port()}"
    first = _ControlPlaneProcess(cp_dir, listen, cp_dir / "first.log")
    try:
        wait_until(first.serving, timeout=90, message="first control plane serving")
        first.kill()
    finally:
        first.close()
    orphan = _postmaster_pid(pgdata)
    assert _running(orphan), "SIGKILL of the control plane leaves its PostgreSQL running"
    assert first.process.pid in json.loads((pgdata / ".handle_pids.json").read_text())

    second = _ControlPlaneProcess(cp_dir, listen, cp_dir / "second.log")
    try:
        wait_until(second.serving, timeout=60, message="restarted control plane serving")
        handles = json.loads((pgdata / ".handle_pids.json").read_text())
        assert first.process.pid not in handles
        assert second.process.pid in handles
        assert second.terminate() == 0
    finally:
        second.close()
    # The orphan was owned by the restarted control plane and stopped with it.
    wait_until(lambda: not _running(orphan), timeout=30, message="orphaned PostgreSQL stopped")


def test_a_stop_shuts_the_database_down_and_the_data_dir_stays_unlistable(cp_dir: Path) -> None:
    """Run as root (as here, and in many containers), pgserver runs PostgreSQL as its own
    user, which must pass through the data dir to stop it; the KEK's directory went 0700
    after the start, so every stop failed with "Permission denied" and killed the server."""
    pgdata = cp_dir / "postgres"
    listen = f"127.0.0.1:{_free_port()}"
    for start in ("first", "second"):  # the second start finds the mode the first one left
        process = _ControlPlaneProcess(cp_dir, listen, cp_dir / f"{start}.log")
        try:
            wait_until(process.serving, timeout=90, message=f"{start} control plane serving")
            other_user = pgdata.stat().st_uid != os.geteuid()
            assert stat.S_IMODE(cp_dir.stat().st_mode) == (0o711 if other_user else 0o700)
            postmaster = _postmaster_pid(pgdata)
            assert process.terminate() == 0
        finally:
            process.close()
        assert not _running(postmaster), "the control plane's stop stops its database"
        log = process.log.read_text()
        assert "Failed to stop server" not in log, log[-3000:]
        assert "Permission denied" not in log, log[-3000:]
        # pg_ctl stop's fast shutdown, not the SIGTERM/SIGKILL of the fallback.
        assert (pgdata / "log").read_text().count("received fast shutdown request") == (
            1 if start == "first" else 2
        )


def test_a_start_right_after_a_database_crash_serves(cp_dir: Path) -> None:
    pgdata = cp_dir / "postgres"
    listen = f"127.0.0.1:{_free_port()}"
    first = _ControlPlaneProcess(cp_dir, listen, cp_dir / "first.log")
    try:
        wait_until(first.serving, timeout=90, message="first control plane serving")
        # The database crashes (and takes the control plane with it).
        postmaster = psutil.Process(_postmaster_pid(pgdata))
        children = postmaster.children()
        postmaster.kill()
        first.kill()
    finally:
        first.close()
    # Restart at once, while backends of the crashed server may still hold its shared memory.
    second = _ControlPlaneProcess(cp_dir, listen, cp_dir / "second.log")
    try:
        wait_until(second.serving, timeout=60, message="control plane serving after a database crash")
        assert second.terminate() == 0
    finally:
        second.close()
    for child in children:
        wait_until(lambda c=child: not _running(c.pid), timeout=30, message="old backends gone")


def test_a_start_that_fails_at_first_is_retried_with_backoff(
    cp_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pgdata = cp_dir / "postgres"
    start_embedded(pgdata).stop()  # an initialized, stopped database
    # A postmaster.pid naming a live process that is not a ready server (as while a crashed
    # server is still going down): pgserver attaches to it and fails its readiness check.
    blocker = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    (pgdata / "postmaster.pid").write_text(
        f"{blocker.pid}\n{pgdata}\n{int(time.time())}\n5432\n{pgdata}\n\n  0 0\nstopping\n"
    )
    result: list[object] = []
    caplog.set_level(logging.WARNING, logger="controlplane.db.embedded")
    starter = threading.Thread(target=lambda: result.append(_start_or_error(pgdata)))
    starter.start()
    try:
        wait_until(
            lambda: "did not start (attempt 1" in caplog.text, timeout=30, message="a failed first attempt"
        )
    finally:
        assert blocker.stdin is not None
        blocker.stdin.close()  # the "old server" goes away
        blocker.wait(10)
    starter.join(60)
    assert not starter.is_alive()
    [server] = result
    assert isinstance(server, EmbeddedPostgres), server
    try:
        assert _running(_postmaster_pid(pgdata))
    finally:
        server.stop()


def _start_or_error(pgdata: Path) -> object:
    try:
        return start_embedded(pgdata)
    except Exception as exc:
        return exc


def test_a_start_that_keeps_failing_gives_up_after_the_bound_naming_the_cause(cp_dir: Path) -> None:
    pgdata = cp_dir / "postgres"
    start_embedded(pgdata).stop()
    blocker = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        (pgdata / "postmaster.pid").write_text(
            f"{blocker.pid}\n{pgdata}\n{int(time.time())}\n5432\n{pgdata}\n\n  0 0\nstopping\n"
        )
        with pytest.raises(OSError, match=r"did not start within 1s \(\d+ attempts\): AssertionError"):
            start_embedded(pgdata, retry_for=1.0)
    finally:
        assert blocker.stdin is not None
        blocker.stdin.close()
        blocker.wait(10)
        (pgdata / "postmaster.pid").unlink()


def test_a_crashed_server_not_yet_reaped_is_not_mistaken_for_a_live_one(
    cp_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pgdata = cp_dir / "postgres"
    start_embedded(pgdata).stop()
    # A killed postmaster whose parent has not collected its exit yet: a zombie. pgserver
    # (and PostgreSQL's own lock-file check) would take it for a running server.
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        dead.kill()
        wait_until(lambda: psutil.Process(dead.pid).status() == psutil.STATUS_ZOMBIE, message="a zombie")
        (pgdata / "postmaster.pid").write_text(
            f"{dead.pid}\n{pgdata}\n{int(time.time())}\n5432\n{pgdata}\n\n  0 0\nready\n"
        )
        caplog.set_level(logging.WARNING, logger="controlplane.db.embedded")
        server = start_embedded(pgdata, retry_for=20)
        try:
            assert f"postmaster {dead.pid} is dead; removing its lock file" in caplog.text
            assert _running(_postmaster_pid(pgdata))
            assert _postmaster_pid(pgdata) != dead.pid
        finally:
            server.stop()
    finally:
        dead.wait(10)
