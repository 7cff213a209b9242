"""An API key's caller is made once per key and config; every check that depends on the
request (expiry, the key itself) still runs on each one."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from dataplane.auth import authenticate
from dataplane.config.model import ApiKeyEntry, RuntimeConfig, Scope, TenantConfig
from dataplane.errors import Unauthenticated

KEY = "sbx_legacy-format-key-of-the-caller-tests"
OTHER = "sbx_legacy-format-key-of-another-caller"


def _config(*, active: bool = True, expires_at: float | None = None) -> RuntimeConfig:
    keys = {
        hashlib.sha256(KEY.encode()).digest(): ApiKeyEntry("k1", "t", expires_at=expires_at),
        hashlib.sha256(OTHER.encode()).digest(): ApiKeyEntry("k2", "t"),
    }
    tenants = {"t": TenantConfig("t", "T", active=active)}
    return RuntimeConfig(1, b"", 0.0, None, Scope(), tenants, keys, {}, {}, {})


def test_each_request_of_a_key_gets_the_callers_made_for_it_once() -> None:
    config = _config()
    first = authenticate(config, KEY, 0.0)
    assert authenticate(config, KEY, 1.0) is first
    assert authenticate(config, OTHER, 1.0).key_id == "k2"
    assert authenticate(config, KEY, 2.0) is first


def test_a_key_that_expires_is_refused_after_it_was_admitted() -> None:
    config = _config(expires_at=100.0)
    assert authenticate(config, KEY, 99.0).key_id == "k1"
    with pytest.raises(Unauthenticated, match="expired"):
        authenticate(config, KEY, 100.0)


def test_a_wrong_key_is_refused_after_the_right_one_was_admitted() -> None:
    config = _config()
    authenticate(config, KEY, 0.0)
    with pytest.raises(Unauthenticated):
        authenticate(config, KEY + "x", 0.0)


def test_a_new_config_judges_the_key_afresh() -> None:
    config = _config()
    assert authenticate(config, KEY, 0.0).tenant.active
    deactivated = replace(config, tenants={"t": TenantConfig("t", "T", active=False)})
    with pytest.raises(Unauthenticated, match="not active"):
        authenticate(deactivated, KEY, 0.0)
    assert authenticate(replace(config, version=2), KEY, 0.0) is not authenticate(config, KEY, 0.0)


def test_a_key_of_an_inactive_tenant_is_refused_every_time() -> None:
    config = _config(active=False)
    for _ in range(3):
        with pytest.raises(Unauthenticated, match="not active"):
            authenticate(config, KEY, 0.0)
    assert config.callers == {}
