"""The checked-in generated code must match what the protos produce."""

from signalbox import codegen


def test_generated_code_is_current() -> None:
    assert codegen.check() == [], "run `python -m signalbox.codegen`"
