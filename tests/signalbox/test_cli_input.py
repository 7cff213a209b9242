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
