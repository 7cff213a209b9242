"""Bad values given to the CLI, as flags, environment variables or arguments: each is one
line naming the flag or variable and an exit status of 2, never a traceback, and never a
call made with a value other than the one given."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from tests.helpers import signalbox_exit


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


async def test_a_bad_setting_in_the_environment_names_the_variable_and_breaks_no_other_command(
    tmp_path: Path,
) -> None:
    # Every parser is built at start, each reading its variables: a bad number in one
    # command's variable was a traceback of every command.
    env = {"SIGNALBOX_WORKERS": "four", "SIGNALBOX_INFER_TIMEOUT": "soon"}
    code, err = await signalbox_exit("infer", "--api-key", "k", "hello", env=env)
    assert code == 2, err
    assert "--timeout: SIGNALBOX_INFER_TIMEOUT: soon is not a number of seconds" in _one_line(err)

    code, err = await signalbox_exit("dataplane", "serve", "--data-dir", str(tmp_path), env=env)
    assert code == 2, err
    assert "--workers: SIGNALBOX_WORKERS=four is not valid" in _one_line(err)

    # A command without the variable's flag does not care, and a flag given wins.
    code, err = await signalbox_exit("dataplane", "verify", "--snapshot", str(tmp_path / "none"), env=env)
    assert code == 1, err
    assert "Traceback" not in err
    code, err = await signalbox_exit(
        "infer", "--timeout", "x", "--api-key", "k", "hello", env={"SIGNALBOX_INFER_TIMEOUT": "5"}
    )
    assert code == 2, err
    assert "argument --timeout: x is not a number of seconds" in _one_line(err)


async def test_a_port_past_65535_is_refused_not_taken_modulo_65536(tmp_path: Path) -> None:
    # gRPC took 127.0.0.1:99999 as port 34463 (99999 - 65536): a node listened, and a client
    # called, a port nobody named.
    for args in (
        ("dataplane", "serve", "--listen", "127.0.0.1:99999", "--data-dir", str(tmp_path / "node")),
        ("dataplane", "serve", "--control-plane", "127.0.0.1:70000", "--data-dir", str(tmp_path / "node")),
        ("controlplane", "serve", "--node-listen", "127.0.0.1:65536", "--data-dir", str(tmp_path / "cp")),
        ("infer", "--target", "127.0.0.1:99999", "--api-key", "k", "hello"),
        ("admin", "--target", "127.0.0.1:99999", "--token", "t", "tenant", "list"),
        ("simulator", "serve", "--listen", "127.0.0.1:" + "9" * 5000),
    ):
        code, err = await signalbox_exit(*args)
        flag = next(arg for arg in args if arg.startswith("--"))
        assert code == 2, (args, err)
        assert f"argument {flag}: " in _one_line(err)
        assert "is not 0-65535" in _one_line(err)
    assert not (tmp_path / "node").exists()
    assert not (tmp_path / "cp").exists()
    code, err = await signalbox_exit(
        "infer", "--api-key", "k", "hello", env={"SIGNALBOX_INFER_TARGET": "127.0.0.1:99999"}
    )
    assert code == 2, err
    assert "--target: SIGNALBOX_INFER_TARGET: 127.0.0.1:99999: port 99999 is not 0-65535" in err


JWT_REST = ("--algorithm", "RS256", "--jwks", "/dev/zero")


async def test_an_admin_document_is_read_bounded_and_as_utf8_text(tmp_path: Path) -> None:
    # policy apply read the whole file as the locale's text: /dev/zero filled memory until a
    # MemoryError, bytes not UTF-8 were a traceback; JWKS and import files were unbounded too.
    # Nothing is sent: no control plane listens on the target.
    admin = ("admin", "--target", "127.0.0.1:1", "--token", "t")
    not_utf8 = tmp_path / "policy.json"
    not_utf8.write_bytes(b'{"default_model": "\xff"}')
    for args, line in (
        (("policy", "apply", "-f", "/dev/zero"), "--file: /dev/zero: more than 1048576 bytes"),
        (("policy", "apply", "-f", str(not_utf8)), f"--file: {not_utf8}: not UTF-8 text (byte 19)"),
        (("policy", "apply", "-f", str(tmp_path)), f"--file: cannot read {tmp_path}: Is a directory"),
        (
            ("identity", "jwt", "add", "--tenant", "t", "--issuer", "i", "--audience", "a", *JWT_REST),
            "--jwks: /dev/zero: more than 65536 bytes",
        ),
        (
            ("import", "/dev/zero", "--secrets-out", str(tmp_path / "secrets.jsonl")),
            "FILE: /dev/zero: more than 50331648 bytes",
        ),
    ):
        code, err = await signalbox_exit(*admin, *args)
        assert code == 1, (args, err)
        assert _one_line(err) == line
    assert not (tmp_path / "secrets.jsonl").exists()


INFER = ("infer", "--target", "127.0.0.1:1", "--api-key", "sbx_k")
ADMIN = ("admin", "--target", "127.0.0.1:1", "--token", "sbxadm_t")


async def test_numbers_no_call_could_carry_are_usage_errors_naming_the_flag() -> None:
    # A timeout of -1, NaN or inf was a DEADLINE_EXCEEDED before anything was sent (as if the
    # server were slow); a count past what the request's field holds was a ValueError
    # traceback while the request was built. No server listens on the target: nothing is sent.
    for args, flag in (
        ((*INFER, "--timeout", "-1", "hi"), "--timeout"),
        ((*INFER, "--timeout", "nan", "hi"), "--timeout"),
        ((*INFER, "--timeout", "inf", "hi"), "--timeout"),
        ((*INFER, "--max-tokens", "-5", "hi"), "--max-tokens"),
        ((*INFER, "--max-tokens", str(2**32), "hi"), "--max-tokens"),
        (("admin", "--timeout", "0", "--token", "t", "tenant", "list"), "--timeout"),
        ((*ADMIN, "policy", "get", "--version", "-1"), "--version"),
        ((*ADMIN, "governance", "diff", "--from", "-1"), "--from"),
        (
            (*ADMIN, "provider", "create", "p", "--type", "openai", "--timeout-ms", "99999999999"),
            "--timeout-ms",
        ),
        (
            (*ADMIN, "model", "create", "m", "--deployment", "p:x", "--context-window", "-1"),
            "--context-window",
        ),
        ((*ADMIN, "route", "explain", "--tenant", "t", "--max-output-tokens", "-1"), "--max-output-tokens"),
    ):
        code, err = await signalbox_exit(*args)
        assert code == 2, (args, err)
        assert f"argument {flag}: " in _one_line(err), (args, err)
    code, err = await signalbox_exit(*ADMIN, "model", "create", "m", "--deployment", "p:x:-1")
    assert code == 1, err
    assert (
        _one_line(err) == "--deployment: weight of 'p:x:-1': got -1, expected 0..4294967295 (a whole number)"
    )


async def test_text_that_is_not_utf8_or_a_credential_that_is_not_ascii_is_named_never_shown() -> None:
    # Bytes of the command line that are not UTF-8 were a UnicodeEncodeError traceback when
    # the request was built; a non-ASCII key or token was gRPC's "Invalid metadata" (INTERNAL)
    # or a traceback.
    cases: tuple[tuple[tuple[str | bytes, ...], str], ...] = (
        ((*INFER, b"caf\xe9"), "signalbox infer: prompt: not UTF-8 text"),
        ((*INFER, "--model", b"\xff", "hi"), "signalbox infer: model: not UTF-8 text"),
        ((*ADMIN, "tenant", "get", b"\xff"), "signalbox admin: name: not UTF-8 text"),
        ((*ADMIN, "tenant", "create", "t", "--label", b"k=\xff"), "signalbox admin: label: not UTF-8 text"),
    )
    for args, line in cases:
        code, err = await signalbox_exit(*args)
        assert code == 2, (args, err)
        assert _one_line(err) == line
    secret = "sbx_sécret-value"
    for credential_args in (
        ("infer", "--target", "127.0.0.1:1", "--api-key", secret, "hi"),
        ("admin", "--target", "127.0.0.1:1", "--token", secret, "tenant", "list"),
    ):
        code, err = await signalbox_exit(*credential_args)
        assert code == 2, (credential_args, err)
        assert "must be printable ASCII" in _one_line(err)
        assert "sécret" not in err
    code, err = await signalbox_exit(
        "infer", "--target", "127.0.0.1:1", "hi", env={"SIGNALBOX_API_KEY": secret}
    )
    assert code == 2, err
    assert "SIGNALBOX_API_KEY: must be printable ASCII" in _one_line(err)
    assert "sécret" not in err


async def test_up_refuses_a_startup_timeout_that_is_already_past(tmp_path: Path) -> None:
    # -1 or nan started the simulator and then failed every process at once ("did not
    # finish in -1.0s"), with a child's KeyboardInterrupt traceback in the output.
    for value in ("-1", "nan", "0"):
        code, err = await signalbox_exit(
            "up", "--once", "--data-dir", str(tmp_path / "up"), "--startup-timeout", value
        )
        assert code == 2, err
        assert f"argument --startup-timeout: {value} is not a number of seconds above 0" in _one_line(err)
    assert not (tmp_path / "up").exists()


async def test_a_node_id_the_control_plane_would_refuse_is_a_usage_error(tmp_path: Path) -> None:
    # An empty id (--node-id "$UNSET") or one with a control character ran, and signed
    # evidence under an id that enrollment, sync and evidence import all refuse.
    node = str(tmp_path / "node")
    for value in ("", "vault\n1", "x" * 257):
        for args in (
            ("dataplane", "serve", "--data-dir", node, "--node-id", value),
            ("dataplane", "identity", "request", "--data-dir", node, "--node-id", value),
        ):
            code, err = await signalbox_exit(*args)
            assert code == 2, (args, err)
            assert "argument --node-id: " in _one_line(err)
            assert "is not 1..256 characters without control characters" in _one_line(err)
    assert not (tmp_path / "node").exists()


async def test_a_data_dir_that_is_a_file_is_refused_naming_the_flag(tmp_path: Path) -> None:
    # It was "[Errno 17] File exists: '...'", naming neither the flag nor what was wrong.
    taken = tmp_path / "taken"
    taken.write_text("not a directory")
    for args in (
        ("dataplane", "serve"),
        ("dataplane", "identity", "request"),
        ("dataplane", "evidence", "export", "--out", str(tmp_path / "pack")),
        ("dataplane", "verify", "--snapshot", str(taken), "--trust-key", str(taken)),
        ("controlplane", "serve"),
        ("up", "--once"),
    ):
        code, err = await signalbox_exit(*args, "--data-dir", str(taken))
        assert code == 2, (args, err)
        assert f"argument --data-dir: {taken} exists and is not a directory" in _one_line(err), args
    assert taken.read_text() == "not a directory"


async def test_a_credential_dir_that_is_missing_or_a_file_is_refused_at_start(tmp_path: Path) -> None:
    # Accepted at start, a typo in --credential-dir was found out only when a snapshot naming
    # a credential file was refused, the node up and serving nothing.
    taken = tmp_path / "taken"
    taken.write_text("not a directory")
    node = tmp_path / "node"
    for given, problem in ((tmp_path / "missing", "does not exist"), (taken, "is not a directory")):
        code, err = await signalbox_exit(
            "dataplane", "serve", "--data-dir", str(node), "--credential-dir", str(given)
        )
        assert code == 2, err
        assert f"argument --credential-dir: {given} {problem}" in _one_line(err)
    assert not node.exists()


async def test_ctrl_c_while_a_node_starts_is_a_quiet_stop_not_a_traceback(tmp_path: Path) -> None:
    # An interrupt before the node had its own signal handlers (imports, the first second)
    # ended in a KeyboardInterrupt traceback. Sent at several points of its start-up, the
    # interrupt must stop it quietly whichever side of that moment it lands on (from 0.5 s:
    # the interpreter's own start, before any code of ours runs, cannot be caught).
    for n, delay in enumerate((0.5, 0.8, 1.1, 1.5, 2.0)):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "signalbox", "dataplane", "serve", "--data-dir", str(tmp_path / f"node{n}"),
            "--listen", "127.0.0.1:0",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await asyncio.sleep(delay)  # not a wait for a condition: the point is to land anywhere
        process.send_signal(signal.SIGINT)
        try:
            _, err = await asyncio.wait_for(process.communicate(), 60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        text = err.decode()
        assert "Traceback" not in text, (delay, text)
        # -SIGINT: on a loaded machine the interrupt can still land before the interpreter
        # has set up its own handler, and the default action ends the process as quietly (a
        # shell shows 130 either way).
        assert process.returncode in (0, 130, -signal.SIGINT), (delay, process.returncode, text)
