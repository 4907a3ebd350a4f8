"""The routing core: tier_for_score, choose_tier, check_thresholds, Router and its decisions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from router import Decision, Router, Scored, _fastpath_py
from router.domain import ChatMessage, DecisionReason
from router.fastpath import IMPLEMENTATION, LEVELS
from router.model import ModelError, load_model, save_model
from router.routing import check_thresholds, choose_tier, tier_for_score
from tests.support import random_model

THRESHOLDS = (0.3, 0.6, 0.9)


@pytest.mark.parametrize(
    ("score", "index"),
    [
        (0.0, 0),
        (0.2999, 0),
        (0.3, 1),  # reaching a threshold is enough
        (0.45, 1),
        (0.6, 2),
        (0.8999, 2),
        (0.9, 3),
        (1.0, 3),
    ],
)
def test_tier_for_score(score: float, index: int) -> None:
    assert tier_for_score(score, THRESHOLDS) == index


def test_tier_for_score_two_tiers() -> None:
    assert [tier_for_score(s, (0.5,)) for s in (0.0, 0.49, 0.5, 1.0)] == [0, 0, 1, 1]


@pytest.mark.parametrize(
    ("score", "kwargs", "expected"),
    [
        (0.1, {}, (0, DecisionReason.SCORE)),
        (0.65, {}, (2, DecisionReason.SCORE)),
        # The margin climbs one tier when the score lies within it below the next threshold.
        (0.25, {"margin": 0.05}, (1, DecisionReason.MARGIN)),
        (0.25, {"margin": 0.049}, (0, DecisionReason.SCORE)),
        (0.55, {"margin": 0.1}, (2, DecisionReason.MARGIN)),
        (0.3, {"margin": 0.1}, (1, DecisionReason.SCORE)),  # just reached: no climb yet
        (0.95, {"margin": 0.5}, (3, DecisionReason.SCORE)),  # nothing above the top tier
        (0.1, {"margin": 0.0}, (0, DecisionReason.SCORE)),
        # A forced tier wins over the score and the margin.
        (0.95, {"forced": 0}, (0, DecisionReason.FORCED)),
        (0.25, {"forced": 2, "margin": 0.1}, (2, DecisionReason.FORCED)),
        # min/max clamp whatever was chosen.
        (0.1, {"min_index": 2}, (2, DecisionReason.MIN_TIER)),
        (0.95, {"max_index": 1}, (1, DecisionReason.MAX_TIER)),
        (0.45, {"min_index": 1, "max_index": 2}, (1, DecisionReason.SCORE)),
        (0.25, {"margin": 0.1, "max_index": 0}, (0, DecisionReason.MAX_TIER)),
        (0.95, {"forced": 0, "min_index": 1}, (1, DecisionReason.MIN_TIER)),
        (0.1, {"forced": 3, "max_index": 2}, (2, DecisionReason.MAX_TIER)),
    ],
)
def test_choose_tier(
    score: float, kwargs: dict[str, float | int], expected: tuple[int, DecisionReason]
) -> None:
    assert choose_tier(score, THRESHOLDS, **kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("score", "margins", "expected"),
    [
        # One margin per threshold: the one below the threshold the score is short of.
        (0.25, (0.05, 0.0, 0.0), (1, DecisionReason.MARGIN)),
        (0.25, (0.0, 0.5, 0.5), (0, DecisionReason.SCORE)),
        (0.55, (0.5, 0.0, 0.5), (1, DecisionReason.SCORE)),
        (0.55, (0.0, 0.05, 0.0), (2, DecisionReason.MARGIN)),
        (0.85, (0.0, 0.0, 0.05), (3, DecisionReason.MARGIN)),
        (0.95, (0.5, 0.5, 0.5), (3, DecisionReason.SCORE)),
    ],
)
def test_choose_tier_with_a_margin_per_threshold(
    score: float, margins: tuple[float, ...], expected: tuple[int, DecisionReason]
) -> None:
    assert choose_tier(score, THRESHOLDS, margin=margins) == expected


def test_choose_tier_without_hints_is_tier_for_score() -> None:
    for i in range(101):
        score = i / 100
        assert choose_tier(score, THRESHOLDS) == (
            tier_for_score(score, THRESHOLDS),
            DecisionReason.SCORE,
        )


def test_check_thresholds_accepts_and_normalises() -> None:
    result = check_thresholds([0, 0.5, 1], 4)
    assert result == (0.0, 0.5, 1.0)
    assert all(type(t) is float for t in result)
    assert check_thresholds((0.5,), 2) == (0.5,)


@pytest.mark.parametrize(
    ("thresholds", "n_tiers", "message"),
    [
        ((0.5,), 3, "3 tiers need 2 thresholds, got 1"),
        ((0.2, 0.5, 0.8), 3, "3 tiers need 2 thresholds, got 3"),
        ((), 2, "2 tiers need 1 thresholds, got 0"),
        ((-0.1, 0.5), 3, "must lie in [0, 1]"),
        ((0.5, 1.5), 3, "must lie in [0, 1]"),
        ((math.nan, 0.5), 3, "must lie in [0, 1]"),
        ((0.5, 0.5), 3, "must increase"),
        ((0.6, 0.5), 3, "must increase"),
    ],
)
def test_check_thresholds_rejects(
    thresholds: tuple[float, ...], n_tiers: int, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        check_thresholds(thresholds, n_tiers)
    assert message in str(info.value)


# -- Router ----------------------------------------------------------------------------------


def router_with(impl: type[_fastpath_py.FastPath], seed: int = 7) -> Router:
    """Return a Router over a small random model, scoring with the given implementation."""
    router = Router(random_model(seed))
    # Router always takes the selected implementation; swap in the one under test.
    router._fastpath = router.model.fastpath(impl)
    return router


def check_decision(router: Router, decision: Decision) -> None:
    assert 0.0 <= decision.score <= 1.0
    assert decision.tier_index == tier_for_score(decision.score, router.thresholds)
    assert decision.tier == router.tier_names[decision.tier_index]
    assert len(decision.levels) == LEVELS
    assert all(0.0 <= p <= 1.0 for p in decision.levels)
    assert math.isclose(sum(decision.levels), 1.0, rel_tol=1e-9)
    assert set(decision.rules) <= set(router.model.rule_names)


def test_router_uses_the_selected_implementation() -> None:
    assert Router(random_model()).implementation == IMPLEMENTATION


def test_route_is_score_plus_thresholds(fastpath_impl: type[_fastpath_py.FastPath]) -> None:
    router = router_with(fastpath_impl)
    fastpath = router.model.fastpath(fastpath_impl)
    for text in ("hello", "Review this contract clause", "def f(): pass step by step"):
        decision = router.route(text)
        check_decision(router, decision)
        score, levels, mask = fastpath.score(text)
        assert (decision.score, decision.levels) == (score, levels)
        assert decision.rules == router.model.rule_names_for(mask)
        assert router.score(text) == Scored(score, levels, decision.rules)


def test_route_reports_the_rules_that_fired(fastpath_impl: type[_fastpath_py.FastPath]) -> None:
    router = router_with(fastpath_impl)
    assert router.route("Review this CONTRACT step by step").rules == ("contract", "step_by_step")
    assert router.route("What are your business hours?").rules == ()


def test_router_tiers_and_thresholds_override_the_model() -> None:
    model = random_model()
    router = Router(model, tier_names=("a", "b"), thresholds=(0.5,))
    assert (router.tier_names, router.thresholds) == (("a", "b"), (0.5,))
    decision = router.route("anything at all")
    assert decision.tier == ("a", "b")[decision.score >= 0.5]
    assert Router(model).thresholds == model.thresholds
    assert Router(model).tier_names == model.tier_names


def test_every_tier_is_reachable() -> None:
    texts = [f"query {i} {'contract ' * (i % 4)}{'?' * (i % 3)}" for i in range(60)]
    scores = sorted(Router(random_model()).score(t).score for t in texts)
    # Put thresholds between the observed scores: each tier gets some of the queries.
    thresholds = (scores[15], scores[30], scores[45])
    router = Router(random_model(), tier_names=("t0", "t1", "t2", "t3"), thresholds=thresholds)
    assert {router.route(t).tier for t in texts} == {"t0", "t1", "t2", "t3"}


@pytest.mark.parametrize(
    ("tier_names", "thresholds"),
    [(("a", "b", "c"), (0.5,)), (("a", "b"), (0.6, 0.5)), (("a", "b", "c"), (0.7, 0.6))],
)
def test_router_rejects_thresholds_that_do_not_fit(
    tier_names: tuple[str, ...], thresholds: tuple[float, ...]
) -> None:
    with pytest.raises(ValueError, match="thresholds"):
        Router(random_model(), tier_names=tier_names, thresholds=thresholds)


def test_router_load_and_version(small_model_path: Path) -> None:
    router = Router.load(small_model_path)
    model = load_model(small_model_path)
    assert router.version == model.version == f"test-{model.checksum[:12]}"
    assert router.thresholds == (0.4, 0.7)


def test_router_load_of_a_bad_file_is_a_model_error(tmp_path: Path) -> None:
    (tmp_path / "m.npz").write_text("nonsense")
    with pytest.raises(ModelError, match="not a readable model file"):
        Router.load(tmp_path / "m.npz")


def test_decision_as_json_is_the_route_contract() -> None:
    decision = Decision("strong", 1, 0.5, (0.1, 0.2, 0.3, 0.2, 0.2), ("code",))
    assert decision.as_json("q-1") == {
        "id": "q-1",
        "tier": "strong",
        "tier_index": 1,
        "score": 0.5,
        "levels": [0.1, 0.2, 0.3, 0.2, 0.2],
        "rules": ["code"],
    }
    assert decision.as_json()["id"] is None


def test_the_default_router_routes_the_product_examples() -> None:
    """Router.default() loads the shipped model; the PRODUCT.md table's examples land sensibly.

    The shipped model (router/models/default.npz) must exist: its absence is a failure.
    """
    router = Router.default()
    assert router.tier_names == ("cheap", "strong", "expert")
    check_decision(router, router.route("What are your business hours?"))
    # Levels 0-1 of the table go to the cheapest tier, levels 2-3 to the strong tier, level 4
    # to the expert tier (the level bound of calibration: with the threshold just above
    # expected level 2, the level-2 example stayed cheap; the expert tier starts at expected
    # level 3.5: where it took the top 20% above the cheapest tier, MMLU-like questions
    # filled it and the level-4 example went to the strong tier).
    for text, tier in (
        ("What are your business hours?", "cheap"),
        ("How do I reset my password with 2FA enabled?", "cheap"),
        ("Compare plan A vs plan B for my usage pattern", "strong"),
        ("Analyze this error log and suggest a fix", "strong"),
        ("Review this contract clause for compliance issues", "expert"),
    ):
        assert router.route(text).tier == tier, text
    assert router.route("Hi! Review this contract clause for compliance issues").tier_index > 0
    # A greeting in front of a hard request barely moves its score (a level-0 rule carries
    # no prior; with one on the placement head of format-1 models, this score fell from
    # 0.98 to 0.45).
    plain = router.route("Review this contract clause for compliance issues").score
    greeted = router.route("Hi! Review this contract clause for compliance issues").score
    assert greeted >= plain - 0.1


# -- chats -----------------------------------------------------------------------------------


def test_score_chat_scores_the_last_user_turn_in_context(
    fastpath_impl: type[_fastpath_py.FastPath],
) -> None:
    router = router_with(fastpath_impl)
    messages = [
        ChatMessage("system", "You are a lawyer."),
        ChatMessage("user", "Review this contract"),
        ChatMessage("assistant", "Which clause?"),
        ChatMessage("user", "The liability clause, step by step"),
        ChatMessage("assistant", "Sure."),
    ]
    expected = router.score(
        "The liability clause, step by step",
        "You are a lawyer.\nReview this contract\nWhich clause?\nSure.",
        0.3,
    )
    assert router.score_chat(messages, 0.3) == expected
    # With no weight on the context, only the last user turn counts.
    assert router.score_chat(messages, 0.0) == router.score("The liability clause, step by step")
    assert router.score_chat(messages, 0.3, last_user=1) == router.score(
        "Review this contract",
        "You are a lawyer.\nWhich clause?\nThe liability clause, step by step\nSure.",
        0.3,
    )


def test_score_chat_without_a_user_turn() -> None:
    router = Router(random_model())
    with pytest.raises(ValueError, match="messages: no turn has role 'user'"):
        router.score_chat([ChatMessage("system", "hi"), ChatMessage("assistant", "hello")], 0.3)
    with pytest.raises(ValueError, match="messages"):
        router.score_chat([], 0.3)


# -- bad query inputs ------------------------------------------------------------------------

MAX_BYTES = 32 * 1024

BAD_QUERIES = {
    "empty": "",
    "whitespace": " \t\n\r\x0b\x0c  \u3000\u00a0",
    "over max_bytes (ascii)": "word " * (3 * MAX_BYTES),
    "over max_bytes (3-byte chars)": "漢字" * MAX_BYTES,
    "lone surrogates": "\ud800 high, low \udfff, pair reversed \udc00\ud800",
    "nul bytes": "\x00" * 10 + "text\x00with\x00nuls",
    "100k-char token": "a" * 100_000,
    "100k-char non-ascii token": "é" * 100_000,
    "mixed scripts and emoji": "Straße ÄÖÜ 🤖👩‍💻 漢字 テスト русский عربى हिन्दी ＡＢＣ ﬁ ½ 🇫🇷",
    "control characters": "".join(chr(c) for c in range(32)) + "\x7f\u200b\ufeff\u202e",
    "combining marks": "e" + "\u0301" * 5000,
}


@pytest.mark.parametrize("text", BAD_QUERIES.values(), ids=BAD_QUERIES.keys())
def test_bad_queries_get_a_decision(fastpath_impl: type[_fastpath_py.FastPath], text: str) -> None:
    router = router_with(fastpath_impl)
    check_decision(router, router.route(text))


def test_a_query_over_max_bytes_is_truncated(fastpath_impl: type[_fastpath_py.FastPath]) -> None:
    router = router_with(fastpath_impl)
    assert router.model.spec.max_bytes == MAX_BYTES
    head = ("contract step by step " * MAX_BYTES)[:MAX_BYTES]
    assert router.route(head + "tail " * 10_000) == router.route(head)
    assert router.route(head + "def f(): traceback") == router.route(head)


@pytest.mark.parametrize("text", ["", " ", " \t\n\r "])
def test_empty_and_whitespace_queries_have_only_dense_features(
    fastpath_impl: type[_fastpath_py.FastPath], text: str
) -> None:
    """No token and no n-gram: only the dense statistics (length, lines...) tell them apart."""
    router = router_with(fastpath_impl)
    indices, values, mask = router.model.fastpath(fastpath_impl).features(text)
    n_buckets = 1 << router.model.spec.buckets_log2
    assert mask == 0
    assert len(indices) == len(_fastpath_py.DENSE_EDGES)
    assert all(i >= n_buckets for i in indices.tolist())
    assert values.tolist() == [1.0] * len(indices)
    assert router.route(text).rules == ()


def test_the_router_saved_and_loaded_routes_the_same(tmp_path: Path) -> None:
    model = save_model(random_model(), tmp_path / "m.npz")
    before, after = Router(model), Router.load(tmp_path / "m.npz")
    for text in BAD_QUERIES.values():
        assert after.route(text) == before.route(text)
