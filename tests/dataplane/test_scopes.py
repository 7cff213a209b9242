"""Key scopes: the grammar, the parsed form a node checks, and the candidate filter."""

from __future__ import annotations

import hashlib
import re

import grpc
import pytest

from dataplane.config.model import Capability, DeploymentConfig, ModelConfig, ProviderConfig
from dataplane.errors import PermissionDenied
from dataplane.routing.candidate import Candidate
from dataplane.scopes import (
    ECHO_CHARS,
    OUT_OF_SCOPE,
    UNRESTRICTED,
    KeyScope,
    ScopeSyntaxError,
    nothing_in_scope,
    parse_scope,
    validate_scopes,
    within_scope,
)
from dataplane.snapshot.compile import compile_snapshot
from signalbox.api.config.v1 import snapshot_pb2

# ---- grammar ----


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model:gpt-4o", ("model", "gpt-4o")),
        ("model:org:m", ("model", "org:m")),
        ("task:summarize", ("task", "summarize")),
        ("op:chat", ("op", "chat")),
        ("op:stream", ("op", "stream")),
        ("op:embed", ("op", "embed")),
        ("model:*", ("model", "*")),
        ("task:" + "x" * 128, ("task", "x" * 128)),
    ],
)
def test_valid_scopes_parse(text: str, expected: tuple[str, str]) -> None:
    assert parse_scope(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("infer", "'infer' is not KIND:VALUE (kinds: model, op, task)"),
        ("foo:bar", "unknown scope kind 'foo' (known: model, op, task)"),
        ("Model:x", "unknown scope kind 'Model' (known: model, op, task)"),
        (":x", "unknown scope kind '' (known: model, op, task)"),
        ("model:", "model: value must not be empty"),
        ("task:" + "x" * 129, "task: value is 129 characters, more than 128"),
        ("task:a b", "task: value 'a b' contains whitespace or control characters"),
        ("model:a\tb", "model: value 'a\\tb' contains whitespace or control characters"),
        ("model:a\x00", "model: value 'a\\x00' contains whitespace or control characters"),
        ("model:a\u200bb", "contains whitespace or control characters"),
        ("op:infer", "op: unknown operation 'infer' (known: chat, embed, stream)"),
        ("op:*", "op: unknown operation '*' (known: chat, embed, stream)"),
    ],
)
def test_invalid_scopes_name_the_rule(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_scope(text)


def test_validate_scopes_names_the_index_of_the_first_bad_entry() -> None:
    validate_scopes([])
    validate_scopes(["model:a", "model:b", "op:chat", "task:t"])
    with pytest.raises(ScopeSyntaxError) as info:
        validate_scopes(["op:chat", "foo:x"])
    assert str(info.value) == "scopes[1]: unknown scope kind 'foo' (known: model, op, task)"
    assert (info.value.index, info.value.problem) == (1, "unknown scope kind 'foo' (known: model, op, task)")
    with pytest.raises(ScopeSyntaxError) as info:
        validate_scopes(["op:chat", "model:a", "op:chat"])
    assert str(info.value) == "scopes[2]: duplicate of scopes[0]"


def test_messages_echo_a_bounded_part_of_a_value() -> None:
    with pytest.raises(ValueError, match="unknown scope kind") as info:
        parse_scope("k" * 10_000 + ":v")
    assert len(str(info.value)) < ECHO_CHARS + 80
    with pytest.raises(ValueError, match="more than 128") as info:
        parse_scope("task:" + "y" * 500)
    assert "y" * 100 not in str(info.value)


# ---- the parsed form ----


def test_no_scopes_is_unrestricted() -> None:
    scope = KeyScope.parse([])
    assert scope is UNRESTRICTED
    assert scope.unrestricted
    scope.check_request("embed", "anything")
    scope.check_model("any-model")
    assert scope.allows_model("any-model")


def test_parse_groups_by_kind_and_absent_kinds_do_not_restrict() -> None:
    scope = KeyScope.parse(["model:a", "op:chat", "model:b", "op:stream"])
    assert scope == KeyScope(operations=frozenset({"chat", "stream"}), models=frozenset({"a", "b"}))
    assert scope.tasks is None
    assert not scope.unrestricted
    scope.check_task("whatever")
    scope.check_task("")


def test_operation_check() -> None:
    scope = KeyScope.parse(["op:chat", "op:stream"])
    scope.check_operation("chat")
    scope.check_operation("stream")
    with pytest.raises(PermissionDenied) as info:
        scope.check_operation("embed")
    assert str(info.value) == "key scope does not allow operation 'embed' (allowed: op:chat, op:stream)"
    assert info.value.status is grpc.StatusCode.PERMISSION_DENIED


def test_task_check_alternatives_and_a_missing_task() -> None:
    scope = KeyScope.parse(["task:summarize", "task:translate"])
    scope.check_task("summarize")
    scope.check_task("translate")
    with pytest.raises(PermissionDenied) as info:
        scope.check_task("code")
    assert str(info.value) == (
        "key scope does not allow task 'code' (allowed: task:summarize, task:translate)"
    )
    with pytest.raises(PermissionDenied, match="a request without a task"):
        scope.check_task("")
    with pytest.raises(PermissionDenied) as info:
        scope.check_task("z" * 10_000)
    assert len(str(info.value)) < 200


def test_model_check_and_kinds_combine_with_and() -> None:
    scope = KeyScope.parse(["model:a", "op:chat"])
    assert scope.allows_model("a")
    assert not scope.allows_model("b")
    scope.check_model("a")
    with pytest.raises(PermissionDenied) as info:
        scope.check_model("b")
    assert str(info.value) == "key scope does not allow model 'b' (allowed: model:a)"
    scope.check_request("chat", "any task")
    with pytest.raises(PermissionDenied, match="operation 'stream'"):
        scope.check_request("stream", "any task")


def test_star_is_not_special() -> None:
    scope = KeyScope.parse(["model:*"])
    assert scope.allows_model("*")
    assert not scope.allows_model("a")


def test_a_scope_the_node_does_not_understand_refuses_everything() -> None:
    scope = KeyScope.parse(["op:chat", "region:eu"])
    assert scope.invalid
    assert not scope.unrestricted
    for check in (
        lambda: scope.check_operation("chat"),
        lambda: scope.check_task(""),
        lambda: scope.check_model("a"),
    ):
        with pytest.raises(PermissionDenied) as info:
            check()
        assert "key scope 'region:eu' is not understood by this node" in str(info.value)
        assert "unknown scope kind 'region'" in str(info.value)
    assert not scope.allows_model("a")
    assert KeyScope.parse(["op:infer"]).invalid


def test_allowed_lists_are_bounded() -> None:
    scope = KeyScope.parse([f"model:{'m' * 120}{i:03d}" for i in range(200)])
    with pytest.raises(PermissionDenied) as info:
        scope.check_model("other")
    assert "and 192 more" in str(info.value)
    assert len(str(info.value)) < 1000


# ---- the candidate filter ----


def _candidates(*aliases: str) -> tuple[Candidate, ...]:
    provider = ProviderConfig(id="p", name="sim", type="simulated", base_url="http://127.0.0.1:9/v1")
    out = []
    for alias in aliases:
        for n in (1, 2):
            deployment = DeploymentConfig(f"d-{alias}-{n}", "p", f"{alias}-up-{n}")
            model = ModelConfig(id=f"m-{alias}", alias=alias, capabilities=frozenset({Capability.CHAT}))
            out.append(Candidate(model, deployment, provider))
    return tuple(out)


def test_within_scope_keeps_order_and_drops_each_model_once() -> None:
    ordered = _candidates("b", "a", "c")
    kept, dropped = within_scope(KeyScope.parse(["model:a", "model:c"]), ordered)
    assert [c.deployment.id for c in kept] == ["d-a-1", "d-a-2", "d-c-1", "d-c-2"]
    assert dropped == (("b", f"{OUT_OF_SCOPE} (model:a, model:c)"),)


def test_within_scope_without_model_scopes_keeps_everything() -> None:
    ordered = _candidates("a", "b")
    assert within_scope(KeyScope.parse(["op:chat"]), ordered) == (ordered, ())
    assert within_scope(UNRESTRICTED, ordered) == (ordered, ())


def test_nothing_in_scope_names_the_scope_and_the_refused_models() -> None:
    scope = KeyScope.parse(["model:a"])
    kept, dropped = within_scope(scope, _candidates("b", "c"))
    assert kept == ()
    error = nothing_in_scope(scope, dropped)
    assert isinstance(error, PermissionDenied)
    assert str(error) == "key scope allows none of the models the policy chose ('b', 'c'; allowed: model:a)"


def test_within_scope_of_a_refused_key_keeps_nothing() -> None:
    scope = KeyScope.parse(["bogus"])
    kept, dropped = within_scope(scope, _candidates("a"))
    assert kept == ()
    assert [alias for alias, _ in dropped] == ["a"]
    assert "not understood" in str(nothing_in_scope(scope, dropped))


# ---- compiled into the snapshot ----


def test_compile_parses_each_key_and_a_bad_scope_refuses_only_that_key() -> None:
    snap = snapshot_pb2.Snapshot(version=1)
    snap.tenants.add(id="t", name="t", active=True)
    for key_id, scopes in (("plain", []), ("scoped", ["op:chat", "model:a"]), ("bad", ["op:chat", "x:y"])):
        snap.api_keys.add(
            id=key_id, tenant_id="t", secret_sha256=hashlib.sha256(key_id.encode()).digest(), scopes=scopes
        )
    config = compile_snapshot(snap, b"\x00" * 32)
    entries = {e.id: e for e in config.api_keys.values()}
    assert entries["plain"].scope is UNRESTRICTED
    assert entries["scoped"].scope == KeyScope(operations=frozenset({"chat"}), models=frozenset({"a"}))
    assert entries["scoped"].scopes == frozenset({"op:chat", "model:a"})
    assert entries["bad"].scope.invalid
    assert "'x:y'" in entries["bad"].scope.invalid
