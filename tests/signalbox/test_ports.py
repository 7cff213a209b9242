"""``signalbox.ports.free_port``: ports handed to child processes come from below the
kernel's ephemeral range, where no outgoing connection can take them before the child binds."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from signalbox import ports


def test_a_port_is_below_the_ephemeral_range_and_free() -> None:
    low, high = ports.ephemeral_range()
    assert low < high
    for _ in range(20):
        port = ports.free_port()
        assert ports.LOWEST <= port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free, as promised


def test_a_taken_port_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports.free_port()))
        taken.listen()
        busy = taken.getsockname()[1]
        choices = iter([busy, busy, busy + 1 if busy + 1 < ports.ephemeral_range()[0] else busy - 1])
        monkeypatch.setattr(ports.random, "randrange", lambda low, high: next(choices))
        port = ports.free_port()
    assert port != busy
    assert abs(port - busy) == 1


def test_without_room_below_the_range_the_kernel_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (10_500, 60_999))
    assert ports.free_port() >= 10_500


def test_an_unreadable_range_is_linuxs_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ports, "_EPHEMERAL_FILE", tmp_path / "missing")
    assert ports.ephemeral_range() == (32768, 60999)
    (tmp_path / "bad").write_text("not numbers\n")
    monkeypatch.setattr(ports, "_EPHEMERAL_FILE", tmp_path / "bad")
    assert ports.ephemeral_range() == (32768, 60999)
