"""A TCP port for a child process to listen on, chosen before the child starts.

The usual trick, binding port 0 and closing the socket, hands out a port from the kernel's
ephemeral range, the same range every outgoing connection on the machine takes its source
port from. Between the pick and the child's bind, any connection anywhere may take it, and
the child then fails to start ("Failed to bind"): on a busy machine (a CI run starting
hundreds of servers and thousands of connections) it happens. A port below that range is
never given to an outgoing connection, so only another listener can take it, and a random
one among ~20,000 is rarely anybody's. It is checked free when picked.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 10_000
"""Below this, ports are more often assigned to well-known services."""
_EPHEMERAL_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_ATTEMPTS = 64


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux's default where it cannot be read)."""
    try:
        low, high = (int(field) for field in _EPHEMERAL_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now, outside the ephemeral range when there is room below it;
    else (a range starting low) one the kernel picks."""
    low, _ = ephemeral_range()
    if low - LOWEST >= 1_000:
        for _ in range(_ATTEMPTS):
            port = random.randrange(LOWEST, low)
            if _bindable(host, port):
                return port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
