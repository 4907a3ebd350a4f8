"""Configuration loading: encodings, error key paths, per-tier escalation margins."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import BaseModel

import router.config as config_module
from router.config import (
    DEFAULT_CONFIG_YAML,
    REPLICA_ID_ENV,
    Config,
    ConfigError,
    DemoBackendConfig,
    TenantConfig,
    TierConfig,
    load_config,
    parse_config,
    resolve_replica_id,
)
from router.loading import ConfigSource, load


def default_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG_YAML)
    return data


def test_a_file_that_is_not_utf8_is_a_config_error_naming_path_byte_and_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(DEFAULT_CONFIG_YAML.encode() + "# Zürich\n".encode("latin-1"))
    offset = len(DEFAULT_CONFIG_YAML.encode()) + len(b"# Z")
    line = DEFAULT_CONFIG_YAML.count("\n") + 1
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}: not valid UTF-8: byte 0xfc at offset {offset} (line {line}): "
        "invalid start byte; save the file as UTF-8"
    )


def test_yaml_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("version: 1\nx: " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"deep\.yaml: not valid YAML: nested too deeply$"):
        load_config(path)


def test_a_utf8_file_with_non_ascii_text_loads(tmp_path: Path) -> None:
    path = tmp_path / "utf8.yaml"
    path.write_text(DEFAULT_CONFIG_YAML + "# Zürich ✓\n", encoding="utf-8")
    assert load_config(path).tiers[0].name == "cheap"


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, environ={})
    return str(caught.value)


def test_error_paths_index_lists_and_drop_the_backend_union_tag() -> None:
    data = default_data()
    data["tiers"][1]["price"]["input_per_mtok"] = -1
    data["tiers"][2]["gate"] = {"window_tokens": 0}
    data["backends"]["demo"]["tokens_per_second"] = 0
    data["backends"]["remote"] = {"kind": "openai", "base_url": "http://x", "retries": 2}
    assert error_of(data).split("; ") == [
        "tiers[1].price.input_per_mtok: Input should be greater than or equal to 0",
        "tiers[2].gate.window_tokens: Input should be greater than or equal to 1",
        "backends.demo.tokens_per_second: Input should be greater than 0",
        "backends.remote.retries: unknown key",
    ]


def test_a_backend_named_like_a_kind_keeps_its_name_in_the_path() -> None:
    data = default_data()
    data["backends"] = {"openai": {"kind": "demo", "first_token_ms": -1}}
    for tier in data["tiers"]:
        tier["backend"] = "openai"
    assert (
        error_of(data)
        == "backends.openai.first_token_ms: Input should be greater than or equal to 0"
    )


def test_whole_config_checks_print_their_own_path_only() -> None:
    data = default_data()
    data["tiers"][2]["backend"] = "nowhere"
    assert error_of(data) == "tiers[2].backend: unknown backend 'nowhere' (configured: demo)"


def test_a_tier_may_override_the_escalation_margin_but_not_the_cheapest() -> None:
    data = default_data()
    data["routing"] = {"escalation_margin": 0.05}
    data["tiers"][2]["escalation_margin"] = 0.2
    config: Config = parse_config(data, environ={})
    assert [t.escalation_margin for t in config.tiers] == [None, None, 0.2]
    data["tiers"][2]["escalation_margin"] = 1.5
    assert error_of(data) == ("tiers[2].escalation_margin: Input should be less than or equal to 1")
    data["tiers"][2]["escalation_margin"] = 0.2
    data["tiers"][0]["escalation_margin"] = 0.1
    assert error_of(data) == (
        "tiers[0].escalation_margin: the cheapest tier has no threshold to climb to; omit it"
    )


def remote_backends(anthropic_key: str = "ant-key", **openai: Any) -> dict[str, Any]:
    data = default_data()
    data["backends"]["openai"] = {"kind": "openai", "base_url": "https://x/v1", **openai}
    data["backends"]["anthropic"] = {"kind": "anthropic", "api_key": anthropic_key}
    data["tiers"][1]["backend"], data["tiers"][2]["backend"] = "openai", "anthropic"
    return data


NEWLINE_HINT = ", such as the newline a secret file often ends with: remove it"


def test_an_api_key_with_a_control_character_is_rejected_naming_its_path(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    keys = remote_backends(anthropic_key="${ANTHROPIC_API_KEY}", api_key="${OPENAI_API_KEY}")
    path.write_text(yaml.safe_dump(keys))
    # A key read from a secret file with its trailing newline, as `$(cat file)` would not.
    environ = {"OPENAI_API_KEY": "sk-abc123\n", "ANTHROPIC_API_KEY": "ant\r\nkey"}
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=environ)
    assert str(caught.value).split("; ") == [
        "backends.anthropic.api_key: contains a control character (U+000D at position 4 of 8)"
        + NEWLINE_HINT,
        "backends.openai.api_key: contains a control character (U+000A at position 10 of 10)"
        + NEWLINE_HINT,
    ]
    assert "sk-abc123" not in str(caught.value)  # the key itself is never printed
    fine = load_config(path, environ={"OPENAI_API_KEY": "sk-abc123", "ANTHROPIC_API_KEY": "k"})
    assert fine.backends["openai"].api_key == "sk-abc123"  # type: ignore[union-attr]


def test_a_header_with_a_control_character_is_rejected_naming_its_path() -> None:
    data = remote_backends(headers={"x-proxy-auth": "token\n", "x-tab\tbed": "v"})
    message = error_of(data)
    assert message.startswith(
        "backends.openai.headers.x-proxy-auth: contains a control character "
        "(U+000A at position 6 of 6)"
    )
    assert "backends.openai.headers.x-tab\tbed.[key]: contains a control character" in message


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        (
            "tenants",
            {"acme": {"limits": {"burst": 10}}},
            "tenants.acme.limits: burst: set requests_per_s too (burst is the rate's bucket)",
        ),
        (
            "tenants",
            {"acme": {"limits": {"usd_per_day": 0}}},
            "tenants.acme.limits.usd_per_day: Input should be greater than 0",
        ),
        ("tenants", {"acme": {"limit": {}}}, "tenants.acme.limit: unknown key"),
        (
            "limits",
            {"redis_url": "localhost:6379"},
            "limits.redis_url: 'localhost:6379' is not redis://HOST:PORT/DB",
        ),
        (
            "limits",
            {"on_redis_error": "ignore"},
            "limits.on_redis_error: Input should be 'fail_open' or 'fail_closed'",
        ),
        ("server", {"tls": {"cert": "server.crt"}}, "server.tls.key: Field required"),
        ("auth", {"enabled": True, "key": []}, "auth.key: unknown key"),
    ],
)
def test_security_and_limit_keys_are_checked_naming_the_key(
    section: str, value: Any, message: str
) -> None:
    data = default_data()
    data[section] = value
    assert error_of(data).startswith(message)


def test_limits_and_keys_parse() -> None:
    data = default_data()
    data["tenants"] = {
        "acme": {
            "limits": {"requests_per_s": 5, "usd_per_month": 100},
            "target": {"strong_share": 0.3},  # a cost target and limits side by side
        }
    }
    data["limits"] = {"redis_url": "rediss://cache:6380/1", "on_redis_error": "fail_open"}
    data["auth"] = {
        "enabled": True,
        "keys": [{"sha256": "AB" * 32, "tenant": "acme", "methods": ["Route"]}],
    }
    config = parse_config(data, environ={})
    assert config.tenants["acme"].limits.any
    assert config.tenants["acme"].target is not None
    assert config.auth.keys[0].sha256 == "ab" * 32  # digests compare in lower case
    assert not config.tenants.get("default", None)


@pytest.mark.parametrize("replica_id", ["pod-a", "modelrouter-7d9f8c6b5-x2x9q", "3", "h.example_1"])
def test_a_replica_id_in_the_configuration_comes_first(replica_id: str) -> None:
    data = default_data() | {"server": {"replica_id": replica_id}}
    server = parse_config(data, environ={}).server
    environ = {REPLICA_ID_ENV: "from-env"}
    assert resolve_replica_id(server, environ, "host") == (replica_id, "server.replica_id")


def test_an_unset_replica_id_is_the_environment_variable_then_the_host_name() -> None:
    server = parse_config(default_data(), environ={}).server
    assert server.replica_id is None
    environ = {REPLICA_ID_ENV: "pod-b"}
    assert resolve_replica_id(server, environ, "host") == ("pod-b", "$MODELROUTER_REPLICA_ID")
    # Empty is unset, as with ${VAR:-default}.
    assert resolve_replica_id(server, {REPLICA_ID_ENV: ""}, "host-1") == ("host-1", "the host name")


@pytest.mark.parametrize(
    ("replica_id", "problem"),
    [
        ("", "is empty"),
        ("a b", "'a b' is not a replica id"),
        ("pod/1", "'pod/1' is not a replica id"),
        ("pod:1", "'pod:1' is not a replica id"),
        ("pod@1", "'pod@1' is not a replica id"),
        ("-pod", "'-pod' is not a replica id"),
        ("pöd", "'pöd' is not a replica id"),
        ("x" * 254, "is 254 characters long: at most 253"),
    ],
)
def test_a_bad_replica_id_is_refused_naming_the_setting(replica_id: str, problem: str) -> None:
    message = error_of(default_data() | {"server": {"replica_id": replica_id}})
    assert message.startswith(f"server.replica_id: {problem}")
    server = parse_config(default_data(), environ={}).server
    with pytest.raises(ConfigError) as caught:
        resolve_replica_id(server, {REPLICA_ID_ENV: replica_id or " "}, "host")
    shown = problem if replica_id else "' ' is not a replica id"
    assert str(caught.value).startswith(f"server.replica_id: $MODELROUTER_REPLICA_ID {shown}")
    if replica_id:
        with pytest.raises(ConfigError) as caught:
            resolve_replica_id(server, {}, replica_id)
        assert str(caught.value).startswith(
            f"server.replica_id: not set, and the host name {problem}"
        )
        assert str(caught.value).endswith("; set server.replica_id or $MODELROUTER_REPLICA_ID")


@pytest.mark.parametrize(
    ("given", "read"),
    [
        ("::1", "[::1]"),  # gRPC reads a bare IPv6 address's last group as a port
        ("[::1]", "[::1]"),
        ("[fe80::1%eth0]", "[fe80::1%eth0]"),
        ("::", "[::]"),
        ("fe80::1%eth0", "[fe80::1%eth0]"),
        ("127.0.0.1", "127.0.0.1"),
        ("router.internal", "router.internal"),
    ],
)
def test_an_ipv6_host_is_read_in_brackets(given: str, read: str) -> None:
    data = default_data() | {"server": {"host": given, "metrics_host": given}}
    server = parse_config(data, environ={}).server
    assert (server.host, server.metrics_host) == (read, read)


@pytest.mark.parametrize("key", ["host", "metrics_host"])
@pytest.mark.parametrize(
    ("host", "problem"),
    [
        *(
            (bad, "is not a host name or an address")
            for bad in (
                "localhost:50051",
                "127.0.0.1:9464",
                "::1::2",
                "[localhost]",
                "[]",
                "[127.0.0.1]",
            )
        ),
        ("::1%lo", "a scope id (%lo) goes with a link-local address (fe80::/10) only"),
    ],
)
def test_a_host_that_is_no_address_is_refused_naming_the_key(
    key: str, host: str, problem: str
) -> None:
    message = error_of(default_data() | {"server": {key: host}})
    assert message.startswith(f"server.{key}: {host!r}")
    assert problem in message


def test_an_empty_host_is_refused_and_an_empty_metrics_host_is_the_host() -> None:
    message = error_of(default_data() | {"server": {"host": ""}})
    assert message.startswith("server.host: is empty: [::] listens on every address")
    server = parse_config(default_data() | {"server": {"metrics_host": ""}}, environ={}).server
    assert server.metrics_host == ""


def write_config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(DEFAULT_CONFIG_YAML + extra, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "extra",
    [
        "x: &a [*a]\n",  # a list that holds itself
        "x: &a {y: *a}\n",  # a mapping that holds itself
        "x: &a [1, [2, *a]]\n",  # through another list
    ],
)
def test_a_recursive_yaml_alias_is_a_config_error(tmp_path: Path, extra: str) -> None:
    with pytest.raises(ConfigError, match=r"^x(\.y|\[1\]\[1\]|\[0\]): recursive YAML alias"):
        load_config(write_config(tmp_path, extra))


def test_an_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    # Billion laughs: nine levels of ten aliases each expand to 10**9 strings.
    lines = ['a0: &a0 "lol"']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    path = write_config(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        "the configuration expands to more than 100,000 values (through YAML aliases?)"
    )


def test_a_config_nested_too_deeply_for_validation_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The YAML parser stops such a file first; a tree it let through is caught still.
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    monkeypatch.setattr(config_module, "read_yaml", lambda text: {"version": 1, "x": deep})
    with pytest.raises(ConfigError, match=r"c\.yaml: nested too deeply$"):
        load_config(write_config(tmp_path, ""))


def test_a_backend_block_shared_through_an_anchor_is_read_for_every_tier(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text(
        """\
version: 1
tiers:
  - {name: cheap, model: m1, backend: one, price: &free {input_per_mtok: 0, output_per_mtok: 0}}
  - {name: strong, model: m2, backend: two, price: *free}
  - {name: expert, model: m3, backend: three, price: *free}
backends:
  one: &remote {kind: openai, base_url: "${BASE_URL}", api_key: "${KEY:-none}"}
  two: *remote
  three:
    <<: *remote
    max_connections: 7
""",
        encoding="utf-8",
    )
    config = load_config(path, environ={"BASE_URL": "http://llm:8000/v1"})
    backends = [config.backends[name] for name in ("one", "two", "three")]
    assert {b.base_url for b in backends} == {"http://llm:8000/v1"}  # type: ignore[union-attr]
    assert {b.api_key for b in backends} == {"none"}  # type: ignore[union-attr]
    assert [b.max_connections for b in backends] == [100, 100, 7]  # type: ignore[union-attr]
    assert config.tiers[0].price == config.tiers[2].price


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "server: {port: 1}\nserver: {port: 2}\n",
            "duplicate key 'server' at line 20 (first at line 19)",
        ),
        (
            "server:\n  port: 1\n  port: 2\n",
            "duplicate key 'port' at line 21 (first at line 20)",
        ),
        ("tiers: []\n", "duplicate key 'tiers' at line 19 (first at line 3)"),
    ],
)
def test_a_duplicate_key_is_a_config_error_naming_key_and_lines(
    tmp_path: Path, extra: str, message: str
) -> None:
    path = write_config(tmp_path, extra)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: {message}"


def test_a_merge_key_may_be_overridden_without_a_duplicate(tmp_path: Path) -> None:
    extra = "server:\n  <<: &base {port: 1, workers: 2}\n  port: 3\n"
    assert load_config(write_config(tmp_path, extra)).server.port == 3


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("server", {"max_message_bytes": 3_000_000_000}, "server.max_message_bytes: Input should"),
        ("server", {"max_prompt_bytes": 2**31}, "server.max_prompt_bytes: Input should be less"),
        ("server", {"max_concurrent_rpcs": 2**32}, "server.max_concurrent_rpcs: Input should be"),
    ],
)
def test_sizes_beyond_what_grpc_and_protobuf_take_are_refused(
    section: str, value: Any, message: str
) -> None:
    assert error_of(default_data() | {section: value}).startswith(message)
    fine = {key: 2**31 - 1 for key in value}
    parse_config(default_data() | {section: fine}, environ={})


INFINITE_OR_NAN = ("inf", "-inf", "nan")


def set_key(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set a dotted key path (a list index as a number) in a parsed configuration."""
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[last] = value
    return data


# Every float field of the configuration, and one value it takes.
FLOAT_KEYS = [
    "tiers.1.price.input_per_mtok",
    "tiers.1.price.output_per_mtok",
    "tiers.1.min_score",
    "tiers.1.escalation_margin",
    "tiers.1.timeouts.connect_s",
    "tiers.1.timeouts.first_token_s",
    "tiers.1.timeouts.idle_s",
    "tiers.1.timeouts.total_s",
    "tiers.1.gate.window_ms",
    "tiers.1.gate.min_mean_logprob",
    "tiers.1.gate.low_logprob",
    "tiers.1.gate.max_low_logprob_share",
    "backends.demo.tokens_per_second",
    "backends.demo.first_token_ms",
    "completion.circuit_breaker.window_s",
    "completion.circuit_breaker.cooldown_s",
    "routing.escalation_margin",
    "routing.context_weight",
    "server.grace_period_s",
    "server.drain_delay_s",
    "store.flush_interval_s",
    "feedback.satisfied_at",
    "logging.rpc_sample",
    "tracing.sample_ratio",
    "tenants.acme.limits.requests_per_s",
    "tenants.acme.limits.usd_per_day",
    "tenants.acme.limits.usd_per_month",
    "tenants.acme.target.strong_share",
    "tenants.acme.target.usd_per_hour",
    "limits.redis_timeout_s",
    "controller.window_s",
    "controller.max_step",
    "controller.min_offset",
    "controller.max_offset",
    "controller.catch_up",
]


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("number", INFINITE_OR_NAN)
def test_an_infinite_or_nan_number_is_refused_naming_the_key(key: str, number: str) -> None:
    data = set_key(default_data(), key, float(number))
    shown = key.replace(".1.", "[1].")
    assert error_of(data).startswith(f"{shown}: Input should be a finite number")
    # The same through an environment variable.
    data = set_key(default_data(), key, "${N}")
    with pytest.raises(ConfigError, match=rf"^{re.escape(shown)}: Input should be a finite"):
        parse_config(data, environ={"N": number})


def test_every_float_field_is_checked_for_infinity() -> None:
    def types_in(annotation: Any) -> list[Any]:
        """Return the types an annotation names, through unions, Annotated and Optional."""
        return [annotation, *(t for arg in get_args(annotation) for t in types_in(arg))]

    def float_fields(model: type[BaseModel], prefix: str) -> set[str]:
        found = set()
        for name, field in model.model_fields.items():
            for arg in types_in(field.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    found |= float_fields(arg, f"{prefix}{name}.")
                elif arg is float:
                    found.add(f"{prefix}{name}")
        return found

    nested: dict[str, type[BaseModel]] = {
        "tiers": TierConfig,
        "tenants": TenantConfig,
        "backends": DemoBackendConfig,
    }
    expected = float_fields(Config, "")
    for key, model in nested.items():
        expected |= float_fields(model, f"{key}.")
    named = {re.sub(r"^(tiers|tenants|backends)\.(1|acme|demo)\.", r"\1.", k) for k in FLOAT_KEYS}
    assert expected == named


@pytest.mark.parametrize(
    ("base_url", "fine"),
    [
        ("localhost:8000", False),
        ("ftp://x", False),
        ("not a url", False),
        ("http://", False),
        ("http://host:port/v1", False),
        ("https://api.example.com/v1", True),
        ("http://localhost:8000", True),
        ("http://[::1]:8000/v1/", True),
    ],
)
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_backend_base_url_must_be_http_or_https(kind: str, base_url: str, fine: bool) -> None:
    data = default_data()
    data["backends"]["demo"] = {"kind": kind, "base_url": base_url}
    if fine:
        assert parse_config(data, environ={}).backends["demo"].base_url == base_url  # type: ignore[union-attr]
    else:
        assert error_of(data).startswith(
            f"backends.demo.base_url: {base_url!r} is not http://HOST[:PORT][/PATH] or https://"
        )


def test_a_base_url_from_an_environment_variable_is_checked_once_substituted() -> None:
    data = default_data()
    data["backends"]["demo"] = {"kind": "openai", "base_url": "${BASE_URL}"}
    config = parse_config(data, environ={"BASE_URL": "http://vllm:8000/v1"})
    assert config.backends["demo"].base_url == "http://vllm:8000/v1"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"^backends\.demo\.base_url: 'vllm:8000'"):
        parse_config(data, environ={"BASE_URL": "vllm:8000"})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("server.port", True),
        ("server.workers", False),
        ("server.max_message_bytes", True),
        ("routing.escalation_margin", True),
        ("tiers.1.price.input_per_mtok", True),
        ("tiers.1.max_tokens", True),
        ("controller.min_offset", False),
        ("tenants.acme.limits.burst", True),
    ],
)
def test_true_or_false_is_no_number(key: str, value: bool) -> None:
    data = set_key(default_data(), key, value)
    if key.endswith("burst"):
        data["tenants"]["acme"]["limits"]["requests_per_s"] = 1
    shown = key.replace(".1.", "[1].")
    assert error_of(data).startswith(f"{shown}: Input should be a number, not {str(value).lower()}")


def test_numbers_from_environment_variables_are_still_read() -> None:
    data = default_data()
    data["server"] = {"port": "${PORT}", "drain_delay_s": "${DRAIN:-1.5}"}
    data["routing"] = {"escalation_margin": "${MARGIN}"}
    config = parse_config(data, environ={"PORT": "8443", "MARGIN": "0.1"})
    assert (config.server.port, config.server.drain_delay_s) == (8443, 1.5)
    assert config.routing.escalation_margin == 0.1
    # Booleans keep their YAML spellings.
    data["routing"] = {"session_floor": "${FLOOR}"}
    environ = {"PORT": "8443", "FLOOR": "false"}
    assert not parse_config(data, environ=environ).routing.session_floor


@pytest.mark.parametrize("key", ["model", "store.path"])
def test_a_path_under_an_unknown_users_home_is_a_config_error_naming_the_key(
    tmp_path: Path, key: str
) -> None:
    path = tmp_path / "c.yaml"
    data = set_key(default_data(), key, "~nouser/x")
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load(ConfigSource(path))
    assert str(caught.value) == f"{key}: '~nouser/x': no home directory for '~nouser'"
