"""Rules files: the shipped one loads and fires; every malformed rule is named with its field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.fastpath import LEVELS, FastPath
from router.model import FeaturizerSpec, Rule
from router.training.rules import (
    MAX_PHRASE_TOKENS,
    MAX_RULES,
    RulesError,
    default_rules_path,
    load_rules,
    parse_rules,
)

GOOD: dict[str, Any] = {
    "version": 1,
    "rules": [
        {"name": "code", "level": 3, "phrases": ["stack trace", "```"]},
        {"name": "plain", "phrases": ["hello"]},
    ],
}


def test_parse_good_rules() -> None:
    assert parse_rules(GOOD) == (
        Rule("code", ("stack trace", "```"), 3),
        Rule("plain", ("hello",), None),
    )


def test_the_shipped_rules_load() -> None:
    path = default_rules_path()
    assert path.name == "rules.yaml" and path.is_file()
    rules = load_rules()
    assert rules == load_rules(path)
    assert 1 <= len(rules) <= MAX_RULES
    assert len({r.name for r in rules}) == len(rules)
    assert all(r.level is None or 0 <= r.level < LEVELS for r in rules)
    assert all(r.phrases for r in rules)


@pytest.mark.parametrize(
    ("text", "fired"),
    [
        ("Review this contract clause for compliance issues", {"legal"}),
        ("Analyze this error log and suggest a fix", {"analysis", "error_log"}),
        ("Here is the Stack  Trace of my python script", {"error_log", "code", "code_request"}),
        ("What are your business hours?", set()),
    ],
)
def test_the_shipped_rules_fire_on_the_product_examples(text: str, fired: set[str]) -> None:
    rules = load_rules()
    fastpath = FeaturizerSpec(buckets_log2=8, rules=rules).fastpath(implementation=FastPath)
    mask = fastpath.features(text)[2]
    assert {r.name for i, r in enumerate(rules) if mask >> i & 1} == fired


def test_load_rules_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(GOOD), encoding="utf-8")
    assert load_rules(path) == parse_rules(GOOD)


def test_a_missing_rules_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match=r"absent\.yaml: cannot read"):
        load_rules(tmp_path / "absent.yaml")


def test_a_rules_file_that_is_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nrules: [unclosed\n", encoding="utf-8")
    with pytest.raises(RulesError, match=r"r\.yaml: not valid YAML"):
        load_rules(path)


def test_errors_in_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nrules:\n  - {name: x, phrases: []}\n", encoding="utf-8")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert str(info.value).startswith(f"{path}: rules[0].phrases: ")


def with_rule(index: int, **changes: Any) -> dict[str, Any]:
    """Return GOOD with rule ``index`` changed (a value of ... deletes the key)."""
    data = copy.deepcopy(GOOD)
    for key, value in changes.items():
        if value is ...:
            del data["rules"][index][key]
        else:
            data["rules"][index][key] = value
    return data


MALFORMED: list[tuple[str, Any, str]] = [
    ("not a mapping", ["rules"], "rules: expected a mapping with 'version: 1' and 'rules'"),
    ("no version", {"rules": GOOD["rules"]}, "expected a mapping with 'version: 1'"),
    ("version 2", {**GOOD, "version": 2}, "expected a mapping with 'version: 1'"),
    ("no rules", {"version": 1}, "rules: rules: expected a non-empty list"),
    ("empty rules", {"version": 1, "rules": []}, "rules: expected a non-empty list"),
    ("rules a mapping", {"version": 1, "rules": {"a": 1}}, "rules: expected a non-empty list"),
    (
        "too many rules",
        {"version": 1, "rules": [{"name": f"r{i}", "phrases": ["x"]} for i in range(65)]},
        f"rules: at most {MAX_RULES} rules, got 65",
    ),
    ("rule not a mapping", {"version": 1, "rules": ["code"]}, "rules[0]: expected the keys"),
    ("unknown key", with_rule(1, phrase=["x"]), "rules[1]: expected the keys name, level, phrases"),
    ("no name", with_rule(0, name=...), "rules[0].name: missing, not a string, or a duplicate"),
    ("empty name", with_rule(0, name=""), "rules[0].name: "),
    ("name not a string", with_rule(1, name=3), "rules[1].name: "),
    ("duplicate name", with_rule(1, name="code"), "rules[1].name: missing, not a string, or a dup"),
    ("level too high", with_rule(0, level=5), "rules[0].level: must be an integer 0-4 or absent"),
    ("level negative", with_rule(0, level=-1), "rules[0].level: "),
    ("level a string", with_rule(0, level="3"), "rules[0].level: "),
    ("level a bool", with_rule(0, level=True), "rules[0].level: "),
    ("level a float", with_rule(0, level=2.0), "rules[0].level: "),
    ("no phrases", with_rule(1, phrases=...), "rules[1].phrases: expected a non-empty list"),
    ("empty phrases", with_rule(1, phrases=[]), "rules[1].phrases: expected a non-empty list"),
    ("phrases a string", with_rule(1, phrases="hello"), "rules[1].phrases: expected a non-empty"),
    ("phrase not a string", with_rule(0, phrases=["ok", 7]), "rules[0].phrases[1]: not a string"),
    ("empty phrase", with_rule(0, phrases=["ok", ""]), "rules[0].phrases[1]: '' has no tokens"),
    ("blank phrase", with_rule(1, phrases=[" \t "]), "rules[1].phrases[0]: ' \\t ' has no tokens"),
    (
        "long phrase",
        with_rule(0, phrases=["one two three four five six seven"]),
        f"rules[0].phrases[0]: 'one two three four five six seven' has 7 tokens "
        f"(at most {MAX_PHRASE_TOKENS})",
    ),
    # Punctuation marks are tokens of their own: "a.b.c.d" is seven.
    ("punctuation tokens", with_rule(0, phrases=["a.b.c.d"]), "has 7 tokens"),
]


@pytest.mark.parametrize(
    ("data", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_a_malformed_rule_is_named(data: Any, message: str) -> None:
    with pytest.raises(RulesError) as info:
        parse_rules(data, "rules")
    assert str(info.value).startswith("rules: ")
    assert message in str(info.value)


def test_a_six_token_phrase_is_allowed() -> None:
    (rule,) = parse_rules({"version": 1, "rules": [{"name": "x", "phrases": ["a b c d e f"]}]})
    assert rule.phrases == ("a b c d e f",)
