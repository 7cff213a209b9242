"""Policy documents: what compiles, what is refused, and where the error is."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dataplane.config.model import DEFAULT_FALLBACK_ON, Capability, DataClass, ModelConfig, Strategy
from dataplane.errors import PolicyError
from dataplane.policy.compiler import ModelIndex, compile_policy
from dataplane.policy.language import parse_document, schema, validate_document

from .support import model

MODELS: dict[str, ModelConfig] = {
    m.alias: m
    for m in (
        model("sim-fast", ("d1", "p1"), attributes={"family": "sim"}),
        model("sim-smart", ("d2", "p1"), capabilities={Capability.CHAT, Capability.TOOLS}),
        model("gpt-4o", ("d3", "p2"), capabilities={Capability.CHAT, Capability.TOOLS, Capability.VISION}),
        model("llama", ("d4", "p3"), attributes={"family": "llama"}),
    )
}

FULL: dict[str, Any] = {
    "description": "every feature once",
    "default_model": "sim-fast",
    "allowed_models": ["sim-fast", "sim-smart", "gpt-4o", "llama"],
    "constraints": {
        "max_cost_usd": 0.05,
        "regions": ["eu-west-1"],
        "certification_required_from": "confidential",
    },
    "retry": {
        "max_attempts": 4,
        "backoff_base_ms": 50,
        "backoff_cap_ms": 400,
        "fallback_on": ["server_error"],
        "hedge": {"after_ms": 250, "max_extra": 1},
    },
    "rules": [
        {
            "name": "canary",
            "match": {
                "tiers": ["gold"],
                "tasks": ["chat"],
                "metadata": {"env": "prod", "app": ["a", "b"]},
                "capabilities": ["tools"],
                "data_classification": ["internal", "unspecified"],
                "regions": ["eu-west-1"],
                "jurisdictions": ["EU"],
            },
            "strategy": "weighted",
            "weights": {"gpt-4o": 90, "sim-smart": 10},
            "sticky_key": "metadata.user_id",
            "fallbacks": ["sim-fast"],
            "shadow": {"model": "llama", "share": 0.05},
            "constraints": {"max_latency_ms": 3000, "allow_egress": True},
            "retry": {"fallback_on": ["server_error", "content_filtered"]},
        },
        {
            "name": "cheap",
            "select": {"capabilities": ["chat"], "attributes": {"family": ["sim", "llama"]}},
            "strategy": "cheapest",
        },
        {"models": ["gpt-4o", "sim-smart"], "strategy": "latency"},
    ],
}


def compile_doc(doc: Any, *, whole_registry: bool = True) -> Any:
    """Compile ``doc``; unless ``whole_registry`` is False, a document without
    ``allowed_models`` is given the whole registry explicitly (absent, a policy may use
    its default model only), so the cases below test what they name."""
    if whole_registry and isinstance(doc, dict) and "allowed_models" not in doc:
        doc = {**doc, "allowed_models": list(MODELS)}
    return compile_policy(doc, MODELS, policy_id="pol", tenant_id="t1", version=7)


def test_without_allowed_models_a_policy_may_use_only_its_default_model() -> None:
    compiled = compile_doc({"default_model": "sim-smart"}, whole_registry=False)
    assert compiled.allowed_models == frozenset({"sim-smart"})
    assert compiled.default_rule is not None
    assert [p.model.alias for p in compiled.default_rule.candidates] == ["sim-smart"]
    with pytest.raises(PolicyError) as caught:
        compile_doc({"default_model": "sim-fast", "rules": [{"models": ["gpt-4o"]}]}, whole_registry=False)
    assert caught.value.path == "$.rules[0].models[0]"
    assert "'gpt-4o' is not in allowed_models" in caught.value.message
    with pytest.raises(PolicyError) as caught:
        compile_doc(
            {"default_model": "sim-fast", "rules": [{"select": {"capabilities": ["vision"]}}]},
            whole_registry=False,
        )
    assert caught.value.path == "$.rules[0].select"


@pytest.mark.parametrize(
    "document", [{}, {"rules": [{"models": ["sim-fast"]}]}, {"constraints": {"regions": ["eu"]}}]
)
def test_a_policy_naming_no_models_is_refused(document: dict[str, Any]) -> None:
    with pytest.raises(PolicyError) as caught:
        compile_doc(document, whole_registry=False)
    assert caught.value.path == "$.allowed_models"
    assert "required when there is no default_model" in caught.value.message
    with pytest.raises(PolicyError) as caught:
        compile_doc({**document, "allowed_models": []}, whole_registry=False)
    assert caught.value.path == "$.allowed_models"
    assert "must name at least one model" in caught.value.message


def test_the_demo_policy_still_compiles() -> None:
    compiled = compile_doc({"default_model": "sim-fast", "allowed_models": ["sim-fast", "sim-smart"]})
    assert compiled.default_model == "sim-fast"
    assert compiled.allowed_models == frozenset({"sim-fast", "sim-smart"})
    assert compiled.default_rule is not None
    assert [p.model.alias for p in compiled.default_rule.candidates] == ["sim-fast", "sim-smart"]


def test_every_feature_compiles_and_validates() -> None:
    validate_document(FULL)
    compiled = compile_doc(FULL)
    canary, cheap, latency = compiled.rules
    assert canary.strategy is Strategy.WEIGHTED
    assert [p.model.alias for p in canary.candidates] == ["gpt-4o", "sim-smart"]
    assert canary.cumulative_weights == pytest.approx((0.9, 1.0))
    assert [p.model.alias for p in canary.fallbacks] == ["sim-fast"]
    assert canary.shadow is not None
    assert canary.shadow.model.model.alias == "llama"
    assert canary.match.data_classes == frozenset({DataClass.INTERNAL, DataClass.UNSPECIFIED})
    # Rule constraints override the policy's field by field.
    assert canary.constraints.max_latency_ms == 3000
    assert canary.constraints.max_cost_nanos == 50_000_000
    assert canary.constraints.regions == frozenset({"eu-west-1"})
    assert canary.retry.fallback_on == frozenset({"server_error", "content_filtered"})
    assert canary.retry.max_attempts == 4
    assert (canary.retry.hedge_after_ms, canary.retry.hedge_max_extra) == (250, 1)
    assert [p.model.alias for p in cheap.candidates] == ["llama", "sim-fast"]
    assert latency.name == "rules[2]"
    assert latency.strategy is Strategy.LATENCY


def test_defaults_make_content_filter_fallback_opt_in() -> None:
    compiled = compile_doc({"rules": [{"models": ["sim-fast"]}]})
    assert compiled.rules[0].retry.fallback_on == DEFAULT_FALLBACK_ON
    assert "content_filtered" not in DEFAULT_FALLBACK_ON


def test_equal_constraints_are_shared_between_tenants() -> None:
    # Policies compiled against one registry index share equal values: 10,000 tenants
    # written from a few templates keep a few objects alive.
    doc = {
        "allowed_models": ["sim-fast"],
        "constraints": {"regions": ["eu-west-1"]},
        "rules": [{"models": ["sim-fast"]}],
    }
    index = ModelIndex(MODELS)
    a = compile_policy(doc, MODELS, policy_id="a", tenant_id="a", version=1, index=index)
    b = compile_policy(
        json.loads(json.dumps(doc)), MODELS, policy_id="b", tenant_id="b", version=1, index=index
    )
    assert a.rules[0].constraints is b.rules[0].constraints


INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    # (case, document, path, message fragment)
    ("unknown top field", {"routes": []}, "$.routes", "unknown field"),
    (
        "unknown rule field",
        {"rules": [{"models": ["sim-fast"], "colour": "red"}]},
        "$.rules[0].colour",
        "unknown field",
    ),
    (
        "unknown match field",
        {"rules": [{"models": ["sim-fast"], "match": {"planet": ["mars"]}}]},
        "$.rules[0].match.planet",
        "unknown field",
    ),
    (
        "unknown constraint",
        {"constraints": {"max_tokens": 5}},
        "$.constraints.max_tokens",
        "unknown field",
    ),
    ("unknown default model", {"default_model": "gpt-5"}, "$.default_model", "unknown model"),
    (
        "unknown rule model",
        {"rules": [{"models": ["sim-fast", "gpt-5"]}]},
        "$.rules[0].models[1]",
        "unknown model",
    ),
    (
        "unknown fallback model",
        {"rules": [{"models": ["sim-fast"]}, {"models": ["sim-fast"], "fallbacks": ["nope"]}]},
        "$.rules[1].fallbacks[0]",
        "unknown model",
    ),
    (
        "model outside allowed_models",
        {"allowed_models": ["sim-fast"], "rules": [{"models": ["gpt-4o"]}]},
        "$.rules[0].models[0]",
        "not in allowed_models",
    ),
    (
        "negative weight",
        {"rules": [{"strategy": "weighted", "weights": {"gpt-4o": -1, "sim-fast": 1}}]},
        "$.rules[0].weights.gpt-4o",
        "",
    ),
    (
        "weight not a number",
        {"rules": [{"strategy": "weighted", "weights": {"gpt-4o": "ninety"}}]},
        "$.rules[0].weights.gpt-4o",
        "",
    ),
    (
        "weight for an unknown model",
        {"rules": [{"strategy": "weighted", "weights": {"gpt-5": 1}}]},
        "$.rules[0].weights.gpt-5",
        "unknown model",
    ),
    (
        "weights on a priority rule",
        {"rules": [{"models": ["sim-fast"], "weights": {"sim-fast": 1}}]},
        "$.rules[0].weights",
        "",
    ),
    (
        "weighted rule without weights",
        {"rules": [{"strategy": "weighted", "models": ["sim-fast"]}]},
        "$.rules[0].weights",
        "needs weights",
    ),
    (
        "unknown strategy",
        {"rules": [{"models": ["sim-fast"], "strategy": "random"}]},
        "$.rules[0].strategy",
        "",
    ),
    (
        "zero attempts",
        {"retry": {"max_attempts": 0}},
        "$.retry.max_attempts",
        "",
    ),
    (
        "unknown error kind",
        {"retry": {"fallback_on": ["server_error", "solar_flare"]}},
        "$.retry.fallback_on[1]",
        "",
    ),
    (
        "shadow share above one",
        {"rules": [{"models": ["sim-fast"], "shadow": {"model": "llama", "share": 1.5}}]},
        "$.rules[0].shadow.share",
        "",
    ),
    (
        "unknown capability",
        {"rules": [{"models": ["sim-fast"], "match": {"capabilities": ["telepathy"]}}]},
        "$.rules[0].match.capabilities[0]",
        "",
    ),
    (
        "unknown data classification",
        {"rules": [{"models": ["sim-fast"], "match": {"data_classification": ["secret"]}}]},
        "$.rules[0].match.data_classification[0]",
        "",
    ),
    (
        "bad sticky key",
        {"rules": [{"strategy": "weighted", "weights": {"sim-fast": 1}, "sticky_key": "cookie"}]},
        "$.rules[0].sticky_key",
        "",
    ),
    (
        # "$" in a pattern also matches before a trailing newline; the schema's anchor does not.
        "sticky key with a trailing newline",
        {"rules": [{"strategy": "weighted", "weights": {"sim-fast": 1}, "sticky_key": "metadata.user\n"}]},
        "$.rules[0].sticky_key",
        "",
    ),
    ("rules not a list", {"rules": {"models": ["sim-fast"]}}, "$.rules", ""),
    (
        "shadow without a model",
        {"rules": [{"models": ["sim-fast"], "shadow": {"share": 0.1}}]},
        "$.rules[0].shadow.model",
        "required",
    ),
    (
        "hedge without after_ms",
        {"retry": {"hedge": {"max_extra": 1}}},
        "$.retry.hedge.after_ms",
        "required",
    ),
    ("hedge after zero ms", {"retry": {"hedge": {"after_ms": 0}}}, "$.retry.hedge.after_ms", ""),
    (
        "too many hedges in a rule",
        {"rules": [{"models": ["sim-fast"], "retry": {"hedge": {"after_ms": 300, "max_extra": 9}}}]},
        "$.rules[0].retry.hedge.max_extra",
        "between 0 and 3",
    ),
    (
        "unknown hedge field",
        {"retry": {"hedge": {"after_ms": 300, "delay_ms": 5}}},
        "$.retry.hedge.delay_ms",
        "unknown field",
    ),
    ("hedge not an object", {"retry": {"hedge": 300}}, "$.retry.hedge", "object"),
    (
        "hedge after_ms not an integer",
        {"retry": {"hedge": {"after_ms": "300ms"}}},
        "$.retry.hedge.after_ms",
        "",
    ),
    ("wrong type", {"allowed_models": "sim-fast"}, "$.allowed_models", ""),
    ("negative cost", {"constraints": {"max_cost_usd": -1}}, "$.constraints.max_cost_usd", ""),
]


@pytest.mark.parametrize(
    ("document", "path", "fragment"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_the_compiler_refuses_with_the_path(document: dict[str, Any], path: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as caught:
        compile_doc(document)
    assert caught.value.path == path
    assert fragment in caught.value.message


SCHEMA_CASES = [c for c in INVALID if "unknown model" not in c[3] and "allowed_models" not in c[3]]


@pytest.mark.parametrize(
    ("document", "path"),
    [(c[1], c[2]) for c in SCHEMA_CASES if c[0] not in ("weight for an unknown model",)],
    ids=[c[0] for c in SCHEMA_CASES if c[0] not in ("weight for an unknown model",)],
)
def test_the_schema_refuses_what_the_compiler_refuses_at_the_same_path(
    document: dict[str, Any], path: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        validate_document(document)
    assert caught.value.path == path


def test_hedging_compiles_into_the_retry_settings_and_rules_inherit_or_override_it() -> None:
    compiled = compile_doc(
        {
            "retry": {"max_attempts": 3, "hedge": {"after_ms": 300}},
            "rules": [
                {"name": "inherits", "models": ["sim-fast"], "retry": {"backoff_base_ms": 10}},
                {
                    "name": "faster",
                    "models": ["sim-fast"],
                    "retry": {"hedge": {"after_ms": 50, "max_extra": 2}},
                },
                {"name": "off", "models": ["sim-fast"], "retry": {"hedge": {"after_ms": 50, "max_extra": 0}}},
            ],
        }
    )
    assert (compiled.retry.hedge_after_ms, compiled.retry.hedge_max_extra) == (300, 1)
    inherits, faster, off = compiled.rules
    assert (inherits.retry.hedge_after_ms, inherits.retry.hedge_max_extra) == (300, 1)
    assert (faster.retry.hedge_after_ms, faster.retry.hedge_max_extra) == (50, 2)
    assert (off.retry.hedge_after_ms, off.retry.hedge_max_extra) == (0, 0)
    assert compile_doc({}).retry.hedge_max_extra == 0, "no hedging unless a policy asks"


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"retry": {"max_attempts": 1, "hedge": {"after_ms": 100}}}, "$.retry.hedge"),
        (
            {
                "retry": {"hedge": {"after_ms": 100}},
                "rules": [{"models": ["sim-fast"], "retry": {"max_attempts": 1}}],
            },
            "$.rules[0].retry.max_attempts",
        ),
    ],
)
def test_a_hedge_that_could_never_start_is_refused(document: dict[str, Any], path: str) -> None:
    validate_document(document)  # the schema cannot tell; the compiler, run at apply time too, can
    with pytest.raises(PolicyError) as caught:
        compile_doc(document)
    assert caught.value.path == path
    assert "max_attempts of at least 2" in caught.value.message


def test_duplicate_rule_names_are_refused() -> None:
    with pytest.raises(PolicyError) as caught:
        compile_doc({"rules": [{"name": "a", "models": ["sim-fast"]}, {"name": "a", "models": ["llama"]}]})
    assert caught.value.path == "$.rules[1].name"


def test_a_selection_that_matches_nothing_is_refused() -> None:
    with pytest.raises(PolicyError) as caught:
        compile_doc({"rules": [{"select": {"capabilities": ["embeddings"]}}]})
    assert caught.value.path == "$.rules[0].select"


def test_all_zero_weights_are_refused() -> None:
    with pytest.raises(PolicyError) as caught:
        compile_doc({"rules": [{"strategy": "weighted", "weights": {"sim-fast": 0, "llama": 0}}]})
    assert caught.value.path == "$.rules[0].weights"


def test_the_published_schema_is_draft_2020_12() -> None:
    from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema())


def test_policy_text_parses_as_yaml_or_json() -> None:
    yaml_text = "default_model: sim-fast\nallowed_models: [sim-fast, sim-smart]\n"
    json_text = '{"default_model": "sim-fast", "allowed_models": ["sim-fast", "sim-smart"]}'
    assert parse_document(yaml_text) == parse_document(json_text)
    with pytest.raises(PolicyError) as caught:
        parse_document("rules: [unclosed")
    assert caught.value.path == "$"


def test_the_readme_example_validates_and_compiles() -> None:
    import re
    from pathlib import Path

    import dataplane.routing

    readme = Path(dataplane.routing.__file__).with_name("README.md").read_text("utf-8")
    match = re.search(r"```yaml\n(.*?)```", readme, re.DOTALL)
    assert match is not None
    document = parse_document(match.group(1))
    validate_document(document)
    registry = {
        m.alias: m
        for m in (
            model("sim-fast", ("d1", "p1")),
            model("sim-smart", ("d2", "p1")),
            model("gpt-4o", ("d3", "p2"), capabilities={Capability.CHAT, Capability.TOOLS}),
            model(
                "llama-3",
                ("d4", "p3"),
                capabilities={Capability.CHAT, Capability.JSON_SCHEMA},
                attributes={"family": "llama"},
            ),
        )
    }
    compiled = compile_policy(document, registry, policy_id="readme", tenant_id="t", version=1)
    assert [r.name for r in compiled.rules] == ["canary", "cheap-extraction"]
    assert [p.model.alias for p in compiled.rules[1].candidates] == ["llama-3"]
