"""Keyword and phrase rules: read and check a rules file (router/models/rules.yaml)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from router._fastpath_py import phrase_hash
from router.fastpath import LEVELS
from router.model import Rule

MAX_RULES = 64
MAX_PHRASE_TOKENS = 6


class RulesError(ValueError):
    """The rules file is malformed; the message names the rule and field."""


def default_rules_path() -> Path:
    """Return the path of the rules the shipped model is trained with."""
    return Path(str(resources.files("router") / "models" / "rules.yaml"))


def parse_rules(data: Any, where: str = "rules") -> tuple[Rule, ...]:
    """Return the rules of a parsed rules file, checking every field."""
    if not isinstance(data, dict) or data.get("version") != 1:
        raise RulesError(f"{where}: expected a mapping with 'version: 1' and 'rules'")
    items = data.get("rules")
    if not isinstance(items, list) or not items:
        raise RulesError(f"{where}: rules: expected a non-empty list")
    if len(items) > MAX_RULES:
        raise RulesError(f"{where}: rules: at most {MAX_RULES} rules, got {len(items)}")
    rules: list[Rule] = []
    for i, item in enumerate(items):
        at = f"{where}: rules[{i}]"
        if not isinstance(item, dict) or set(item) - {"name", "level", "phrases"}:
            raise RulesError(f"{at}: expected the keys name, level, phrases")
        name, level, phrases = item.get("name"), item.get("level"), item.get("phrases")
        if not isinstance(name, str) or not name or name in {r.name for r in rules}:
            raise RulesError(f"{at}.name: missing, not a string, or a duplicate")
        if level is not None and (
            isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < LEVELS
        ):
            raise RulesError(f"{at}.level: must be an integer 0-{LEVELS - 1} or absent")
        if not isinstance(phrases, list) or not phrases:
            raise RulesError(f"{at}.phrases: expected a non-empty list of strings")
        for j, phrase in enumerate(phrases):
            if not isinstance(phrase, str):
                raise RulesError(f"{at}.phrases[{j}]: not a string")
            try:
                _, tokens = phrase_hash(phrase, 0)
            except ValueError:
                raise RulesError(f"{at}.phrases[{j}]: {phrase!r} has no tokens") from None
            if tokens > MAX_PHRASE_TOKENS:
                raise RulesError(
                    f"{at}.phrases[{j}]: {phrase!r} has {tokens} tokens "
                    f"(at most {MAX_PHRASE_TOKENS})"
                )
        rules.append(Rule(name, tuple(phrases), level))
    return tuple(rules)


def load_rules(path: str | Path | None = None) -> tuple[Rule, ...]:
    """Read a rules file (default: the shipped rules)."""
    path = Path(path) if path is not None else default_rules_path()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RulesError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise RulesError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise RulesError(f"{path}: not valid YAML: nested too deeply") from None
    return parse_rules(data, str(path))
