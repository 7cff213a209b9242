"""Hypothesis profiles for the fuzz suites: ``default`` (bounded, every run) and ``nightly``
(many more examples). Pick one with ``HYPOTHESIS_PROFILE=nightly``."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    # Examples share one real server per test (a function-scoped fixture), on purpose.
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    # Real servers on a shared machine: no per-example deadline.
    "deadline": None,
    "database": None,
}
settings.register_profile("default", max_examples=40, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("nightly", max_examples=2000, **_COMMON)  # type: ignore[arg-type]
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
