"""The model artifact: save/load round trip, checksum, version, and every ModelError case."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import router.fastpath
from router import _fastpath_py
from router.fastpath import (
    FEATURIZER_VERSION,
    HEADS,
    N_DENSE,
    SCORE_GATED_LEVEL,
    SCORE_LEVEL_GAIN,
    SCORE_PLACEMENT_GAIN,
    FastPath,
)
from router.model import (
    FeaturizerSpec,
    ModelError,
    RouterModel,
    Rule,
    ScoreFormula,
    default_model_path,
    dense_layout_fingerprint,
    load_model,
    save_model,
)
from tests.model_files import checksum_of, read_raw, write_entries, write_raw
from tests.support import GATED_LEVEL, LEVEL_GAIN, TEST_RULES, random_model

QUERIES = ["", "What are your business hours?", "Review this contract clause step by step"]


@pytest.fixture
def saved(tmp_path: Path) -> tuple[RouterModel, Path]:
    """A small model saved to disk, as save_model returned it."""
    path = tmp_path / "m.npz"
    rules = (*TEST_RULES[:2], Rule("levelled", ("prove that",), level=3))
    model = dataclasses.replace(
        random_model(buckets_log2=10),
        spec=FeaturizerSpec(buckets_log2=10, rules=rules),
        info={"note": "ünïcode ✓", "nested": {"rows": 3}},
    )
    return save_model(model, path), path


# -- round trip ----------------------------------------------------------------------------


FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.mark.parametrize("implementation", ["c", "py"])
def test_a_format_1_model_loads_and_scores_as_before(implementation: str) -> None:
    """tests/fixtures/model_v1.npz was written, and its queries scored, by the format-1 code."""
    impl = _fastpath_py.FastPath if implementation == "py" else FastPath
    if implementation == "c" and router.fastpath.IMPLEMENTATION != "compiled":
        pytest.skip("compiled fast path not in use")
    expected = json.loads((FIXTURES / "model_v1_scores.json").read_text(encoding="utf-8"))
    model = load_model(FIXTURES / "model_v1.npz")
    assert model.version == expected["version"]
    assert model.score == ScoreFormula(SCORE_PLACEMENT_GAIN, placement_weight=6.0)
    fastpath = model.fastpath(impl)
    for query in expected["queries"]:
        score, levels, rules = fastpath.score(query["text"], "earlier turn", 0.3)
        assert (score, list(levels), rules) == (query["score"], query["levels"], query["rules"])


def test_a_resaved_format_1_model_is_format_2_and_scores_the_same(tmp_path: Path) -> None:
    model = load_model(FIXTURES / "model_v1.npz")
    resaved = save_model(model, tmp_path / "m.npz")
    meta, _ = read_raw(tmp_path / "m.npz")
    assert meta["format_version"] == 2
    assert meta["score"] == {"formula": "placement_gain", "placement_weight": 6.0}
    assert "score_gate" not in meta
    again = load_model(tmp_path / "m.npz")
    assert again.score == model.score
    for text in QUERIES:
        assert again.fastpath().score(text) == resaved.fastpath().score(text)


@pytest.mark.parametrize(
    ("formula", "name"), [(GATED_LEVEL, "gated_level"), (LEVEL_GAIN, "level_gain")]
)
def test_each_level_formula_is_saved_by_name_and_scores_the_same(
    formula: ScoreFormula, name: str, tmp_path: Path
) -> None:
    """Models trained before the gated level (level_gain) keep loading and scoring so."""
    model = save_model(random_model(score=formula), tmp_path / "m.npz")
    meta, _ = read_raw(tmp_path / "m.npz")
    length = {"length_weight": 0.3, "length_center": 4.0} if name == "gated_level" else {}
    assert meta["score"] == {"formula": name, "level_weight": 1.5, "bias": -3.0, **length}
    loaded = load_model(tmp_path / "m.npz")
    assert loaded.score == formula
    for text in QUERIES:
        assert loaded.fastpath().score(text) == model.fastpath().score(text)


def test_a_gated_level_file_saved_before_the_length_term_scores_without_it() -> None:
    """``default-d10c9d822805`` and other files of that day name no length term."""
    saved = {"formula": "gated_level", "level_weight": 1.5, "bias": -3.0}
    formula = ScoreFormula.from_json(saved)
    assert formula == dataclasses.replace(GATED_LEVEL, length_weight=0.0, length_center=0.0)
    spec = FeaturizerSpec(buckets_log2=8)
    fp = spec.fastpath(np.zeros((spec.n_features, HEADS), np.float32), None, score=formula)
    assert fp.score("short")[0] == fp.score("a much longer query " * 30)[0]


def test_round_trip_keeps_everything(saved: tuple[RouterModel, Path]) -> None:
    model, path = saved
    loaded = load_model(path)
    assert loaded.spec == model.spec
    assert loaded.spec.rules[2].level == 3
    assert loaded.weights.dtype == np.float16
    assert loaded.weights.tobytes() == model.weights.tobytes()
    assert loaded.bias.tobytes() == model.bias.tobytes()
    assert loaded.tier_names == model.tier_names
    assert loaded.thresholds == model.thresholds
    assert loaded.score == model.score
    assert loaded.name == model.name
    assert loaded.info == model.info
    assert loaded.checksum == model.checksum
    fp_saved, fp_loaded = model.fastpath(), loaded.fastpath()
    for text in QUERIES:
        assert fp_loaded.score(text) == fp_saved.score(text)


def test_weights_are_stored_as_float16(tmp_path: Path) -> None:
    model = random_model(buckets_log2=10)
    saved = save_model(model, tmp_path / "m.npz")
    _, arrays = read_raw(tmp_path / "m.npz")
    assert arrays["weights"].dtype == np.float16
    assert arrays["bias"].dtype == np.float64
    # save_model returns the weights as they will load: float16, as the fast path reads them.
    assert saved.weights.dtype == np.float16
    assert saved.weights.tobytes() == model.weights.astype(np.float16).tobytes()


def test_checksum_and_version(saved: tuple[RouterModel, Path]) -> None:
    model, path = saved
    meta, arrays = read_raw(path)
    checksum = meta.pop("checksum")
    assert checksum == model.checksum == checksum_of(meta, arrays)
    assert len(checksum) == 64
    assert model.version == f"{model.name}-{checksum[:12]}"


def test_checksum_is_deterministic_and_covers_meta_and_weights(tmp_path: Path) -> None:
    model = random_model(buckets_log2=10)
    first = save_model(model, tmp_path / "a.npz").checksum
    assert save_model(model, tmp_path / "b.npz").checksum == first
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    weights = model.weights.copy()
    weights[0, 0] += 1.0
    changed = [
        dataclasses.replace(model, weights=weights),
        dataclasses.replace(model, bias=model.bias + 1.0),
        dataclasses.replace(model, thresholds=(0.4, 0.71)),
        dataclasses.replace(model, tier_names=("a", "b", "c")),
        dataclasses.replace(model, name="other"),
        dataclasses.replace(model, spec=dataclasses.replace(model.spec, seed=1)),
        dataclasses.replace(model, info={"x": 1}),
    ]
    sums = {save_model(m, tmp_path / f"c{i}.npz").checksum for i, m in enumerate(changed)}
    assert len(sums) == len(changed)
    assert first not in sums


def test_save_leaves_no_temporary_file(saved: tuple[RouterModel, Path]) -> None:
    _, path = saved
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_save_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    save_model(random_model(seed=1, buckets_log2=10), path)
    second = save_model(random_model(seed=2, buckets_log2=10), path)
    assert load_model(path).checksum == second.checksum


def test_featurizer_spec_json_round_trip() -> None:
    spec = FeaturizerSpec(
        seed=5, buckets_log2=11, word_max=3, char_min=2, char_max=4, max_bytes=999, rules=TEST_RULES
    )
    assert FeaturizerSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert spec.n_features == 2048 + N_DENSE + len(TEST_RULES)
    assert spec.featurizer_version == FEATURIZER_VERSION
    assert spec.dense_layout == dense_layout_fingerprint()


def test_rule_names_for_a_mask() -> None:
    model = random_model()
    assert model.rule_names == ("code", "contract", "step_by_step")
    assert model.rule_names_for(0) == ()
    assert model.rule_names_for(0b101) == ("code", "step_by_step")
    assert model.rule_names_for(0b010) == ("contract",)


def test_with_operating_point_copies() -> None:
    model = random_model()
    moved = model.with_operating_point(("a", "b"), [0.25], {"target": "t"})
    assert (moved.tier_names, moved.thresholds) == (("a", "b"), (0.25,))
    assert moved.info["calibration"] == {"target": "t"}
    assert (model.tier_names, model.thresholds) == (("cheap", "strong", "expert"), (0.4, 0.7))
    assert "calibration" not in model.info


def test_default_model_path_is_inside_the_package() -> None:
    path = default_model_path()
    assert path.name == "default.npz"
    assert path.parent == Path(_fastpath_py.__file__).parent / "models"


def test_the_shipped_model_loads_and_matches_the_code() -> None:
    """The shipped model (router/models/default.npz) must exist: its absence is a failure."""
    path = default_model_path()
    assert path.is_file(), f"{path} is missing: the shipped model has not landed"
    model = load_model(path)
    assert model.spec.featurizer_version == FEATURIZER_VERSION
    assert model.spec.dense_layout == dense_layout_fingerprint()
    assert model.tier_names == ("cheap", "strong", "expert")
    assert len(model.thresholds) == 2
    assert 0.0 <= model.thresholds[0] < model.thresholds[1] <= 1.0
    assert "calibration" in model.info
    # Small enough to commit (the issue: "a few MB").
    assert path.stat().st_size < 8 * 1024 * 1024


# -- corrupt and mismatched files ----------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model file"):
        load_model(tmp_path / "absent.npz")


@pytest.mark.parametrize(
    "content",
    [b"", b"not a zip at all\n", b"PK\x03\x04" + b"\x00" * 40],
    ids=["empty", "text", "zip"],
)
def test_not_a_model_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "m.npz"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="not a readable model file"):
        load_model(path)


def test_a_single_npy_array_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "weights.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(ModelError, match=r"not an \.npz archive"):
        load_model(path)


def test_a_directory_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=str(tmp_path)):
        load_model(tmp_path)


def test_every_truncation_is_a_model_error(saved: tuple[RouterModel, Path], tmp_path: Path) -> None:
    _, path = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    for size in [*range(0, len(data), 97), len(data) - 1]:
        cut.write_bytes(data[:size])
        with pytest.raises(ModelError, match=r"cut\.npz"):
            load_model(cut)


def test_a_flipped_byte_is_a_model_error_or_changes_nothing(tmp_path: Path) -> None:
    """Flip bytes all over a file: either a ModelError, or (zip header fields the reader
    ignores) the very same model; never another exception, never a different model."""
    model = save_model(random_model(buckets_log2=8), tmp_path / "m.npz")
    data = (tmp_path / "m.npz").read_bytes()
    # Every byte of the first local header and of the central directory at the end, and a
    # sample of the rest (mostly compressed data, caught by the zip's CRC).
    positions = sorted({*range(160), *range(len(data) - 300, len(data)), *range(0, len(data), 37)})
    bad = tmp_path / "bad.npz"
    errors = 0
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 0x01 if pos % 2 else 0x80
        bad.write_bytes(flipped)
        try:
            loaded = load_model(bad)
        except ModelError:
            errors += 1
            continue
        assert loaded.checksum == model.checksum
        assert loaded.weights.tobytes() == model.weights.tobytes()
    assert errors > len(positions) / 2


def test_edited_weights_are_a_checksum_mismatch(
    saved: tuple[RouterModel, Path], tmp_path: Path
) -> None:
    _, path = saved
    meta, arrays = read_raw(path)
    arrays["weights"] = arrays["weights"].copy()
    arrays["weights"][3, 2] += np.float16(0.5)
    edited = write_raw(tmp_path / "e.npz", meta, arrays, reseal=False)
    with pytest.raises(ModelError, match="checksum mismatch"):
        load_model(edited)


def test_edited_thresholds_are_a_checksum_mismatch(
    saved: tuple[RouterModel, Path], tmp_path: Path
) -> None:
    _, path = saved
    meta, arrays = read_raw(path)
    meta["thresholds"] = [0.1, 0.2]
    edited = write_raw(tmp_path / "e.npz", meta, arrays, reseal=False)
    with pytest.raises(ModelError, match="checksum mismatch"):
        load_model(edited)


def test_a_missing_checksum_is_a_mismatch(saved: tuple[RouterModel, Path], tmp_path: Path) -> None:
    _, path = saved
    meta, arrays = read_raw(path)
    del meta["checksum"]
    with pytest.raises(ModelError, match="checksum mismatch"):
        load_model(write_raw(tmp_path / "e.npz", meta, arrays, reseal=False))


Edit = Callable[[dict[str, Any], dict[str, npt.NDArray[Any]]], None]


def _set_featurizer(key: str, value: object) -> Edit:
    def edit(meta: dict[str, Any], _arrays: dict[str, npt.NDArray[Any]]) -> None:
        meta["featurizer"][key] = value

    return edit


def _drop_featurizer(key: str) -> Edit:
    def edit(meta: dict[str, Any], _arrays: dict[str, npt.NDArray[Any]]) -> None:
        del meta["featurizer"][key]

    return edit


def _set_meta(key: str, value: object) -> Edit:
    def edit(meta: dict[str, Any], _arrays: dict[str, npt.NDArray[Any]]) -> None:
        meta[key] = value

    return edit


def _resize(key: str, rows: int, cols: int | None) -> Edit:
    def edit(_meta: dict[str, Any], arrays: dict[str, npt.NDArray[Any]]) -> None:
        shape = (rows,) if cols is None else (rows, cols)
        arrays[key] = np.zeros(shape, dtype=arrays[key].dtype)

    return edit


def _drop_rule(meta: dict[str, Any], _arrays: dict[str, npt.NDArray[Any]]) -> None:
    meta["featurizer"]["rules"].pop()


# Files another writer could have made: the checksum matches, the content does not fit.
MISMATCHES: list[tuple[str, Edit, str]] = [
    (
        "featurizer version",
        _set_featurizer("featurizer_version", FEATURIZER_VERSION + 1),
        f"featurizer version {FEATURIZER_VERSION + 1}, this code computes version "
        f"{FEATURIZER_VERSION}: retrain",
    ),
    (
        "dense layout",
        _set_featurizer("dense_layout", "0123456789abcdef"),
        "dense feature layout 0123456789abcdef differs from the code's",
    ),
    ("featurizer key missing", _drop_featurizer("seed"), "bad featurizer settings"),
    ("featurizer value", _set_featurizer("buckets_log2", "many"), "bad featurizer settings"),
    ("format", _set_meta("format", "something-else"), "format 'something-else' v2, expected"),
    ("format version", _set_meta("format_version", 3), "v3, expected 'modelrouter-model' v1 or v2"),
    ("score formula", _set_meta("score", {"formula": "magic"}), "bad score formula"),
    ("score parameter", _set_meta("score", {"formula": "level_gain"}), "bad score formula"),
    ("format 1 gate", _set_meta("format_version", 1), "bad score formula ('score_gate')"),
    ("heads", _set_meta("heads", HEADS + 1), f"{HEADS + 1} heads, this code scores {HEADS}"),
    ("weights rows", _resize("weights", 100, HEADS), "do not fit the featurizer"),
    ("weights heads", _resize("weights", 1024 + N_DENSE + 3, HEADS - 2), "do not fit"),
    ("bias", _resize("bias", HEADS + 1, None), "do not fit the featurizer"),
    ("rules vs weights", _drop_rule, "do not fit the featurizer"),
]


@pytest.mark.parametrize(
    ("edit", "message"), [m[1:] for m in MISMATCHES], ids=[m[0] for m in MISMATCHES]
)
def test_a_mismatched_model_is_a_clear_error(
    saved: tuple[RouterModel, Path], tmp_path: Path, edit: Edit, message: str
) -> None:
    _, path = saved
    meta, arrays = read_raw(path)
    edit(meta, arrays)
    bad = write_raw(tmp_path / "bad.npz", meta, arrays, reseal=True)
    with pytest.raises(ModelError, match=r"bad\.npz") as info:
        load_model(bad)
    assert message in str(info.value)


@pytest.mark.parametrize("entry", ["meta", "weights", "bias"])
def test_a_missing_entry(saved: tuple[RouterModel, Path], tmp_path: Path, entry: str) -> None:
    _, path = saved
    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files if key != entry}
    with pytest.raises(ModelError, match=f"no '{entry}' entry"):
        load_model(write_entries(tmp_path / "bad.npz", arrays))


@pytest.mark.parametrize("blob", [b"{not json", b"\xff\xfe", b"[1, 2]", b"null"])
def test_corrupt_metadata(saved: tuple[RouterModel, Path], tmp_path: Path, blob: bytes) -> None:
    _, path = saved
    _, arrays = read_raw(path)
    bad = write_entries(tmp_path / "bad.npz", {"meta": np.frombuffer(blob, np.uint8), **arrays})
    with pytest.raises(ModelError, match="corrupt metadata"):
        load_model(bad)


def test_a_pickled_entry_is_refused(saved: tuple[RouterModel, Path], tmp_path: Path) -> None:
    _, path = saved
    meta, arrays = read_raw(path)
    arrays["weights"] = np.array([{"evil": 1}], dtype=object)
    with pytest.raises(ModelError, match="not a readable model file"):
        load_model(write_raw(tmp_path / "bad.npz", meta, arrays, reseal=False))


def test_score_at_level_is_the_scores_of_that_expected_level_without_gain() -> None:
    """The level bound of calibration rests on it (router/training/calibrate.py)."""
    formula = ScoreFormula(SCORE_GATED_LEVEL, level_weight=1.5, bias=-3.0)
    assert formula.score_at_level(2.0) == 0.5
    assert ScoreFormula(SCORE_LEVEL_GAIN, level_weight=1.5, bias=-3.0).score_at_level(2.0) == 0.5
    assert formula.score_at_level(1.5) == pytest.approx(1.0 / (1.0 + math.exp(0.75)))
    assert formula.score_at_level(1.0) < formula.score_at_level(1.5) < 0.5  # type: ignore[operator]
    assert ScoreFormula(SCORE_PLACEMENT_GAIN, placement_weight=6.0).score_at_level(1.5) is None
