from typing import get_args

import pytest

from router.backends import BACKENDS, BackendRequest, create_backend
from router.backends.anthropic import AnthropicBackend
from router.backends.demo import ANSWER, DemoBackend
from router.backends.openai import OpenAIBackend
from router.config import BackendConfig, DemoBackendConfig, TimeoutsConfig, default_config
from router.domain import ChatMessage, GenerationOptions


def _request(max_tokens: int = 1000, logprobs: bool = True) -> BackendRequest:
    return BackendRequest(
        "demo-cheap",
        (ChatMessage("user", "hi there"),),
        GenerationOptions(),
        max_tokens,
        logprobs,
        TimeoutsConfig(),
    )


def test_every_kind_of_the_config_has_a_registered_class() -> None:
    (union, _) = get_args(BackendConfig)
    kinds = {get_args(cls.model_fields["kind"].annotation)[0] for cls in get_args(union)}
    assert kinds == set(BACKENDS)
    assert {"openai": OpenAIBackend, "anthropic": AnthropicBackend, "demo": DemoBackend} == BACKENDS


def test_an_unknown_kind_names_the_backend() -> None:
    class Odd:
        kind = "grpc"

    with pytest.raises(ValueError, match=r"backends\.odd\.kind: unknown kind 'grpc'"):
        create_backend("odd", Odd())  # type: ignore[arg-type]


async def test_the_demo_answer_is_labelled_and_has_plausible_logprobs() -> None:
    config = default_config()
    backend = create_backend("demo", config.backends["demo"])
    chunks = [chunk async for chunk in backend.stream(_request())]
    text = "".join(c.text for c in chunks)
    assert text == ANSWER.format(model="demo-cheap")
    assert text.startswith("[modelrouter demo backend]")
    logprobs = [lp for c in chunks if c.logprobs for lp in c.logprobs]
    assert len(logprobs) == sum(c.tokens for c in chunks)
    assert all(-1.0 < lp < 0.0 for lp in logprobs)
    final = chunks[-1]
    assert final.finish_reason == "stop" and final.usage is not None
    assert final.usage.completion_tokens == len(logprobs)


async def test_the_demo_stops_at_max_tokens_with_finish_length_and_no_unasked_logprobs() -> None:
    # The rate is set high so the test does not wait; how fast it streams is not checked
    # (no timing assertions): bench/ measures that.
    backend = create_backend("demo", DemoBackendConfig(kind="demo", tokens_per_second=1e6))
    chunks = [chunk async for chunk in backend.stream(_request(max_tokens=3, logprobs=False))]
    assert sum(c.tokens for c in chunks) == 3
    assert chunks[-1].finish_reason == "length"
    assert all(c.logprobs is None for c in chunks)
