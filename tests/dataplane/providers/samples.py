"""Requests used by several adapter tests."""

from __future__ import annotations

from dataplane.chat import (
    ChatRequest,
    GenerationParams,
    ImagePart,
    Message,
    Role,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolDefinition,
)

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = ToolDefinition(name="get_weather", description="Current weather", parameters=WEATHER_SCHEMA)
PARIS_ARGS = '{"city": "Paris"}'


def user(text: str) -> Message:
    return Message(role=Role.USER, content=(TextPart(text),))


def system(text: str, role: Role = Role.SYSTEM) -> Message:
    return Message(role=role, content=(TextPart(text),))


HELLO = ChatRequest(messages=(system("Be brief."), user("Say hello")))

ASK_WEATHER = ChatRequest(messages=(system("Be brief."), user("Weather in Paris?")), tools=(WEATHER,))

TOOL_ROUND_TRIP = ChatRequest(
    messages=(
        system("Be brief."),
        system("Answer in English.", Role.DEVELOPER),
        user("Weather in Paris and Rome?"),
        Message(
            role=Role.ASSISTANT,
            tool_calls=(
                ToolCall(id="call_abc123", name="get_weather", arguments='{"city": "Paris"}'),
                ToolCall(id="toolu_01XYZ", name="get_weather", arguments='{"city": "Rome"}'),
            ),
        ),
        Message(role=Role.TOOL, tool_call_id="call_abc123", content=(TextPart("18C sunny"),)),
        Message(role=Role.TOOL, tool_call_id="toolu_01XYZ", content=(TextPart("22C clear"),)),
    ),
    tools=(WEATHER,),
    tool_choice=ToolChoice(mode="required"),
    params=GenerationParams(
        max_output_tokens=100, temperature=0.5, stop=("END",), seed=7, parallel_tool_calls=False
    ),
)

WITH_IMAGES = ChatRequest(
    messages=(
        Message(
            role=Role.USER,
            content=(
                TextPart("What is this?"),
                ImagePart(url="https://example.com/cat.png"),
                ImagePart(data=b"\x89PNG", media_type="image/png"),
            ),
        ),
    )
)
