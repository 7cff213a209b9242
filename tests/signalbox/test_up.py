"""``signalbox up`` as a user runs it: a real process tree, one real request, clean exit."""

from __future__ import annotations

import json
import re
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.helpers import wait_until

# Start-up includes initdb of an embedded PostgreSQL; the pytest default is too tight.
pytestmark = pytest.mark.timeout(600)


def up_command(data_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "signalbox",
        "up",
        "--data-dir",
        str(data_dir),
        "--controlplane-listen",
        "127.0.0.1:0",
        # Not the default 7703: the tests of `up` run side by side, and a second control plane
        # on a port is refused (it once shared it silently, SO_REUSEPORT).
        "--controlplane-node-listen",
        "127.0.0.1:0",
        "--dataplane-listen",
        "127.0.0.1:0",
        "--dataplane-http-listen",
        "127.0.0.1:0",
        "--simulator-listen",
        "127.0.0.1:0",
        "--dataplane-metrics-listen",
        "127.0.0.1:0",
        "--controlplane-metrics-listen",
        "127.0.0.1:0",
        *extra,
    ]


def assert_demo_output(stdout: str) -> None:
    assert re.search(r"^answer:\s+Simulated answer to: Hello from signalbox up!$", stdout, re.M), stdout
    assert re.search(r"^model:\s+sim-fast \(provider simulator\)$", stdout, re.M), stdout
    evidence = re.search(r"^evidence:\s+(\S+)$", stdout, re.M)
    assert evidence is not None, stdout
    assert re.search(
        r"-m signalbox infer --target 127\.0\.0\.1:\d+ --api-key sbx_\S+ hello$", stdout, re.M
    ), stdout
    assert re.search(r"^    curl -s http://127\.0\.0\.1:\d+/v1/chat/completions ", stdout, re.M), stdout


def pasted_commands(stdout: str) -> list[str]:
    """The commands ``up`` prints under "Call it yourself", one per indented line."""
    block = stdout.split("Call it yourself", 1)[1].split("Admin token", 1)[0]
    return [line[4:] for line in block.splitlines() if line.startswith("    ")]


def run_in_a_new_shell(command: str) -> str:
    """``command`` as a user pasting it would run it: a new login-less shell, no virtualenv
    active, nothing of this test's environment."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
    result = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def assert_private_and_token_only_on_the_terminal(stack_dir: Path, stdout: str) -> None:
    shown = re.search(r"^Admin token \(shown once\): (\S+)$", stdout, re.M)
    assert shown is not None, stdout
    token = shown.group(1).encode()
    holding = [p for p in stack_dir.rglob("*") if p.is_file() and token in p.read_bytes()]
    assert holding == [], f"the admin token was written to {holding}"
    logs = stack_dir / "logs"
    # Not the directories above the embedded PGDATA: run as root, pgserver opens those to its
    # own unprivileged user (o+x) so that PostgreSQL can reach its data.
    for directory in (logs, stack_dir / "node"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    private = [*logs.glob("*.log"), *(stack_dir / "node" / "snapshot").iterdir()]
    private += list((stack_dir / "node" / "evidence").iterdir())
    assert len(private) >= 4
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_up_once_serves_a_request_end_to_end_and_exits_cleanly(stack_dir: Path) -> None:
    first = subprocess.run(up_command(stack_dir, "--once"), capture_output=True, text=True, timeout=540)
    assert first.returncode == 0, first.stderr + first.stdout
    assert_demo_output(first.stdout)
    assert (stack_dir / "controlplane" / "trust-key.pub").exists()
    assert_private_and_token_only_on_the_terminal(stack_dir, first.stdout)

    # Again over the same data dir: the seed is updated, not duplicated, and a new key works.
    second = subprocess.run(up_command(stack_dir, "--once"), capture_output=True, text=True, timeout=540)
    assert second.returncode == 0, second.stderr + second.stdout
    assert_demo_output(second.stdout)


def port_open(target: str) -> bool:
    host, port = target.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def test_up_keeps_serving_until_interrupted_then_stops_its_children(stack_dir: Path) -> None:
    process = subprocess.Popen(
        up_command(stack_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Serving."):
                break
        output = "".join(lines)
        assert_demo_output(output)
        match = re.search(r"--target (\S+)", output)
        assert match is not None
        node = match.group(1)
        assert port_open(node)
        grpc_cli, curl, sdk = pasted_commands(output)
        assert "Simulated answer to: hello" in run_in_a_new_shell(grpc_cli)
        answer = json.loads(run_in_a_new_shell(curl))
        assert answer["object"] == "chat.completion"
        assert answer["choices"][0]["message"]["content"] == "Simulated answer to: hello"
        assert run_in_a_new_shell(sdk).strip() == "Simulated answer to: hello"

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
        assert not port_open(node)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    wait_until(lambda: not port_open(node), message="node port closed")


def test_up_reports_a_child_that_cannot_start_and_exits_non_zero(stack_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        command = up_command(stack_dir, "--once")
        command[command.index("--dataplane-listen") + 1] = busy

        result = subprocess.run(command, capture_output=True, text=True, timeout=540)

    assert result.returncode == 1, result.stdout
    assert "signalbox up: dataplane exited with status" in result.stderr, result.stderr
    assert f"(logs in {stack_dir / 'logs'})" in result.stderr
    # The control plane it had started was stopped: nothing answers on its port any more.
    match = re.search(r"control plane on (\S+)", result.stdout)
    assert match is not None, result.stdout
    assert not port_open(match.group(1))


def processes_using(directory: Path) -> list[str]:
    """Command lines of live processes that name ``directory`` (children, PostgreSQL)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or ())
        if str(directory) in cmdline:
            found.append(cmdline)
    return found


def test_up_interrupted_during_start_up_leaves_nothing_running(stack_dir: Path) -> None:
    process = subprocess.Popen(
        up_command(stack_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("signalbox up: simulator on"), first

        # Interrupt while bootstrap-admin is starting the embedded PostgreSQL: the one moment
        # a process that up does not supervise as a child holds a server.
        server = f"postgres -D {stack_dir / 'controlplane' / 'postgres'}"
        wait_until(
            lambda: any(server in cmdline for cmdline in processes_using(stack_dir)),
            timeout=60,
            message="embedded PostgreSQL starting",
        )
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    wait_until(lambda: not processes_using(stack_dir), timeout=30, message="no process left in the data dir")
