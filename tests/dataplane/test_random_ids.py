"""Random ids from a buffer of the OS's random bytes: each byte handed out once, in ids of
the length asked for, and a forked child never hands out its parent's next ids."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from dataplane import random_ids


def test_ids_have_the_length_asked_for_and_never_repeat_across_refills() -> None:
    drawn = [random_ids.token_hex(n) for _ in range(3 * random_ids.REFILL_BYTES // 8) for n in (12, 16, 32)]
    assert all(len(token) in (24, 32, 64) for token in drawn)
    assert all(int(token, 16) >= 0 for token in drawn)  # hex digits only
    assert len(set(drawn)) == len(drawn)


def test_a_draw_larger_than_the_buffer_is_whole() -> None:
    big = random_ids.token_hex(random_ids.REFILL_BYTES + 5)
    assert len(big) == 2 * (random_ids.REFILL_BYTES + 5)
    assert len(random_ids.token_hex(16)) == 32


def test_the_bytes_come_in_order_from_one_read_of_the_os() -> None:
    random_ids._forget()
    first = random_ids.token_hex(16)
    second = random_ids.token_hex(16)
    assert random_ids._buffer[:32].hex() == first + second


def test_a_forked_child_does_not_hand_out_its_parents_next_ids() -> None:
    # In a process of its own: forking this (threaded) test process is not safe.
    script = textwrap.dedent(
        """
        import os
        from dataplane.random_ids import token_hex
        token_hex(16)  # the buffer is filled before the fork
        read, write = os.pipe()
        child = os.fork()
        if child == 0:
            os.write(write, token_hex(16).encode())
            os._exit(0)
        os.waitpid(child, 0)
        print(token_hex(16), os.read(read, 64).decode())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    parent, child = out.stdout.split()
    assert len(parent) == len(child) == 32
    assert parent != child
