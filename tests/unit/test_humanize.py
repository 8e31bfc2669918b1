"""Validation errors in user words: paths as written, offending values, did-you-mean, no pydantic
vocabulary (`Input should be`, `tuple`, `ConfigSpec`, `NoneType`, union member names)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from lvm_gateway.config.spec import ConfigSpec
from lvm_gateway.contract.humanize import did_you_mean, humanize
from lvm_gateway.policies.canary_spec import CanaryParams

PYDANTIC_WORDS = ("Input should", "tuple", "ConfigSpec", "VariantSpec", "NoneType", "dict[",
                  "literal[", "function-after", "Extra inputs")  # fmt: skip


def lines(text: str, model: type[BaseModel] = ConfigSpec, prefix: str = "") -> list[str]:
    document: Any = yaml.safe_load(text)
    with pytest.raises(ValidationError) as info:
        model.model_validate(document)
    out = humanize(info.value, document, model, prefix)
    for line in out:
        assert not any(w in line for w in PYDANTIC_WORDS), line
    return out


def test_did_you_mean() -> None:
    known = ["phase1", "phase2", "shadow"]
    assert did_you_mean("phse2", known) == " (did you mean 'phase2'?)"
    assert did_you_mean("PHASE1", known) == " (did you mean 'phase1'?)"
    assert did_you_mean("zzz", known) == ""
    assert did_you_mean(True, ["timeout_ms"]) == ""


def test_types_in_user_words_with_the_value() -> None:
    assert lines("variants: {a: }\nroutes: {}") == [
        "variants.a: must be a mapping, got nothing",
        "routes: must be a list, got a mapping",
    ]
    assert lines("variants: {a: {url: 'http://x', max_connections: 1.5, circuit: 3}}\n"
                 "routes: [{path: /i, policy: a, methods: GET}]") == [
        "variants.a.max_connections: must be a whole number, got 1.5",
        "variants.a.circuit: must be a mapping, got 3",
        'routes[0].methods: must be a list, got "GET" (a string)',
    ]  # fmt: skip


def test_union_members_are_merged_into_one_message_at_the_written_path() -> None:
    assert lines("variants: {a: {url: 'http://x'}}\nroutes: [{path: /i, policy: 5}]") == [
        "routes[0].policy: must be a string or a mapping, got 5"
    ]
    assert lines(
        "variants: {a: {url: 'http://x'}}\nroutes: [{path: /i, policy: a}]\n"
        "rollouts: {r: {route: /i, steps: [x, 10, 100]}}"
    ) == [  # the step validator names every kind of step (pause steps included)
        "rollouts.r.steps[0]: 'x' is not a step: give a percent, 'shadow', {pause: {}} or "
        "{pause: {duration: 1h}}"
    ]


def test_bounds_show_the_offending_value() -> None:
    assert lines("stable: a\ncanary: b\nweight: 150", CanaryParams, "routes[0].policy.canary") == [
        "routes[0].policy.canary.weight: 150 is more than 100 (the maximum)"
    ]
    assert lines("variants: {a: {url: 'http://x', timeout_ms: -1}}\nroutes: []\n"
                 "feedback: {sample_rate: -0.5}") == [
        "variants.a.timeout_ms: -1 must be more than 0",
        "feedback.sample_rate: -0.5 is less than 0 (the minimum)",
    ]  # fmt: skip


def test_unknown_keys_suggest_the_closest_known_one_at_any_depth() -> None:
    assert lines(
        "variants: {a: {url: 'http://x', timout_ms: 3}}\nroutes: [{path: /i, polcy: a}]\n"
        "rollouts: {r: {route: /i, succes: {}, rollback: {p95_ms_mx: 1}}}\nvariant: 1"
    ) == [
        "variants.a.timout_ms: unknown key (did you mean 'timeout_ms'?)",
        "routes[0].policy: missing (required)",
        "routes[0].polcy: unknown key (did you mean 'policy'?)",
        "rollouts.r.rollback.p95_ms_mx: unknown key (did you mean 'p95_ms_max'?)",
        "rollouts.r.succes: unknown key (did you mean 'success'?)",
        "variant: unknown key (did you mean 'variants'?)",
    ]
    assert lines("stable: a\ncanary: b\nsticky: {headr: X}", CanaryParams, "p.canary") == [
        "p.canary.sticky.headr: unknown key (did you mean 'header'?)"
    ]


def test_validator_messages_and_list_indexes() -> None:
    assert lines(
        "variants: {a: {url: 'x'}}\nroutes: [{path: i, policy: a}]\n"
        "rollouts: {r: {route: /i, steps: [10, 5, 100]}}"
    ) == [
        "variants.a: 'x' is not an http(s) URL",
        "routes[0].path: must start with '/'",
        "rollouts.r.steps[1]: must be > 10",
    ]


def test_yaml_booleans_and_numbers_as_names() -> None:
    assert lines("variants: {on: {url: 'http://x'}, 5: {url: 'http://y'}}\nroutes: []") == [
        "variants: the name true must be a string (YAML reads unquoted on/off/yes/no/true/false/"
        "null and numbers as other types: quote it)",
        "variants: the name 5 must be a string (YAML reads unquoted on/off/yes/no/true/false/"
        "null and numbers as other types: quote it)",
    ]
