"""The service configuration: typed, frozen, validated models and the YAML loader.

A typo in a key is an error that names the key, never a silent default. The YAML file
carries ``version: 1`` and may use ``${ENV_VAR}`` / ``${ENV_VAR:-default}`` anywhere in
a string value (for API keys and hosts).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from router.validation import MAX_TENANT_CHARS

CONFIG_VERSION = 1
# The controller's offset limits may not exceed this many logits (router/controller.py).
MAX_OFFSET = 20.0
# The tenant a request without a tenant field belongs to.
DEFAULT_TENANT = "default"
MIN_TIERS = 2
MAX_TIERS = 5
# The ModelRouter methods an API key can be allowed to call (auth.keys[].methods).
RPC_METHODS = ("Route", "RouteBatch", "Complete", "Feedback", "GetConfig", "GetStats")
# A replica id (server.replica_id): what the controllers' state keys carry, so that every
# replica sharing a store keeps its own. Letters, digits, ".", "_" and "-" (a host name, a
# Kubernetes pod name), starting with a letter or digit: never the "/" or ":" that end it
# in a key (router/store/stats.py).
REPLICA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_REPLICA_ID_CHARS = 253
# The environment variable server.replica_id defaults to (then the host name).
REPLICA_ID_ENV = "MODELROUTER_REPLICA_ID"
# The largest size gRPC's channel options take (a C int), and the bound of the sizes
# GetConfig reports in uint32 fields.
MAX_INT32 = 2**31 - 1
# The values (mappings, lists, scalars) a configuration may hold once YAML aliases are
# expanded: far beyond any real file, far below an alias bomb ("billion laughs").
MAX_CONFIG_VALUES = 100_000


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key."""


class _Frozen(BaseModel):
    # No float is infinite or NaN: a drain delay of 1e400 would never end.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _not_bool(value: Any) -> Any:
    """Refuse true and false where a number is read (pydantic would read them as 1 and 0).

    A number from ``${VAR}`` arrives as a string and is read as before.
    """
    if isinstance(value, bool):
        raise ValueError(f"Input should be a number, not {str(value).lower()}")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]
NonNegative = Annotated[Float, Field(ge=0)]
Positive = Annotated[Float, Field(gt=0)]


def _no_control_character(value: str) -> str:
    """Reject a string that cannot go into an HTTP header as it is (the value is not shown)."""
    for position, char in enumerate(value, start=1):
        if unicodedata.category(char) == "Cc":
            raise ValueError(
                f"contains a control character (U+{ord(char):04X} at position {position} of "
                f"{len(value)}), such as the newline a secret file often ends with: remove it"
            )
    return value


# An API key or a header: sent in HTTP headers, where a newline would fail every request.
HeaderText = Annotated[str, AfterValidator(_no_control_character)]


class PriceConfig(_Frozen):
    """US dollars per million tokens."""

    input_per_mtok: NonNegative
    output_per_mtok: NonNegative


class TimeoutsConfig(_Frozen):
    """Per-attempt time limits, in seconds."""

    connect_s: Positive = 5.0
    first_token_s: Positive = 30.0
    idle_s: Positive = 30.0
    total_s: Positive = 300.0


class GateConfig(_Frozen):
    """The pre-commit confidence gate of a tier.

    The first ``window_tokens`` tokens (or ``window_ms`` milliseconds, whichever ends
    first) are held back and judged before any text reaches the caller.
    """

    window_tokens: Annotated[Int, Field(ge=1, le=256)] = 8
    window_ms: Positive = 400.0
    min_mean_logprob: Float = Field(default=-2.5, le=0)
    low_logprob: Float = Field(default=-5.0, le=0)
    max_low_logprob_share: Annotated[Float, Field(ge=0, le=1)] = 0.34
    min_chars: Annotated[Int, Field(ge=0)] = 1


class TierConfig(_Frozen):
    """One model tier. Tiers are listed cheapest first."""

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    model: Annotated[str, Field(min_length=1)]
    backend: Annotated[str, Field(min_length=1)]
    price: PriceConfig
    min_score: Annotated[Float, Field(ge=0, le=1)] | None = None
    # Overrides routing.escalation_margin below this tier's threshold; the cheapest tier
    # has no threshold, so no margin of its own.
    escalation_margin: Annotated[Float, Field(ge=0, le=1)] | None = None
    max_tokens: Annotated[Int, Field(ge=1)] = 1024
    timeouts: TimeoutsConfig = TimeoutsConfig()
    gate: GateConfig | None = None


def is_http_url(url: str, *, path: bool = True) -> bool:
    """Return whether ``url`` is http:// or https:// with a host (and a path when ``path``)."""
    if any(char.isspace() for char in url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError:
        return False
    if not url.startswith(("http://", "https://")) or not parts.hostname:
        return False
    return path or (parts.path in ("", "/") and not parts.query and not parts.fragment)


def _base_url(url: str) -> str:
    """Check a backend's base URL: http:// or https://, a host, an optional port and path."""
    if not is_http_url(url):
        raise ValueError(
            f"{url[:128]!r} is not http://HOST[:PORT][/PATH] or https://HOST[:PORT][/PATH]"
        )
    return url


# Where a backend's API is: checked when the file is read, not at the first request.
BaseUrl = Annotated[str, AfterValidator(_base_url)]


class OpenAIBackendConfig(_Frozen):
    """Any OpenAI-compatible chat-completions endpoint."""

    kind: Literal["openai"]
    base_url: BaseUrl
    api_key: HeaderText = ""
    max_connections: Annotated[Int, Field(ge=1)] = 100
    headers: dict[HeaderText, HeaderText] = {}
    # The request field that carries the token limit: OpenAI's newer models (o-series,
    # GPT-5) reject "max_tokens" and take "max_completion_tokens"; most other
    # OpenAI-compatible servers (vLLM, llama.cpp, Ollama) read "max_tokens".
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"


class AnthropicBackendConfig(_Frozen):
    """Anthropic's Messages API."""

    kind: Literal["anthropic"]
    base_url: BaseUrl = "https://api.anthropic.com"
    api_key: HeaderText = ""
    api_version: str = "2023-06-01"
    max_connections: Annotated[Int, Field(ge=1)] = 100


class DemoBackendConfig(_Frozen):
    """A local backend that streams a short canned, clearly labelled answer."""

    kind: Literal["demo"]
    tokens_per_second: Positive = 200.0
    first_token_ms: NonNegative = 0.0


BackendConfig = Annotated[
    OpenAIBackendConfig | AnthropicBackendConfig | DemoBackendConfig, Field(discriminator="kind")
]


class CircuitBreakerConfig(_Frozen):
    """Skip a backend that failed ``failures`` times within ``window_s`` seconds."""

    failures: Annotated[Int, Field(ge=1)] = 5
    window_s: Positive = 30.0
    cooldown_s: Positive = 15.0


class RoutingConfig(_Frozen):
    """How scores become tiers."""

    # Queries whose score lies within this margin below a tier's threshold go straight to
    # that tier, in Route's decision and in Complete alike (reason MARGIN). A tier's own
    # escalation_margin overrides it.
    escalation_margin: Annotated[Float, Field(ge=0, le=1)] = 0.0
    # Weight of earlier chat turns relative to the last user turn.
    context_weight: Annotated[Float, Field(ge=0, le=1)] = 0.3
    # A request with a session_id never goes to a cheaper tier than its session already
    # used (reason SESSION_FLOOR); a caller's hints.tier and hints.max_tier still win.
    session_floor: bool = True
    # Sessions each worker remembers (the store keeps them all when there is one).
    max_sessions: Annotated[Int, Field(ge=1)] = 100_000


class CompletionConfig(_Frozen):
    max_attempts: Annotated[Int, Field(ge=1, le=MAX_TIERS)] = 3
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()


class TlsConfig(_Frozen):
    """TLS on a port: the server's PEM certificate chain and key, and for mutual TLS a CA bundle.

    Relative paths are taken from the configuration file's directory. SIGHUP re-reads the
    files (certificate rotation) without dropping open connections.
    """

    cert: Annotated[str, Field(min_length=1)]
    key: Annotated[str, Field(min_length=1)]
    # Client certificates must chain to one of these CAs (mutual TLS); empty: no client
    # certificate is asked for.
    client_ca: str = ""


def listen_host(host: str) -> str:
    """Return ``host`` as gRPC's bind address takes it: a bare IPv6 address ("::1") in brackets.

    Raise ValueError for an empty host, and for one with a colon that is no IPv6 address
    ("localhost:50051": the port given in the host), which gRPC would read as a host and a
    port of its own.
    """
    if not host:
        raise ValueError("is empty: [::] listens on every address, or give a name or an address")
    bracketed = host.startswith("[") and host.endswith("]")
    if ":" not in host and not bracketed:
        return host
    address = host[1:-1] if bracketed else host
    try:
        parsed = ipaddress.IPv6Address(address)
    except ValueError:
        raise ValueError(
            f"{host[:64]!r} is not a host name or an address (give the port on its own: "
            "server.port, --port; an IPv6 address with or without brackets: [::1], ::1)"
        ) from None
    if parsed.scope_id and not parsed.is_link_local:
        raise ValueError(
            f"{host[:64]!r}: a scope id (%{parsed.scope_id}) goes with a link-local address "
            "(fe80::/10) only"
        )
    return f"[{address}]"


def _metrics_host(host: str) -> str:
    """Return the metrics port's host as ``listen_host`` does; empty: the gRPC port's host."""
    return host and listen_host(host)


# A host to listen on: a name, an IPv4 address, an IPv6 address (bracketed when read).
ListenHost = Annotated[str, AfterValidator(listen_host)]


class ServerConfig(_Frozen):
    host: ListenHost = "[::]"
    port: Annotated[Int, Field(ge=0, le=65535)] = 50051
    # 0 means one worker per core.
    workers: Annotated[Int, Field(ge=0, le=256)] = 0
    # gRPC's message size options, and GetConfig's uint32 fields, take at most MAX_INT32.
    max_message_bytes: Annotated[Int, Field(ge=1024, le=MAX_INT32)] = 4 * 1024 * 1024
    max_prompt_bytes: Annotated[Int, Field(ge=1, le=MAX_INT32)] = 256 * 1024
    max_concurrent_rpcs: Annotated[Int, Field(ge=1, le=MAX_INT32)] = 1000
    grace_period_s: NonNegative = 10.0
    # On SIGTERM: health turns NOT_SERVING at once, RPCs are still served for this many
    # seconds (load balancers and clients that watch health move away), then new RPCs are
    # refused and in-flight ones get grace_period_s. Kubernetes' preStop pattern; SIGINT
    # (Ctrl-C) and a second SIGTERM skip it.
    drain_delay_s: NonNegative = 0.0
    # Request ids each worker remembers, to answer Feedback's known_request without a
    # store look-up.
    feedback_capacity: Annotated[Int, Field(ge=1)] = 10_000
    # Prometheus metrics over HTTP on their own port (GET /metrics); 0 turns them off.
    metrics_port: Annotated[Int, Field(ge=0, le=65535)] = 9464
    # A plaintext port that serves only grpc.health.v1.Health (no ModelRouter, no
    # reflection), for probes that cannot speak TLS or send an API key (Kubernetes' native
    # gRPC probes); 0 turns it off.
    health_port: Annotated[Int, Field(ge=0, le=65535)] = 0
    # The address of the metrics port; empty: the same as host.
    metrics_host: Annotated[str, AfterValidator(_metrics_host)] = ""
    # TLS (and mutual TLS with client_ca) on the gRPC port; None: plaintext.
    tls: TlsConfig | None = None
    # HTTPS on the metrics port, set apart from tls; None: plain HTTP.
    metrics_tls: TlsConfig | None = None
    # This replica's name among the servers sharing one store (the key of its controllers'
    # states). None: $MODELROUTER_REPLICA_ID, else the host name (a Kubernetes pod's name).
    # Each replica needs its own: leave it unset in a configuration the replicas share.
    replica_id: str | None = None

    @field_validator("replica_id")
    @classmethod
    def _check_replica_id(cls, replica_id: str | None) -> str | None:
        if replica_id is not None:
            problem = replica_id_problem(replica_id)
            if problem:
                raise ValueError(problem)
        return replica_id


def replica_id_problem(replica_id: str) -> str:
    """Return what is wrong with a replica id ("": nothing)."""
    if not replica_id:
        return "is empty: give each replica a name (letters, digits, '.', '_', '-')"
    if len(replica_id) > MAX_REPLICA_ID_CHARS:
        return f"is {len(replica_id)} characters long: at most {MAX_REPLICA_ID_CHARS}"
    if not REPLICA_ID.fullmatch(replica_id):
        return (
            f"{replica_id[:64]!r} is not a replica id: letters, digits, '.', '_' and '-' only, "
            "starting with a letter or digit"
        )
    return ""


def resolve_replica_id(
    server: ServerConfig, environ: Mapping[str, str] | None = None, hostname: str | None = None
) -> tuple[str, str]:
    """Return this server's replica id and where it came from: server.replica_id, else
    $MODELROUTER_REPLICA_ID (when set and not empty), else the host name.

    Raise ConfigError naming the setting when the one in force is not a replica id.
    """
    if server.replica_id is not None:  # validated with the configuration
        return server.replica_id, "server.replica_id"
    environ = os.environ if environ is None else environ
    given = environ.get(REPLICA_ID_ENV, "")
    if given:
        problem = replica_id_problem(given)
        if problem:
            raise ConfigError(f"server.replica_id: ${REPLICA_ID_ENV} {problem}")
        return given, f"${REPLICA_ID_ENV}"
    if hostname is None:
        import socket

        hostname = socket.gethostname()
    problem = replica_id_problem(hostname)
    if problem:
        raise ConfigError(
            f"server.replica_id: not set, and the host name {problem}; set server.replica_id "
            f"or ${REPLICA_ID_ENV}"
        )
    return hostname, "the host name"


class StoreConfig(_Frozen):
    """Where requests, their outcomes and feedback are kept (router/store/)."""

    # A SQLite file (relative to the configuration file), or a PostgreSQL URL
    # (postgresql://user:password@host/db) for several replicas. Neither: the SQLite file
    # in the per-user state directory ($XDG_STATE_HOME/modelrouter/modelrouter.db, else
    # ~/.local/state/modelrouter/modelrouter.db).
    path: Annotated[str, Field(min_length=1)] | None = None
    url: Annotated[str, Field(min_length=1)] | None = None
    # Keep the prompt text (the relabel loop needs it). Off by default: prompts may hold
    # personal data, and a store keeps them until someone deletes them.
    keep_text: bool = False
    # Records waiting to be written; beyond this they are dropped and counted.
    queue_size: Annotated[Int, Field(ge=1)] = 10_000
    batch_size: Annotated[Int, Field(ge=1)] = 500
    # A record waits at most this long before its batch is written.
    flush_interval_s: Positive = 0.5

    @model_validator(mode="after")
    def _check_target(self) -> StoreConfig:
        if self.path is not None and self.url is not None:
            raise ValueError("set path (SQLite) or url (PostgreSQL), not both")
        if self.url is not None and not self.url.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                "url must start with postgresql:// or postgres:// (a SQLite file is path)"
            )
        return self


class FeedbackConfig(_Frozen):
    """How ratings are read."""

    # A rating at or above this counts as a satisfied user (GetStats' satisfaction).
    satisfied_at: Annotated[Float, Field(ge=0, le=1)] = 0.7


class LoggingConfig(_Frozen):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
    # One line per RPC (request id, tenant, method, tier, score, status, duration); off
    # saves its cost on very busy servers. Unexpected errors are logged either way.
    rpc: bool = True
    # The share of successful RPCs whose line is written (0 to 1); errors and Complete
    # calls that escalated are always written.
    rpc_sample: Annotated[Float, Field(ge=0, le=1)] = 1.0


class TracingConfig(_Frozen):
    """OpenTelemetry traces, exported over OTLP/gRPC; off while ``otlp_endpoint`` is empty."""

    # An OTLP/gRPC collector: "http://host:4317" (plaintext) or "https://host:4317".
    otlp_endpoint: str = ""
    # The share of new traces recorded; a caller's traceparent decides for its own trace.
    sample_ratio: Annotated[Float, Field(ge=0, le=1)] = 1.0
    service_name: Annotated[str, Field(min_length=1, max_length=128)] = "modelrouter"

    @field_validator("otlp_endpoint")
    @classmethod
    def _check_endpoint(cls, endpoint: str) -> str:
        if endpoint and not is_http_url(endpoint, path=False):
            raise ValueError(
                f"{endpoint!r} is not http://HOST:PORT or https://HOST:PORT (an OTLP/gRPC "
                "collector)"
            )
        return endpoint

    @property
    def enabled(self) -> bool:
        return bool(self.otlp_endpoint)


TenantName = Annotated[str, Field(min_length=1, max_length=MAX_TENANT_CHARS)]
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ApiKeyConfig(_Frozen):
    """One API key: the SHA-256 digest of the key (never the key), its tenant and methods."""

    # Hex of SHA-256 over the key's UTF-8 bytes (`modelrouter keys new` prints it).
    sha256: str
    tenant: TenantName
    methods: Annotated[
        list[Literal["Route", "RouteBatch", "Complete", "Feedback", "GetConfig", "GetStats"]],
        Field(min_length=1),
    ]

    @field_validator("sha256")
    @classmethod
    def _check_digest(cls, digest: str) -> str:
        digest = digest.strip().lower()
        if not _SHA256_HEX.fullmatch(digest):
            raise ValueError(
                "not a SHA-256 hex digest (64 hex digits): list the digest of each key, never "
                "the key itself (`modelrouter keys new --tenant T` prints both)"
            )
        return digest


class AuthConfig(_Frozen):
    """API keys in ``authorization: Bearer <key>`` metadata; each key names its tenant."""

    enabled: bool = False
    keys: list[ApiKeyConfig] = []
    # Also ask health checks and server reflection for a key (any configured key).
    protect_health: bool = False


class TenantLimitsConfig(_Frozen):
    """A tenant's limits; an unset one does not apply."""

    # Route and Complete calls per second (a token bucket that refills at this rate).
    requests_per_s: Positive | None = None
    # Calls admitted at once after a quiet spell; default: one second's worth.
    burst: Annotated[Int, Field(ge=1)] | None = None
    # Tokens (prompt + completion) of Complete per minute.
    tokens_per_minute: Annotated[Int, Field(ge=1)] | None = None
    # US dollars of Complete (every attempt, at its tier's price) per UTC day and month.
    usd_per_day: Positive | None = None
    usd_per_month: Positive | None = None

    @model_validator(mode="after")
    def _burst_needs_a_rate(self) -> TenantLimitsConfig:
        if self.burst is not None and self.requests_per_s is None:
            raise ValueError("burst: set requests_per_s too (burst is the rate's bucket)")
        return self

    @property
    def any(self) -> bool:
        """Whether any limit is set."""
        return self != TenantLimitsConfig()

    @property
    def burst_in_force(self) -> int | None:
        """Return the calls admitted at once: ``burst``, else one second's worth (None: no rate)."""
        if self.requests_per_s is None:
            return None
        return self.burst or max(1, math.ceil(self.requests_per_s))


class LimitsConfig(_Frozen):
    """Where the tenants' limits keep their counts."""

    # Empty: in this process (each worker counts for itself). redis://HOST:PORT/DB (or
    # rediss:// for TLS): shared by every worker and replica.
    redis_url: str = ""
    # Each call to Redis gives up after this long; the policy below then applies.
    redis_timeout_s: Annotated[Float, Field(gt=0, le=5)] = 0.5
    # While Redis cannot be reached: admit (fail_open) or refuse with UNAVAILABLE
    # (fail_closed). Spend that could not be recorded is added once Redis answers again.
    on_redis_error: Literal["fail_open", "fail_closed"] = "fail_closed"
    # Prefix of every Redis key, so that several deployments can share one Redis.
    key_prefix: Annotated[str, Field(min_length=1, max_length=64)] = "modelrouter"

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        if url and not re.fullmatch(r"(rediss?|unix)://\S+", url):
            raise ValueError(f"{url!r} is not redis://HOST:PORT/DB, rediss://... or unix://PATH")
        return url


class TargetConfig(_Frozen):
    """A tenant's cost target: exactly one of a strong share and a spend rate."""

    # The share of the tenant's requests answered above the cheapest tier.
    strong_share: Annotated[Float, Field(ge=0, le=1)] | None = None
    # US dollars per hour, over the controller's window.
    usd_per_hour: Positive | None = None

    @model_validator(mode="after")
    def _one_target(self) -> TargetConfig:
        if (self.strong_share is None) == (self.usd_per_hour is None):
            raise ValueError("set exactly one of strong_share and usd_per_hour")
        return self


class TenantConfig(_Frozen):
    """What is configured for one tenant (the request's ``tenant`` field, or its key's)."""

    # Held by the online cost controller (``controller``), which moves this tenant's
    # thresholds; without a target the tenant is routed on the configured thresholds.
    target: TargetConfig | None = None
    # Rates and budgets (``limits`` says where they are counted).
    limits: TenantLimitsConfig = TenantLimitsConfig()


class ControllerConfig(_Frozen):
    """How the online cost controller moves a tenant's thresholds (router/controller.py)."""

    # The sliding window: the tenant's last window_requests requests, none older than
    # window_s seconds.
    window_requests: Annotated[Int, Field(ge=10, le=100_000)] = 500
    window_s: Positive = 3600.0
    # No move before the window holds this many requests.
    min_requests: Annotated[Int, Field(ge=1)] = 100
    # Requests between two moves.
    update_every: Annotated[Int, Field(ge=1)] = 25
    # The largest move, and the limits, of the threshold offset (logits).
    max_step: Annotated[Float, Field(gt=0, le=MAX_OFFSET)] = 0.5
    min_offset: Annotated[Float, Field(ge=-MAX_OFFSET, le=0)] = -6.0
    max_offset: Annotated[Float, Field(ge=0, le=MAX_OFFSET)] = 6.0
    # How much of the window's realised error the next requests make up (0 to 2).
    catch_up: Annotated[Float, Field(ge=0, le=2)] = 1.0

    @model_validator(mode="after")
    def _window_holds_min(self) -> ControllerConfig:
        if self.min_requests > self.window_requests:
            raise ValueError(
                f"controller.min_requests: {self.min_requests} is more than the window "
                f"holds (controller.window_requests {self.window_requests})"
            )
        return self


class Config(_Frozen):
    """The whole service configuration."""

    version: Literal[1]
    # "builtin" for the shipped model, or a path to a model file.
    model: str = "builtin"
    server: ServerConfig = ServerConfig()
    routing: RoutingConfig = RoutingConfig()
    completion: CompletionConfig = CompletionConfig()
    logging: LoggingConfig = LoggingConfig()
    # `store: null` keeps nothing.
    store: StoreConfig | None = StoreConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    tracing: TracingConfig = TracingConfig()
    tiers: Annotated[list[TierConfig], Field(min_length=MIN_TIERS, max_length=MAX_TIERS)]
    backends: dict[str, BackendConfig]
    auth: AuthConfig = AuthConfig()
    # Per tenant, by the request's tenant field (or its API key's tenant); "default" is
    # the tenant of requests without one.
    tenants: dict[TenantName, TenantConfig] = {}
    controller: ControllerConfig = ControllerConfig()
    limits: LimitsConfig = LimitsConfig()

    @model_validator(mode="after")
    def _check_tiers(self) -> Config:
        names = [t.name for t in self.tiers]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"tiers[{i}].name: duplicate tier name {name!r}")
        for i, tier in enumerate(self.tiers):
            if tier.backend not in self.backends:
                known = ", ".join(sorted(self.backends)) or "none"
                raise ValueError(
                    f"tiers[{i}].backend: unknown backend {tier.backend!r} (configured: {known})"
                )
        if self.tiers[0].escalation_margin is not None:
            raise ValueError(
                "tiers[0].escalation_margin: the cheapest tier has no threshold to climb to; "
                "omit it"
            )
        if self.tiers[0].min_score not in (None, 0.0):
            raise ValueError("tiers[0].min_score: the cheapest tier takes every score; omit it")
        given = [t.min_score for t in self.tiers[1:]]
        if any(s is not None for s in given):
            for i, s in enumerate(given, start=1):
                if s is None:
                    raise ValueError(
                        f"tiers[{i}].min_score: set min_score on every tier above the "
                        "cheapest, or on none to use the model's calibrated thresholds"
                    )
            for i in range(2, len(self.tiers)):
                prev, cur = given[i - 2], given[i - 1]
                assert prev is not None and cur is not None
                if cur <= prev:
                    raise ValueError(
                        f"tiers[{i}].min_score: thresholds must increase with the tier "
                        f"({cur} is not above tiers[{i - 1}].min_score {prev})"
                    )
        return self

    @model_validator(mode="after")
    def _check_auth(self) -> Config:
        if self.auth.enabled and not self.auth.keys:
            raise ValueError("auth.keys: auth is enabled but no key is configured")
        seen: set[str] = set()
        for i, key in enumerate(self.auth.keys):
            if key.sha256 in seen:
                raise ValueError(f"auth.keys[{i}].sha256: the same digest is listed twice")
            seen.add(key.sha256)
        return self

    def explicit_thresholds(self) -> tuple[float, ...] | None:
        """Return the thresholds set in the file (one per tier above the cheapest), if any."""
        given = [t.min_score for t in self.tiers[1:]]
        if given[0] is None:
            return None
        return tuple(float(s) for s in given if s is not None)


_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute_env(value: Any, environ: Mapping[str, str], path: str = "") -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a parsed YAML tree.

    Return a tree without shared parts: YAML aliases are expanded into copies. Raise
    ConfigError for an alias that holds itself, and for a tree that expands to more than
    MAX_CONFIG_VALUES values (an alias bomb would take minutes and gigabytes).
    """
    return _Substitution(environ).copy(value, path)


class _Substitution:
    """One walk of substitute_env: the values seen so far and the containers being copied."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.values = 0
        self.open: set[int] = set()  # ids of the mappings and lists around the current value

    def copy(self, value: Any, path: str) -> Any:
        self.values += 1
        if self.values > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"the configuration expands to more than {MAX_CONFIG_VALUES:,} values "
                "(through YAML aliases?)"
            )
        if isinstance(value, dict | list):
            if id(value) in self.open:
                raise ConfigError(
                    f"{path}: recursive YAML alias (a value that holds itself through an "
                    "alias of its anchor)"
                )
            self.open.add(id(value))
            try:
                if isinstance(value, dict):
                    return {
                        k: self.copy(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()
                    }
                return [self.copy(v, f"{path}[{i}]") for i, v in enumerate(value)]
            finally:
                self.open.discard(id(value))
        if isinstance(value, str):
            return self.substitute(value, path)
        return value

    def substitute(self, value: str, path: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in self.environ:
                return self.environ[name]
            if default is not None:
                return default
            raise ConfigError(
                f"{path}: environment variable {name} is not set (use ${{{name}:-default}})"
            )

        return _ENV_PATTERN.sub(replace, value)


class _DuplicateKeyError(yaml.YAMLError):
    """A mapping in the YAML file gives one key twice."""


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (YAML says so; PyYAML
    would keep the last one silently: a second ``server:`` block would replace the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            # A merge key (<<: *base) brings keys that the mapping's own may override.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise _DuplicateKeyError(
                    f"duplicate key {key!r} at line {line} (first at line {first_line[key]})"
                )
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def read_yaml(text: str) -> Any:
    """Parse YAML as the configuration is read: safe, and no key twice in a mapping."""
    return yaml.load(text, Loader=ConfigLoader)  # a SafeLoader: no arbitrary objects


# The tagged union of backends puts the tag (the backend's kind) into an error's location
# right after the backend's name: ("backends", "local", "openai", "base_url").
_BACKEND_KIND_AT = 2


def _key_path(loc: tuple[int | str, ...]) -> str:
    """Return an error location as a key path: ``tiers[1].price.input_per_mtok``."""
    if len(loc) > _BACKEND_KIND_AT and loc[0] == "backends":
        loc = loc[:_BACKEND_KIND_AT] + loc[_BACKEND_KIND_AT + 1 :]
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path


def _format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        # Whole-config checks (_check_tiers) name the key in the message itself.
        lines.append(f"{_key_path(item['loc'])}: {msg}" if item["loc"] else msg)
    return "; ".join(lines)


def parse_config(data: Any, environ: Mapping[str, str] | None = None) -> Config:
    """Validate a parsed YAML tree and return the configuration."""
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a mapping with a 'version' key")
    if "version" not in data:
        raise ConfigError(f"version: missing (this release reads version: {CONFIG_VERSION})")
    if data["version"] != CONFIG_VERSION or isinstance(data["version"], bool):
        raise ConfigError(
            f"version: {data['version']!r} is not supported (expected {CONFIG_VERSION})"
        )
    data = substitute_env(data, os.environ if environ is None else environ)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, substitute and validate a YAML configuration file."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}: not valid UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} "
            f"(line {line}): {exc.reason}; save the file as UTF-8"
        ) from None
    try:
        data = read_yaml(text)
    except _DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    try:
        return parse_config(data, environ)
    except RecursionError:
        # Shallow enough for the parser, yet too deep to substitute or validate.
        raise ConfigError(f"{path}: nested too deeply") from None


DEFAULT_CONFIG_YAML = """\
version: 1
model: builtin
tiers:
  - name: cheap
    model: demo-cheap
    backend: demo
    price: {input_per_mtok: 0.24, output_per_mtok: 0.24}
  - name: strong
    model: demo-strong
    backend: demo
    price: {input_per_mtok: 2.5, output_per_mtok: 10.0}
  - name: expert
    model: demo-expert
    backend: demo
    price: {input_per_mtok: 15.0, output_per_mtok: 75.0}
backends:
  demo:
    kind: demo
"""


def default_config() -> Config:
    """Return the embedded default: the shipped model and three tiers on the demo backend."""
    return parse_config(read_yaml(DEFAULT_CONFIG_YAML), environ={})
