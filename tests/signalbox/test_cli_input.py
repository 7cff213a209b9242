"""Bad values given to the CLI, as flags, environment variables or arguments: each is one
line naming the flag or variable and an exit status of 2, never a traceback, and never a
call made with a value other than the one given."""

from __future__ import annotations

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
    assert "--timeout: SIGNALBOX_INFER_TIMEOUT=soon is not valid" in _one_line(err)

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
    assert "argument --timeout: invalid float value: 'x'" in _one_line(err)


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
    assert "SIGNALBOX_INFER_TARGET=127.0.0.1:99999 is not valid: 127.0.0.1:99999: port 99999" in err
