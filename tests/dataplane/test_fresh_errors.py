"""``dataplane.errors.fresh``: a kept error raised as a copy, so its traceback never reaches
what keeps it."""

from __future__ import annotations

import pytest

from dataplane.errors import InvalidRequest, LimitExceeded, fresh
from dataplane.upstream.errors import ReadTimeout


@pytest.mark.parametrize(
    "error",
    [
        InvalidRequest("x-request-id", "longer than 128 characters"),
        ReadTimeout("upstream sent nothing within the timeout"),
        LimitExceeded("tenant acme requests per minute", 2.5, "60 of 60 used"),
    ],
)
def test_a_fresh_copy_has_the_class_message_and_attributes_and_no_history(error: BaseException) -> None:
    try:
        raise RuntimeError("meanwhile") from None
    except RuntimeError:
        try:
            raise error
        except type(error):
            pass
    assert error.__traceback__ is not None
    copy = fresh(error)
    assert copy is not error
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.args == error.args
    assert vars(copy) == vars(error)
    assert copy.__traceback__ is None
    assert copy.__context__ is None
    assert copy.__cause__ is None
