"""The compiled fast path and its pure-Python twin: same features, same scores, bit for bit."""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections.abc import Iterator

import numpy as np
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import router.fastpath
from router import _fastpath_py
from router.fastpath import HEADS
from router.model import FeaturizerSpec, RouterModel, ScoreFormula
from tests.support import (
    GATED_LEVEL,
    LEVEL_GAIN,
    PLACEMENT_GAIN,
    SHARED_DATA,
    TEST_RULES,
    _fastpath_c,
    random_model,
)

SPEC = FeaturizerSpec(buckets_log2=12, rules=TEST_RULES)


def test_fastpath_c_loaded() -> None:
    """Fail when the compiled module was expected (no MODELROUTER_NO_EXTENSIONS) but is missing."""
    if router.fastpath.NO_EXTENSIONS:
        assert router.fastpath.IMPLEMENTATION == "python"
        return
    assert _fastpath_c is not None, "router._fastpath did not import: the extension was not built"
    assert router.fastpath.IMPLEMENTATION == "compiled"
    assert router.fastpath.FastPath is _fastpath_c.FastPath


def _pair(
    model_seed: int = 7, score: ScoreFormula = GATED_LEVEL
) -> tuple[_fastpath_py.FastPath, _fastpath_py.FastPath]:
    if _fastpath_c is None:
        pytest.skip("compiled fast path not built")
    model = random_model(model_seed, score=score)
    return model.fastpath(_fastpath_py.FastPath), model.fastpath(_fastpath_c.FastPath)


def _assert_same(
    py: _fastpath_py.FastPath, c: _fastpath_py.FastPath, text: str, context: str = ""
) -> None:
    fi_py, fv_py, mask_py = py.features(text)
    fi_c, fv_c, mask_c = c.features(text)
    assert fi_py.tolist() == fi_c.tolist()
    assert fv_py.tobytes() == fv_c.tobytes()
    assert mask_py == mask_c
    assert py.score(text, context, 0.3) == c.score(text, context, 0.3)
    assert py.logits(text) == c.logits(text)


UNICODE_TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=300)


@settings(max_examples=2000, deadline=None)
@given(text=UNICODE_TEXT, context=st.text(max_size=80))
def test_parity_on_generated_text(text: str, context: str) -> None:
    py, c = _pair()
    _assert_same(py, c, text, context)


@settings(max_examples=300, deadline=None)
@given(text=UNICODE_TEXT, context=st.text(max_size=80))
def test_parity_of_the_format_1_score(text: str, context: str) -> None:
    py, c = _pair(score=PLACEMENT_GAIN)
    _assert_same(py, c, text, context)


@settings(max_examples=300, deadline=None)
@given(text=UNICODE_TEXT, context=st.text(max_size=80))
def test_parity_of_the_level_gain_score(text: str, context: str) -> None:
    py, c = _pair(score=LEVEL_GAIN)
    _assert_same(py, c, text, context)


def _half_model(seed: int = 5) -> RouterModel:
    """Return a model with float16 weights (as files hold them) drawn from every finite half."""
    model = random_model(seed)
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 0x7C00, size=model.weights.shape, dtype=np.uint16)  # no inf or nan
    bits |= rng.integers(0, 2, size=bits.shape, dtype=np.uint16) << 15
    # Rows of only zeros and subnormals as well (the portable conversion's own branches).
    bits[::7] &= 0x83FF
    return dataclasses.replace(model, weights=bits.view(np.float16))


@pytest.fixture(params=["f16c", "portable"])
def half_conversion(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a test with the compiled path's F16C row sums, then with its portable ones."""
    if _fastpath_c is None:
        pytest.skip("compiled fast path not built")
    old = _fastpath_c._set_f16c(request.param == "f16c")
    try:
        yield request.param
    finally:
        _fastpath_c._set_f16c(old)


@settings(
    max_examples=300,
    deadline=None,
    # The fixture only switches the conversion: the same for every example.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=UNICODE_TEXT, context=st.text(max_size=80))
def test_parity_with_float16_weights(half_conversion: str, text: str, context: str) -> None:
    assert _fastpath_c is not None  # half_conversion skipped without it
    model = _half_model()
    py, c = model.fastpath(_fastpath_py.FastPath), model.fastpath(_fastpath_c.FastPath)
    _assert_same(py, c, text, context)


def test_float16_weights_score_as_their_float32_widening(half_conversion: str) -> None:
    """Halves are read exactly: the same model widened to float32 gives the same scores."""
    assert _fastpath_c is not None  # half_conversion skipped without it
    model = _half_model(9)
    wide = dataclasses.replace(model, weights=model.weights.astype(np.float32))
    half_fp, wide_fp = model.fastpath(_fastpath_c.FastPath), wide.fastpath(_fastpath_c.FastPath)
    for text in [*ODD_INPUTS, "Compare plan A vs plan B for my usage pattern"]:
        args = (text, "earlier turn", 0.3)
        assert half_fp.logits(*args) == wide_fp.logits(*args)
        assert half_fp.score(*args) == wide_fp.score(*args)


@settings(max_examples=500, deadline=None)
@given(
    text=st.lists(
        st.sampled_from([*"ab01 ?+`{}\n\t.-xyzSTEP", "stack trace", "clause", " by ", "step"]),
        max_size=120,
    ).map("".join)
)
def test_parity_on_rule_heavy_ascii(text: str) -> None:
    py, c = _pair(11)
    _assert_same(py, c, text)


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(UNICODE_TEXT, min_size=2, max_size=8))
def test_one_compiled_instance_scores_each_text_as_the_twin(texts: list[str]) -> None:
    # The compiled scan keeps token bounds in scratch that the previous text's n-gram
    # hashes filled: nothing of one text may leak into the next.
    py, c = _pair(5)
    for text in [*texts, "x" * 5000, *reversed(texts)]:
        _assert_same(py, c, text)


def test_counts_of_a_text_longer_than_65535_bytes_match_the_twin() -> None:
    # The compiled scan sums four byte counts in 16-bit lanes of one word, emptied every
    # 65,536 bytes: a model that reads 200,000 bytes must count past a lane's range.
    if _fastpath_c is None:
        pytest.skip("compiled fast path not built")
    model = random_model(9)
    model = dataclasses.replace(model, spec=dataclasses.replace(model.spec, max_bytes=200_000))
    py, c = model.fastpath(_fastpath_py.FastPath), model.fastpath(_fastpath_c.FastPath)
    # 70,000 line breaks and question marks: each count overflows a lane if not emptied.
    text = "\n?" * 70_000 + "x1 2"
    assert c.features(text)[1].tobytes() == py.features(text)[1].tobytes()
    _assert_same(py, c, text)


def test_parity_on_training_queries() -> None:
    data = SHARED_DATA / "routing_train.jsonl"
    if not data.exists():
        pytest.skip("../shared/data is not beside the repository")
    pairs = [_pair(3), _pair(3, LEVEL_GAIN), _pair(3, PLACEMENT_GAIN)]
    with data.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i % 97 == 0:
                for py, c in pairs:
                    _assert_same(py, c, json.loads(line)["text"])


ODD_INPUTS = [
    "",
    "   \t\n ",
    "\x00\x00nul\x00",
    "\ud800 lone surrogate \udfff",
    "x" * 100_000,
    "Straße ÄÖÜ 🤖 漢字 テスト русский عربى",
    "ＡＢＣ ﬁ ㍿ ½",
    "1234567890 3.14159 -42 1e10",
    "```python\ndef f():\n    raise ValueError\n```\nStack   Trace?",
]


@pytest.mark.parametrize("text", ODD_INPUTS, ids=range(len(ODD_INPUTS)))
def test_odd_inputs_give_a_score(fastpath_impl: type[_fastpath_py.FastPath], text: str) -> None:
    fp = random_model().fastpath(fastpath_impl)
    score, levels, _ = fp.score(text)
    assert 0.0 <= score <= 1.0
    assert len(levels) == 5
    assert math.isclose(sum(levels), 1.0, rel_tol=1e-12)
    if _fastpath_c is not None:
        py, c = _pair()
        _assert_same(py, c, text)


def test_long_text_is_truncated_not_rejected(fastpath_impl: type[_fastpath_py.FastPath]) -> None:
    fp = SPEC.fastpath(implementation=fastpath_impl)
    head = ("word " * SPEC.max_bytes)[: SPEC.max_bytes]
    assert fp.features(head + "tail " * 1000)[0].tolist() == fp.features(head)[0].tolist()


def test_features_match_a_hand_computation(fastpath_impl: type[_fastpath_py.FastPath]) -> None:
    """'Hi 42?' -> tokens 'hi', '00', '?' (digits map to 0); check every hashed feature."""
    spec = FeaturizerSpec(buckets_log2=12, word_max=2, char_min=3, char_max=3)
    fp = spec.fastpath(implementation=fastpath_impl)
    indices, values, mask = fp.features("Hi 42?")
    seed = spec.seed
    tokens = [xxhash.xxh3_64_intdigest(t, seed) for t in (b"hi", b"00", b"?")]

    def pair(a: int, b: int) -> int:
        return xxhash.xxh3_64_intdigest(struct.pack("<QQ", a, b), seed + 2)

    words = [
        tokens[0],
        pair(tokens[0], tokens[1]),
        tokens[1],
        pair(tokens[1], tokens[2]),
        tokens[2],
    ]
    buf = b" hi 00? "
    chars = [xxhash.xxh3_64_intdigest(buf[i : i + 3], seed + 1) for i in range(len(buf) - 2)]
    expected = [(h & 4095, (-1.0 if h >> 63 else 1.0) / math.sqrt(len(words))) for h in words]
    expected += [(h & 4095, (-1.0 if h >> 63 else 1.0) / math.sqrt(len(chars))) for h in chars]
    got = list(zip(indices.tolist(), values.tolist(), strict=True))
    assert got[: len(expected)] == expected
    dense = [i - 4096 for i in indices[len(expected) :].tolist()]
    edges = dict(_fastpath_py.DENSE_EDGES)
    offsets = np.cumsum([0] + [len(e) for _, e in _fastpath_py.DENSE_EDGES])
    # bytes=6 -> bin 0; words=2 ('hi', '00') -> bin 0; questions=1 -> bin 1; numbers=1 -> bin 1;
    # maths 0; lines 0; code 0; ends with '?' -> bin 1.
    assert dense == [offsets[i] + b for i, b in enumerate([0, 0, 1, 1, 0, 0, 0, 1])]
    assert len(edges) == 8
    assert mask == 0


@pytest.mark.parametrize(
    ("text", "fired"),
    [
        ("Please review this CONTRACT", {"contract"}),
        ("explain it step  by\tstep", {"step_by_step"}),
        ("here is the stack trace:", {"code"}),
        ("a stacktrace", set()),
        ("```x```", {"code"}),
        ("steps by step", set()),
        ("what are your business hours?", set()),
    ],
)
def test_rules_fire_on_token_phrases(
    fastpath_impl: type[_fastpath_py.FastPath], text: str, fired: set[str]
) -> None:
    model = random_model()
    fp = model.fastpath(fastpath_impl)
    _, _, mask = fp.score(text)
    assert set(model.rule_names_for(mask)) == fired
    assert fp.features(text)[2] == mask


def test_context_weight_zero_ignores_context(fastpath_impl: type[_fastpath_py.FastPath]) -> None:
    fp = random_model().fastpath(fastpath_impl)
    assert fp.score("hello", "a long contract clause", 0.0) == fp.score("hello")
    assert fp.score("hello", "a long contract clause", 0.5) != fp.score("hello")


def _logits_by_hand(model: RouterModel, fp: _fastpath_py.FastPath, text: str) -> np.ndarray:
    indices, values, _ = fp.features(text)
    return np.asarray(model.bias + values @ model.weights[indices].astype(np.float64))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


HAND_TEXT = "Compare plan A vs plan B for my usage pattern: 3 calls a day, 2 GB of data?"


def _checked_expected_level(logits: np.ndarray, levels: tuple[float, ...]) -> float:
    """Check the level probabilities against a softmax of the level logits; return E[level]."""
    exp = np.exp(logits[:5] - logits[:5].max())
    probabilities = exp / exp.sum()
    assert levels == pytest.approx(tuple(probabilities), rel=1e-9)
    return float(probabilities @ np.arange(5))


def test_score_is_the_gated_level_formula(fastpath_impl: type[_fastpath_py.FastPath]) -> None:
    """sigmoid(1.5 * ((1 - g) * E[level] + g * outcome level + 0.3 * (log1p(bytes) - 4)) -
    3), g = sigmoid(gate)."""
    model = random_model(score=GATED_LEVEL)
    fp = model.fastpath(fastpath_impl)
    logits = _logits_by_hand(model, fp, HAND_TEXT)
    score, levels, _ = fp.score(HAND_TEXT)
    expected_level = _checked_expected_level(logits, levels)
    g = _sigmoid(logits[6])
    length = 0.3 * (math.log1p(len(HAND_TEXT)) - 4.0)  # ASCII: one byte a character
    z = 1.5 * ((1 - g) * expected_level + g * logits[5] + length) - 3.0
    assert score == pytest.approx(_sigmoid(z), rel=1e-9)


def test_the_length_term_ranks_longer_queries_higher(
    fastpath_impl: type[_fastpath_py.FastPath],
) -> None:
    """The same heads, a longer query scores higher: 0.3 level per e-fold of its bytes
    (counted after normalisation and the max_bytes cut); a chat's context adds none."""
    spec = FeaturizerSpec(buckets_log2=8, max_bytes=4096)
    weights = np.zeros((spec.n_features, HEADS), dtype=np.float32)
    shut = np.array([0.0] * 6 + [-60.0])  # uniform levels (E[level] 2), the gate shut
    fp = spec.fastpath(weights, shut, fastpath_impl, GATED_LEVEL)

    def level_of(text: str, context: str = "") -> float:
        score = fp.score(text, context, 0.5 if context else 0.0)[0]
        return (math.log(score / (1.0 - score)) + 3.0) / 1.5

    for n in (0, 1, 7, 100, 4096):
        text = "x" * n
        assert level_of(text) == pytest.approx(2.0 + 0.3 * (math.log1p(n) - 4.0), abs=1e-9)
    assert level_of("x" * 9000) == level_of("x" * 4096)
    assert level_of("Ab  C\t\n") == level_of("ab  c\t\n")  # lower-cased, same bytes
    assert level_of("é" * 10) == pytest.approx(2.0 + 0.3 * (math.log1p(20) - 4.0), abs=1e-9)
    assert level_of("short", context="a much longer earlier turn " * 20) == level_of("short")


def test_gated_level_score_follows_the_level_the_gate_picks(
    fastpath_impl: type[_fastpath_py.FastPath],
) -> None:
    """Shut, the expected level places the query; open, the outcome level; between, a mix."""
    spec = FeaturizerSpec(buckets_log2=8)
    weights = np.zeros((spec.n_features, HEADS), dtype=np.float32)
    no_length = dataclasses.replace(GATED_LEVEL, length_weight=0.0)

    def score(level_bias: list[float], outcome_level: float, gate: float) -> float:
        bias = np.array([*level_bias, outcome_level, gate])
        return spec.fastpath(weights, bias, fastpath_impl, no_length).score("anything")[0]

    def at_level(level: float) -> float:
        return _sigmoid(1.5 * level - 3.0)

    high = [0.0, 0.0, 0.0, 1.0, 2.0]
    expected_high = float(np.exp(high) / np.exp(high).sum() @ np.arange(5))
    assert score(high, 0.5, -60.0) == pytest.approx(at_level(expected_high), rel=1e-12)
    assert score(high, 0.5, 60.0) == pytest.approx(at_level(0.5), rel=1e-12)
    assert score(high, 0.5, 0.0) == pytest.approx(at_level((expected_high + 0.5) / 2), rel=1e-12)
    # Monotone in the outcome level and, where the gate is not fully open, the level.
    assert score(high, 0.5, 0.0) < score(high, 1.5, 0.0)
    assert score([2.0, 1.0, 0.0, 0.0, 0.0], 1.0, 0.0) < score(high, 1.0, 0.0)


def test_score_is_the_level_gain_formula(fastpath_impl: type[_fastpath_py.FastPath]) -> None:
    """sigmoid(1.5 * E[level] + sigmoid(gate) * gain - 3), heads from numpy's X @ W."""
    model = random_model(score=LEVEL_GAIN)
    fp = model.fastpath(fastpath_impl)
    logits = _logits_by_hand(model, fp, HAND_TEXT)
    score, levels, _ = fp.score(HAND_TEXT)
    expected_level = _checked_expected_level(logits, levels)
    z = 1.5 * expected_level + _sigmoid(logits[6]) * logits[5] - 3.0
    assert score == pytest.approx(_sigmoid(z), rel=1e-9)


def test_score_is_the_placement_gain_formula(fastpath_impl: type[_fastpath_py.FastPath]) -> None:
    """Format 1: sigmoid(gain + 3 * sigmoid(placement)), heads from numpy's X @ W."""
    model = random_model(score=PLACEMENT_GAIN)
    fp = model.fastpath(fastpath_impl)
    logits = _logits_by_hand(model, fp, HAND_TEXT)
    score, _, _ = fp.score(HAND_TEXT)
    assert score == pytest.approx(_sigmoid(logits[5] + 3.0 * _sigmoid(logits[6])), rel=1e-9)


def test_level_gain_score_rises_with_the_expected_level_and_the_gain(
    fastpath_impl: type[_fastpath_py.FastPath],
) -> None:
    """Monotone in both signals: more mass on high levels, or more gain, scores higher."""
    spec = FeaturizerSpec(buckets_log2=8)
    weights = np.zeros((spec.n_features, HEADS), dtype=np.float32)

    def score(level_bias: list[float], gain: float, gate: float) -> float:
        fp = spec.fastpath(weights, np.array([*level_bias, gain, gate]), fastpath_impl, LEVEL_GAIN)
        return fp.score("anything")[0]

    low, high = [2.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 2.0]
    assert score(low, 0.0, 0.0) < score(high, 0.0, 0.0)
    assert score(low, 0.0, 0.0) < score(low, 1.0, 0.0) < score(low, 1.0, 3.0)
    # A shut gate leaves the expected level alone: E[level] 2 sits at 1/2.
    assert score([0.0] * 5, 5.0, -60.0) == pytest.approx(0.5, abs=1e-20)


def test_unknown_score_formula_is_an_error(fastpath_impl: type[_fastpath_py.FastPath]) -> None:
    spec = FeaturizerSpec(buckets_log2=8)
    with pytest.raises(ValueError, match="unknown score formula 4"):
        spec.fastpath(implementation=fastpath_impl, score=ScoreFormula(4))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"word_max": 0}, "n-gram ranges"),
        ({"char_min": 6, "char_max": 5}, "n-gram ranges"),
        ({"buckets_log2": 30}, "buckets_log2"),
    ],
)
def test_bad_settings_are_rejected(
    fastpath_impl: type[_fastpath_py.FastPath], kwargs: dict[str, int], message: str
) -> None:
    spec = FeaturizerSpec(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        spec.fastpath(np.zeros((8, HEADS), dtype=np.float32), implementation=fastpath_impl)


def test_weights_of_the_wrong_shape_are_rejected(
    fastpath_impl: type[_fastpath_py.FastPath],
) -> None:
    with pytest.raises(ValueError, match="weights must have shape"):
        SPEC.fastpath(np.zeros((10, HEADS), dtype=np.float32), implementation=fastpath_impl)
    with pytest.raises(ValueError, match=f"{HEADS} heads"):
        SPEC.fastpath(
            np.zeros((SPEC.n_features, 4), dtype=np.float32), implementation=fastpath_impl
        )
