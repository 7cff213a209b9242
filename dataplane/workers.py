"""``signalbox dataplane serve --workers N``: N processes of one node sharing its ports.

Python runs one core per process; a node that should use every core of its machine runs
one worker per core. The supervisor (this module, the process the operator started) starts
worker 0 first, with the enrollment token if there is one, and the others only once worker 0
listens (so the node's certificate exists before anyone needs it); each worker is the same
``dataplane serve`` command with ``--worker-index i``. They share the gRPC and HTTP ports
with SO_REUSEPORT (the kernel spreads connections), so the ports must be fixed numbers.

Per worker: its own evidence chain (``<node id>/<i>``, shipped on its own stream), its own
snapshot state (worker 0 syncs with the control plane, or reads the air-gapped pin; the
others read the pin, or follow what worker 0 persisted, checking every signature and their
own high-water mark). SIGTERM or SIGINT to the supervisor is passed to every worker, each
drains as a single node does; the supervisor exits when all have, non-zero if any failed.
A worker that dies on its own stops the others: the service manager restarts the node whole.

The kernel lets any process of the same user join a SO_REUSEPORT group, so a second node
started on the same ports (another data dir, perhaps another snapshot) would silently take
a share of this node's callers. The supervisor therefore claims each shared port number for
its lifetime (``claim_port``: an abstract unix socket named after it, released by the kernel
however the supervisor ends) and refuses to start when another supervisor holds it. A node
of one worker needs no claim: it binds without SO_REUSEPORT, which the kernel refuses to
share either way.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence

MAX_WORKERS = 64
"""Workers one node may run. The control plane leases quota to ``<node id>/0`` ..
``<node id>/63`` only: each holder counts on its own in a tenant's fair share, so a node
naming workers without bound would shrink every other node's share."""
START_TIMEOUT_S = 120.0
STOP_MARGIN_S = 30.0
"""Beyond its drain, what a worker gets to close its logs and connections."""


def resolve(requested: int) -> int:
    """``--workers``: 0 means one per core this process may run on (at most ``MAX_WORKERS``)."""
    return requested if requested > 0 else max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


def _die_with_parent() -> None:
    """In each worker before it runs (Linux): SIGTERM when the supervisor dies, even by
    SIGKILL, so no orphaned worker keeps the node's ports and serves on unsupervised."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


class PortClaimed(OSError):
    """Another supervisor's workers share that port; the message names it (and the holder)."""


def claim_port(port: int) -> socket.socket:
    """Claim ``port`` for this supervisor's workers until the returned socket is closed;
    ``PortClaimed`` when another supervisor holds it. The claim is by port number, whatever
    the address: a wildcard and a specific address of one port share a SO_REUSEPORT group."""
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        claim.bind(_claim_name(port))
        claim.listen(1)  # only so a refused supervisor can ask who holds it (SO_PEERCRED)
    except OSError as exc:
        claim.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        holder = _claim_holder(port)
        raise PortClaimed(
            errno.EADDRINUSE,
            f"port {port} is already shared by the workers of another node"
            + (f" (supervisor pid {holder})" if holder else "")
            + "; stop that node or give this one other ports",
        ) from None
    return claim


def _claim_name(port: int) -> bytes:
    # Abstract namespace (leading NUL): no file to leave behind, per network namespace as
    # the port itself is, and released when the holder exits, even by SIGKILL.
    return b"\0signalbox/dataplane/tcp/%d" % port


def _claim_holder(port: int) -> int | None:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)
    try:
        probe.connect(_claim_name(port))
        pid, _uid, _gid = struct.unpack("3i", probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError:
        return None
    finally:
        probe.close()
    return pid or None


def _port_of(listen: str) -> int:
    return int(listen.rpartition(":")[2])


def _listening(listen: str) -> bool:
    host, _, port = listen.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=1):
            return True
    except OSError:
        return False


def supervise(
    argv: Sequence[str], workers: int, listen: str, drain_seconds: float, shared: Sequence[str] = ()
) -> int:
    """Run ``workers`` copies of ``signalbox <argv> --worker-index i`` until a signal or a
    worker's exit; the exit code. A worker still running ``drain_seconds`` plus
    ``STOP_MARGIN_S`` after it was told to stop is killed. ``shared``: the other addresses
    the workers share besides ``listen`` (the HTTP door's)."""
    # Claimed before worker 0 starts, held until the last worker is gone.
    ports = sorted({_port_of(address) for address in (listen, *shared)}) if sys.platform == "linux" else []
    with contextlib.ExitStack() as held:
        try:
            for port in ports:
                held.enter_context(claim_port(port))
        except PortClaimed as exc:
            print(f"signalbox dataplane serve: {exc.strerror}", file=sys.stderr)
            return 1
        return _supervise(argv, workers, listen, drain_seconds)


def _supervise(argv: Sequence[str], workers: int, listen: str, drain_seconds: float) -> int:
    command = [sys.executable, "-m", "signalbox", *argv]
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        env = dict(os.environ)
        children.append(
            subprocess.Popen([*command, "--worker-index", "0"], env=env, preexec_fn=_die_with_parent)
        )
        # The one-time enrollment token is worker 0's: the others find the certificate it got.
        env.pop("SIGNALBOX_ENROLL_TOKEN", None)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _listening(listen):
            if children[0].poll() is not None or stopping:
                return _finish(children, drain_seconds + STOP_MARGIN_S)
            if time.monotonic() > deadline:
                print(
                    f"signalbox dataplane serve: worker 0 did not listen on {listen} in time", file=sys.stderr
                )
                forward(signal.SIGTERM, None)
                return _finish(children, drain_seconds + STOP_MARGIN_S) or 1
            time.sleep(0.1)
        children.extend(
            subprocess.Popen([*command, "--worker-index", str(i)], env=env, preexec_fn=_die_with_parent)
            for i in range(1, workers)
        )
        while not stopping:
            if any(child.poll() is not None for child in children):
                print("signalbox dataplane serve: a worker exited; stopping the others", file=sys.stderr)
                forward(signal.SIGTERM, None)
                return _finish(children, drain_seconds + STOP_MARGIN_S) or 1
            time.sleep(0.2)
        return _finish(children, drain_seconds + STOP_MARGIN_S)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _finish(children: Sequence[subprocess.Popen[bytes]], grace: float) -> int:
    """Wait for every worker (killing what is still running after ``grace`` seconds: a
    worker that does not drain must not keep the node's ports); 0 when all exited cleanly."""
    deadline = time.monotonic() + grace
    codes = []
    for child in children:
        try:
            codes.append(child.wait(timeout=max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            print(f"signalbox dataplane serve: worker pid {child.pid} did not stop; killed", file=sys.stderr)
            child.kill()
            codes.append(child.wait() or 1)
    return next((code for code in codes if code), 0)
