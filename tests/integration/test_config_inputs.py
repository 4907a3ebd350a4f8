"""``modelrouter config check`` on hostile and mistaken YAML: a clean error, fast, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from router.config import DEFAULT_CONFIG_YAML

# Nine levels of ten aliases: 10**9 strings once expanded ("billion laughs").
ALIAS_BOMB = 'a0: &a0 "lol"\n' + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)
)


def config_check(path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``modelrouter config check PATH`` and return what it did."""
    return subprocess.run(
        [sys.executable, "-m", "router.cli", "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (ALIAS_BOMB, "the configuration expands to more than 100,000 values"),
        ("x: &a [*a]\n", "x[0]: recursive YAML alias"),
        ("server: {port: 1}\nserver: {port: 2}\n", "duplicate key 'server' at line 20"),
        ("server: {max_message_bytes: 3000000000}\n", "server.max_message_bytes: Input should"),
        ("server: {drain_delay_s: 1e400}\n", "server.drain_delay_s: Input should be a finite"),
        ("server: {port: true}\n", "server.port: Input should be a number, not true"),
    ],
)
def test_a_bad_configuration_is_one_clean_error(tmp_path: Path, extra: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(DEFAULT_CONFIG_YAML + extra, encoding="utf-8")
    result = config_check(path)  # an alias bomb would outlast its timeout
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.count(str(path)) == 1  # named once, whoever found the fault


def test_a_model_under_an_unknown_users_home_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    text = DEFAULT_CONFIG_YAML.replace("model: builtin\n", "model: ~nouser/x.model\n")
    path.write_text(text, encoding="utf-8")
    result = config_check(path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "model: '~nouser/x.model': no home directory for '~nouser'" in result.stderr


def test_a_backend_with_a_url_that_is_no_http_url_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    text = DEFAULT_CONFIG_YAML.replace(
        "    kind: demo\n", "    kind: openai\n    base_url: x:8000\n"
    )
    path.write_text(text, encoding="utf-8")
    result = config_check(path)
    assert result.returncode == 1
    assert "backends.demo.base_url: 'x:8000' is not http://HOST[:PORT][/PATH]" in result.stderr
