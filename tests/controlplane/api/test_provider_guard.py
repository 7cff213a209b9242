"""The control plane refuses providers that would carry a credential in the clear (settings,
base URL) or whose credential reference is a secret or not a name; errors name the field and
never echo the value."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from signalbox.api.admin.v1 import admin_pb2
from signalbox.api.config.v1 import snapshot_pb2
from tests.controlplane.conftest import Admin

PASTED = "sk-proj-Q2hhbmdlTWVQbGVhc2UxMjM0NTY3ODkw"

# (case, provider fields, field the error names, value that must not be echoed)
REFUSED: list[tuple[str, dict[str, Any], str, str]] = [
    *(
        (
            f"setting {name}",
            {"settings": {name: "hunter2-value"}},
            f"provider.settings.{name}",
            "hunter2-value",
        )
        for name in (
            "token",
            "key",
            "auth",
            "secret",
            "password",
            "api_key",
            "apiKey",
            "x-api-key",
            "authToken",
            "client_secret",
            "access_token",
            "Authorization",
        )
    ),
    ("setting value is a key", {"settings": {"org": PASTED}}, "provider.settings.org", PASTED),
    ("setting value is a bearer", {"settings": {"header": "Bearer abc"}}, "provider.settings.header", "abc"),
    *(
        (f"base_url {shape}", {"base_url": url}, "provider.base_url", secret)
        for shape, url, secret in (
            ("?key=", "https://llm.example/v1?key=hunter2-value", "hunter2-value"),
            ("?api_key=", "https://llm.example/v1?api_key=hunter2-value", "hunter2-value"),
            ("&token=", "https://llm.example/v1?v=1&token=hunter2-value", "hunter2-value"),
            ("?sig=", "https://llm.example/v1?sig=hunter2-value", "hunter2-value"),
            ("secret in a query value", f"https://llm.example/v1?x={PASTED}", PASTED),
            ("user:password@", "https://admin:hunter2-value@llm.example/v1", "hunter2-value"),
            ("user@", "https://hunter2-value@llm.example/v1", "hunter2-value"),
            ("secret in the path", f"https://llm.example/bot{PASTED}/v1", PASTED),
        )
    ),
    ("env is a pasted key", {"credential": {"env": PASTED}}, "provider.credential.env", PASTED),
    (
        "env is a high-entropy name",
        {"credential": {"env": "SIGNALBOX_CRED_A1B2C3D4E5F6G7H8I9J0K1"}},
        "provider.credential.env",
        "A1B2C3D4E5F6G7H8I9J0K1",
    ),
    ("env not a name", {"credential": {"env": "openai key"}}, "provider.credential.env", "openai key"),
    ("env lower case", {"credential": {"env": "openai_key"}}, "provider.credential.env", "openai_key"),
    ("file absolute", {"credential": {"file": "/etc/shadow"}}, "provider.credential.file", "/etc/shadow"),
    ("file climbing", {"credential": {"file": "../../etc/shadow"}}, "provider.credential.file", "etc/shadow"),
    ("file is a pasted key", {"credential": {"file": PASTED}}, "provider.credential.file", PASTED),
]


async def _refusal(admin: Admin, provider: admin_pb2.Provider) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.CreateProvider(admin_pb2.CreateProviderRequest(provider=provider))
    return info.value.code(), info.value.details() or ""


async def test_each_pattern_is_refused_naming_the_field_never_the_value(admin: Admin) -> None:
    for case, fields, field, secret in REFUSED:
        provider = admin_pb2.Provider(name="leaky", type="openai_compatible", **fields)
        code, message = await _refusal(admin, provider)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, case
        assert message.startswith(f"{field}:"), (case, message)
        assert secret not in message, case
        # Nothing was stored, on create or on update.
    listed = await admin.ListProviders(admin_pb2.ListProvidersRequest())
    assert [p.name for p in listed.providers] == []


async def test_an_update_is_held_to_the_same_guard(admin: Admin) -> None:
    clean = admin_pb2.Provider(name="p", type="openai_compatible", base_url="https://llm.example/v1")
    await admin.CreateProvider(admin_pb2.CreateProviderRequest(provider=clean))
    leaky = admin_pb2.Provider(
        name="p", type="openai_compatible", base_url="https://llm.example/v1?api_key=hunter2-value"
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.UpdateProvider(admin_pb2.UpdateProviderRequest(provider=leaky))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hunter2-value" not in (info.value.details() or "")
    listed = await admin.ListProviders(admin_pb2.ListProvidersRequest())
    assert [p.base_url for p in listed.providers] == ["https://llm.example/v1"]


async def test_a_base_url_the_node_cannot_call_is_refused(admin: Admin) -> None:
    # A port past 65535 or not a number was stored and signed; the node's HTTP client then
    # refused the URL on every request (UnsupportedProtocol), counted against the deployment.
    for url in ("http://127.0.0.1:99999/v1", "https://llm.example:0/v1", "https://llm.example:http/v1"):
        provider = admin_pb2.Provider(name="p", type="openai_compatible", base_url=url)
        code, message = await _refusal(admin, provider)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, url
        assert message.startswith("provider.base_url: "), (url, message)
    listed = await admin.ListProviders(admin_pb2.ListProvidersRequest())
    assert [p.name for p in listed.providers] == []


async def test_ordinary_providers_still_pass(admin: Admin) -> None:
    providers = [
        admin_pb2.Provider(
            name="azure",
            type="azure_openai",
            base_url="https://acme.openai.azure.com/openai?api-version=2024-10-21",
            settings={"api_version": "2024-10-21", "deployment": "gpt-4o-2024-08-06", "max_tokens": "5"},
            credential=snapshot_pb2.SecretRef(env="SIGNALBOX_CRED_AZURE_OPENAI"),
        ),
        admin_pb2.Provider(
            name="anthropic",
            type="anthropic",
            base_url="https://api.anthropic.com/v1",
            settings={"default_max_tokens": "1024", "anthropic_version": "2023-06-01"},
            credential=snapshot_pb2.SecretRef(file="anthropic/api.key"),
        ),
    ]
    for provider in providers:
        await admin.CreateProvider(admin_pb2.CreateProviderRequest(provider=provider))
    listed = await admin.ListProviders(admin_pb2.ListProvidersRequest())
    assert sorted(p.name for p in listed.providers) == ["anthropic", "azure"]
