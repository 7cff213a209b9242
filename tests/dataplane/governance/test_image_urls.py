"""An image given by an http(s) URL is fetched by the provider, so its URL is governed like a
text (its percent-encoding read decoded); a ``data:`` URL is the image itself and its payload
is not read."""

from __future__ import annotations

from typing import Any

import pytest

from dataplane.chat import ChatRequest, ImagePart, Message, Role, TextPart
from dataplane.governance.errors import Blocked
from tests.dataplane.governance.test_enforce import governor, rule

URL = "https://img.example.net/render.png?user=ada.lovelace%40example.org&size=2"


def with_image(url: str) -> ChatRequest:
    return ChatRequest(
        messages=(Message(Role.USER, (TextPart("what is in this picture?"), ImagePart(url=url))),)
    )


@pytest.mark.parametrize("url", [URL, URL.replace("%40", "@"), URL.replace("https:", "HTTP:")])
def test_an_address_in_an_image_url_is_blocked_and_redacted_in_the_url(url: str) -> None:
    with pytest.raises(Blocked):
        governor({"input": {"rules": [rule("e", "email", "block")]}}).govern_input(with_image(url), [])
    actions: list[dict[str, Any]] = []
    edited = governor({"input": {"rules": [rule("e", "email", "redact")]}}).govern_input(
        with_image(url), actions
    )
    assert isinstance(edited, ChatRequest)
    image = edited.messages[0].content[1]
    assert isinstance(image, ImagePart)
    value = "ada.lovelace%40example.org" if "%40" in url else "ada.lovelace@example.org"
    assert image.url == url.replace(value, "%5BREDACTED%5D")
    assert edited.messages[0].content[0] == TextPart("what is in this picture?")
    position = actions[0]["positions"][0]
    start = url.index(value)
    assert (position["field"], position["start"], position["end"]) == (
        "messages[0].content[1].url",
        start,
        start + len(value),
    )


def test_a_credential_in_an_image_url_is_found() -> None:
    url = "https://cdn.example.net/a.png?token=ghp_" + "A1b2C3d4E5" * 4
    actions: list[dict[str, Any]] = []
    governor({"input": {"rules": [rule("k", "credential", "flag")]}}).govern_input(with_image(url), actions)
    assert actions[0]["positions"][0]["kind"] == "github_token"


def test_a_data_url_is_an_image_not_text() -> None:
    url = "data:image/png;base64,ada.lovelace@example.org"  # not real base64: never read
    actions: list[dict[str, Any]] = []
    body = with_image(url)
    assert governor({"input": {"rules": [rule("e", "email", "block")]}}).govern_input(body, actions) is body
    assert actions == []
