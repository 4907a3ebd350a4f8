"""RouterService without gRPC: decisions, request ids, model loading, atomic reload."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from router.completion.engine import CompletionEngine
from router.config import Config, ConfigError, parse_config
from router.domain import (
    ChatMessage,
    CompleteRequest,
    CompletionSummary,
    DecisionReason,
    InvalidRequest,
    RouteRequest,
    RoutingDecision,
    TextDelta,
    TierHints,
)
from router.loading import load_router
from router.service import RouterService
from router.validation import MAX_MESSAGES
from tests.integration.server.support import config_data, make_model, slow_demo


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "m.npz"
    make_model(path)
    return path


def build(model_path: Path, **sections: object) -> Config:
    return parse_config(config_data(model_path, **sections), environ={})


async def service_for(config: Config) -> RouterService:
    router, source = load_router(config)
    return RouterService(config, router, model_source=source)


async def test_route_decides_with_the_model_and_the_configured_tiers(model_path: Path) -> None:
    service = await service_for(build(model_path))
    decision = await service.route(RouteRequest(prompt="What are your business hours?"))
    assert decision.tier in ("cheap", "strong", "expert")
    assert decision.model == f"demo-{decision.tier}"
    assert decision.reason is DecisionReason.SCORE
    assert decision.request_id
    await service.aclose()


async def test_request_ids_are_unique_and_checked(model_path: Path) -> None:
    service = await service_for(build(model_path))
    ids = {service.assign_request_id("") for _ in range(1000)}
    assert len(ids) == 1000
    assert service.assign_request_id("abc-1") == "abc-1"
    with pytest.raises(InvalidRequest, match="request_id: must be printable ASCII"):
        service.assign_request_id("a\nb")
    await service.aclose()


async def test_forced_tier_with_matching_bounds(model_path: Path) -> None:
    service = await service_for(build(model_path))
    hints = TierHints(min_tier="strong", max_tier="strong", tier="strong")
    decision = await service.route(RouteRequest(prompt="hi", hints=hints))
    assert (decision.tier, decision.reason) == ("strong", DecisionReason.FORCED)
    await service.aclose()


def test_load_router_names_the_key_on_a_model_tier_mismatch(model_path: Path) -> None:
    data = config_data(model_path)
    data["tiers"] = data["tiers"][:2]
    with pytest.raises(ConfigError, match=r"^tiers: the model test-\w+ is calibrated for 3 tiers"):
        load_router(parse_config(data, environ={}))
    data["tiers"][1]["min_score"] = 0.5  # explicit thresholds fit any tier count
    router, _ = load_router(parse_config(data, environ={}))
    assert router.thresholds == (0.5,)


def test_load_router_resolves_a_relative_model_path(model_path: Path) -> None:
    config = parse_config(config_data(Path(model_path.name)), environ={})
    _, source = load_router(config, base_dir=model_path.parent)
    assert source == str(model_path)
    with pytest.raises(ConfigError, match=r"^model: .*no such model file"):
        load_router(config, base_dir=model_path.parent / "elsewhere")


async def test_reload_swaps_everything_and_keeps_streams_on_the_old_engine(
    model_path: Path, tmp_path: Path
) -> None:
    service = await service_for(build(model_path, backends=slow_demo(50)))
    old_engine = service._runtime.engine
    stream = service.complete(CompleteRequest(RouteRequest(prompt="hi", request_id="s1")))
    first = await anext(stream)
    assert isinstance(first, RoutingDecision)
    assert isinstance(await anext(stream), TextDelta)

    second = tmp_path / "second.npz"
    model = make_model(second, seed=3, name="second")
    data = config_data(second)
    for tier in data["tiers"]:
        tier["model"] = "new-" + tier["name"]
    new_config = parse_config(data, environ={})
    router, source = load_router(new_config)
    service.reload(new_config, router, source)

    decision = await service.route(RouteRequest(prompt="hi"))
    assert decision.model.startswith("new-") and decision.model_version == model.version
    assert service.info().model_version == model.version
    assert service._runtime.engine is not old_engine
    # The stream started before the reload finishes on the old world, with the old names.
    rest = [event async for event in stream]
    assert isinstance(rest[-1], CompletionSummary)
    assert rest[-1].model == first.model and not first.model.startswith("new-")
    await service.aclose()


async def test_complete_wraps_a_prompt_as_one_user_message(model_path: Path) -> None:
    service = await service_for(build(model_path))
    events = [e async for e in service.complete(CompleteRequest(RouteRequest(prompt="hi")))]
    assert isinstance(events[0], RoutingDecision) and isinstance(events[-1], CompletionSummary)
    chat = RouteRequest(messages=(ChatMessage("user", "hi"),))
    events = [e async for e in service.complete(CompleteRequest(chat))]
    assert isinstance(events[-1], CompletionSummary)
    await asyncio.sleep(0)
    await service.aclose()


class RecordingEngine(CompletionEngine):
    """The real engine, noting when it is closed."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True
        await super().aclose()


def reload_same(service: RouterService, config: Config) -> None:
    router, source = load_router(config)
    service.reload(config, router, source)


def recording_service(config: Config) -> RouterService:
    router, source = load_router(config)
    return RouterService(config, router, model_source=source, engine_factory=RecordingEngine)


async def test_a_stream_counts_from_its_decision_so_a_reload_keeps_its_engine_open(
    model_path: Path,
) -> None:
    config = build(model_path)
    service = recording_service(config)
    old = service._runtime.engine
    assert isinstance(old, RecordingEngine)
    stream = service.complete(CompleteRequest(RouteRequest(prompt="hi")))
    assert isinstance(await anext(stream), RoutingDecision)
    # Suspended right after the decision (as while gRPC sends it), a reload comes in.
    reload_same(service, config)
    await asyncio.sleep(0)
    assert not old.closed
    rest = [event async for event in stream]
    assert isinstance(rest[-1], CompletionSummary)
    await asyncio.sleep(0)
    assert old.closed  # the last stream on the retired engine closed it
    await service.aclose()


async def test_a_stream_cancelled_right_after_its_decision_is_uncounted(
    model_path: Path,
) -> None:
    config = build(model_path)
    service = recording_service(config)
    old = service._runtime
    stream = service.complete(CompleteRequest(RouteRequest(prompt="hi")))
    assert isinstance(await anext(stream), RoutingDecision)
    assert old.streams == 1
    reload_same(service, config)
    await stream.aclose()  # the caller cancelled after the decision
    assert old.streams == 0
    await asyncio.sleep(0)
    assert isinstance(old.engine, RecordingEngine) and old.engine.closed
    await service.aclose()


async def test_route_uses_each_tiers_own_escalation_margin(model_path: Path) -> None:
    tiers = build(model_path).model_dump(exclude_none=True)["tiers"]
    tiers[1]["min_score"], tiers[2]["min_score"] = 0.98, 0.99
    tiers[1]["escalation_margin"] = 0.99
    service = await service_for(build(model_path, tiers=tiers))
    decision = await service.route(RouteRequest(prompt="hi"))
    assert decision.score < 0.98
    assert (decision.tier, decision.reason) == ("strong", DecisionReason.MARGIN)
    assert service.info().margins == (0.99, 0.0)
    await service.aclose()


async def test_chat_turns_are_limited(model_path: Path) -> None:
    service = await service_for(build(model_path))
    turns = (ChatMessage("user", "hi"),) * MAX_MESSAGES
    assert (await service.route(RouteRequest(messages=turns))).tier
    with pytest.raises(InvalidRequest, match=r"^messages: 1001 turns, over the limit of 1000$"):
        await service.route(RouteRequest(messages=(*turns, ChatMessage("user", "hi"))))
    await service.aclose()


async def test_a_batch_yields_to_the_loop_and_stops_when_cancelled(model_path: Path) -> None:
    # Without sessions or limits nothing in a batch awaits: it must still give the loop its
    # turn (other calls, its own deadline), and a cancelled batch stop between requests.
    service = await service_for(build(model_path))
    requests = [RouteRequest(prompt=f"question {i}") for i in range(1000)]
    batch = asyncio.get_running_loop().create_task(service.route_batch(requests))
    await asyncio.sleep(0)  # the batch's first step
    assert not batch.done()
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch
    await service.aclose()
