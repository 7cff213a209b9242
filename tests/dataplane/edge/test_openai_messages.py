"""The OpenAI door's shortcut for a message that is only a role's text (``_message``): for every
two-key message, exactly what the general reading (``_any_message``) gives, answer or refusal."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.chat import Message, Role, TextPart
from dataplane.edge import openai as edge
from dataplane.errors import InvalidRequest

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
ROLES = st.sampled_from([r.value for r in Role]) | st.text(max_size=10)
KEYS = st.sampled_from(["role", "content", "name", "tool_call_id", "refusal", "tool_calls"]) | st.text(
    max_size=6
)


def outcome(read: Any) -> Any:
    try:
        return read()
    except InvalidRequest as exc:
        return ("refused", exc.field, str(exc))


@settings(max_examples=400, deadline=None)
@given(role=ROLES | JSON, content=st.text(max_size=20) | JSON)
def test_a_role_and_its_content_read_as_the_general_reading_reads_them(role: Any, content: Any) -> None:
    message = {"role": role, "content": content}
    assert outcome(lambda: edge._message(message, 3)) == outcome(
        lambda: edge._any_message(message, "messages[3]")
    )


@settings(max_examples=200, deadline=None)
@given(
    message=st.dictionaries(
        KEYS, st.sampled_from(["user", "tool", "assistant"]) | JSON, min_size=2, max_size=2
    )
)
def test_any_two_keys_read_as_the_general_reading_reads_them(message: dict[str, Any]) -> None:
    assert outcome(lambda: edge._message(message, 0)) == outcome(
        lambda: edge._any_message(message, "messages[0]")
    )


def test_the_shortcut_gives_the_messages_every_role_but_a_tools() -> None:
    for role in (Role.SYSTEM, Role.DEVELOPER, Role.USER, Role.ASSISTANT):
        assert edge._message({"role": role.value, "content": "hi"}, 0) == Message(role, (TextPart("hi"),))
    refused = outcome(lambda: edge._message({"role": "tool", "content": "42"}, 1))
    assert refused[:2] == ("refused", "messages[1].tool_call_id")
