"""The routing model artifact: featurizer settings, keyword rules, weights, thresholds.

One ``.npz`` file (numpy's zip of arrays, read with ``allow_pickle=False``) holds a JSON
``meta`` entry and the arrays. ``meta.checksum`` is the SHA-256 of the canonical meta
(without the checksum) and of every array's bytes, so a corrupt or edited file is an
error at load. Weights are stored as float16 and kept so in memory (the fast path reads
halves: half the bytes to fetch per n-gram); training makes float32 ones.

Format versions: 2 names its score formula in ``meta.score`` (``ScoreFormula``); 1 (the
models before it) had ``meta.score_gate``, the weight of the placement head in the only
formula there was, and still loads and scores as it did.
"""

from __future__ import annotations

import hashlib
import json
import math
import tokenize
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from router import _fastpath_py
from router._fastpath_py import Weights
from router.fastpath import (
    FEATURIZER_VERSION,
    HEADS,
    LEVELS,
    SCORE_GATED_LEVEL,
    SCORE_LEVEL_GAIN,
    SCORE_PLACEMENT_GAIN,
    FastPath,
)

FORMAT = "modelrouter-model"
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
_FORMULA_NAMES = {
    SCORE_GATED_LEVEL: "gated_level",
    SCORE_LEVEL_GAIN: "level_gain",
    SCORE_PLACEMENT_GAIN: "placement_gain",
}
DEFAULT_MODEL = "default.npz"


class ModelError(ValueError):
    """The model file is missing, corrupt, or made for another featurizer."""


def dense_layout_fingerprint() -> str:
    """Return a digest of the code's dense-feature layout (names and bin edges)."""
    text = json.dumps(_fastpath_py.DENSE_EDGES, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Rule:
    """A keyword rule: fires when any of its phrases occurs in the query (as tokens).

    ``level`` is the complexity level the phrases suggest; training turns it into a prior
    on the rule's weights (router/training/fit.py).
    """

    name: str
    phrases: tuple[str, ...]
    level: int | None = None


@dataclass(frozen=True, slots=True)
class ScoreFormula:
    """How the heads make the score (``router/_fastpath_py.py``, ``FastPath.score``).

    ``gated_level`` (what training makes): sigmoid(level_weight * ((1 - g) * E[level] +
    g * outcome level + length_weight * (log1p(bytes) - length_center)) + bias), g =
    sigmoid(gate), the outcome level being the gain head's logit and bytes the query's
    normalised length (files saved before the length term have length_weight 0).
    ``level_gain`` (earlier format-2 files): sigmoid(level_weight * E[level] +
    sigmoid(gate) * gain + bias). ``placement_gain`` (format-1 files): sigmoid(gain +
    placement_weight * sigmoid(placement)), where head 6 is the placement logit.
    """

    formula: int = SCORE_GATED_LEVEL
    level_weight: float = 0.0
    bias: float = 0.0
    placement_weight: float = 0.0
    length_weight: float = 0.0
    length_center: float = 0.0

    def score_at_level(self, level: float) -> float | None:
        """Return the score of a query of level ``level`` and of the center length: its
        expected level where the gate is shut, or its expected and outcome levels both
        (None for ``placement_gain``, whose score is not built on the level)."""
        if self.formula == SCORE_PLACEMENT_GAIN:
            return None
        return 1.0 / (1.0 + math.exp(-(self.level_weight * level + self.bias)))

    def to_json(self) -> dict[str, Any]:
        if self.formula == SCORE_PLACEMENT_GAIN:
            return {"formula": "placement_gain", "placement_weight": self.placement_weight}
        saved: dict[str, Any] = {
            "formula": _FORMULA_NAMES[self.formula],
            "level_weight": self.level_weight,
            "bias": self.bias,
        }
        if self.formula == SCORE_GATED_LEVEL:
            saved["length_weight"] = self.length_weight
            saved["length_center"] = self.length_center
        return saved

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScoreFormula:
        names = {name: number for number, name in _FORMULA_NAMES.items()}
        if data.get("formula") not in names:
            raise ValueError(f"unknown score formula {data.get('formula')!r}")
        if names[data["formula"]] == SCORE_PLACEMENT_GAIN:
            return cls(SCORE_PLACEMENT_GAIN, placement_weight=float(data["placement_weight"]))
        return cls(
            names[data["formula"]],
            level_weight=float(data["level_weight"]),
            bias=float(data["bias"]),
            # Absent from files saved before the length term: no length term.
            length_weight=float(data.get("length_weight", 0.0)),
            length_center=float(data.get("length_center", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class FeaturizerSpec:
    """Everything that decides which features a text gets; saved with the weights."""

    seed: int = 0x6D6F64656C726F75  # "modelrou"
    buckets_log2: int = 18
    word_max: int = 2
    char_min: int = 3
    char_max: int = 5
    max_bytes: int = 32 * 1024
    rules: tuple[Rule, ...] = ()
    featurizer_version: int = FEATURIZER_VERSION
    dense_layout: str = field(default_factory=dense_layout_fingerprint)

    @property
    def n_features(self) -> int:
        return (1 << self.buckets_log2) + _fastpath_py.N_DENSE + len(self.rules)

    def fastpath(
        self,
        weights: Weights | None = None,
        bias: npt.NDArray[np.float64] | None = None,
        implementation: type[_fastpath_py.FastPath] = FastPath,
        score: ScoreFormula = ScoreFormula(),
    ) -> _fastpath_py.FastPath:
        """Return a fast path over these settings (zero weights when none are given)."""
        if weights is None:
            weights = np.zeros((self.n_features, HEADS), dtype=np.float32)
        if bias is None:
            bias = np.zeros(HEADS, dtype=np.float64)
        return implementation(
            seed=self.seed,
            buckets_log2=self.buckets_log2,
            word_max=self.word_max,
            char_min=self.char_min,
            char_max=self.char_max,
            max_bytes=self.max_bytes,
            rule_phrases=[r.phrases for r in self.rules],
            weights=weights,
            bias=bias,
            score_formula=score.formula,
            level_weight=score.level_weight,
            score_bias=score.bias,
            placement_weight=score.placement_weight,
            length_weight=score.length_weight,
            length_center=score.length_center,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "buckets_log2": self.buckets_log2,
            "word_max": self.word_max,
            "char_min": self.char_min,
            "char_max": self.char_max,
            "max_bytes": self.max_bytes,
            "rules": [
                {"name": r.name, "phrases": list(r.phrases), "level": r.level} for r in self.rules
            ],
            "featurizer_version": self.featurizer_version,
            "dense_layout": self.dense_layout,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeaturizerSpec:
        rules = tuple(Rule(r["name"], tuple(r["phrases"]), r.get("level")) for r in data["rules"])
        return cls(
            seed=int(data["seed"]),
            buckets_log2=int(data["buckets_log2"]),
            word_max=int(data["word_max"]),
            char_min=int(data["char_min"]),
            char_max=int(data["char_max"]),
            max_bytes=int(data["max_bytes"]),
            rules=rules,
            featurizer_version=int(data["featurizer_version"]),
            dense_layout=str(data["dense_layout"]),
        )


@dataclass(frozen=True)
class RouterModel:
    """A trained routing model with its calibrated operating point."""

    spec: FeaturizerSpec
    # (n_features, HEADS): 5 level logits, the gain logit, the gate logit; float16 as saved
    # and loaded, float32 as training makes them.
    weights: Weights
    bias: npt.NDArray[np.float64]  # (HEADS,)
    tier_names: tuple[str, ...]
    thresholds: tuple[float, ...]
    score: ScoreFormula = field(default_factory=ScoreFormula)
    name: str = "model"
    info: Mapping[str, Any] = field(default_factory=dict)
    checksum: str = ""

    @property
    def version(self) -> str:
        """Return ``name-<first 12 hex digits of the checksum>``."""
        return f"{self.name}-{self.checksum[:12]}"

    @cached_property
    def rule_names(self) -> tuple[str, ...]:
        """Return the rule names in bit order (cached: decisions with fired rules read them)."""
        return tuple(r.name for r in self.spec.rules)

    def rule_names_for(self, mask: int) -> tuple[str, ...]:
        """Return the names of the rules set in a fired-rules bit mask."""
        if not mask:
            return ()
        names = self.rule_names
        return tuple(names[i] for i in range(len(names)) if mask >> i & 1)

    def fastpath(
        self, implementation: type[_fastpath_py.FastPath] = FastPath
    ) -> _fastpath_py.FastPath:
        """Return a fast path scoring with this model's weights."""
        return self.spec.fastpath(self.weights, self.bias, implementation, self.score)

    def with_operating_point(
        self, tier_names: Sequence[str], thresholds: Sequence[float], note: Mapping[str, Any]
    ) -> RouterModel:
        """Return a copy with new tiers and thresholds (and a calibration note in info)."""
        info = dict(self.info)
        info["calibration"] = dict(note)
        return replace(
            self,
            tier_names=tuple(tier_names),
            thresholds=tuple(float(t) for t in thresholds),
            info=info,
        )


def _meta_without_checksum(model: RouterModel) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": model.name,
        "featurizer": model.spec.to_json(),
        "heads": HEADS,
        "score": model.score.to_json(),
        "tier_names": list(model.tier_names),
        "thresholds": list(model.thresholds),
        "info": dict(model.info),
    }


def _digest(meta: Mapping[str, Any], arrays: Mapping[str, npt.NDArray[Any]]) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    for key in sorted(arrays):
        h.update(key.encode())
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()


def save_model(model: RouterModel, path: str | Path) -> RouterModel:
    """Write the model to ``path`` and return it with its checksum filled in."""
    arrays: dict[str, npt.NDArray[Any]] = {
        "weights": np.ascontiguousarray(model.weights, dtype=np.float16),
        "bias": np.ascontiguousarray(model.bias, dtype=np.float64),
    }
    meta = _meta_without_checksum(model)
    checksum = _digest(meta, arrays)
    meta["checksum"] = checksum
    meta_bytes = np.frombuffer(json.dumps(meta, sort_keys=True, indent=1).encode(), dtype=np.uint8)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as fh:
            np.savez_compressed(fh, meta=meta_bytes, weights=arrays["weights"], bias=arrays["bias"])
        tmp.replace(path)
    finally:
        # Gone once it replaced the file; a failed write (or Ctrl-C) must not leave it.
        tmp.unlink(missing_ok=True)
    return replace(model, checksum=checksum, weights=arrays["weights"])


def load_model(path: str | Path) -> RouterModel:
    """Read and verify a model file; raise ModelError naming what is wrong."""
    try:
        # Our own file object: np.load leaks the one it opens when the zip is unreadable.
        with open(path, "rb") as fh:
            npz = np.load(fh, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an .npz archive")
            with npz:
                arrays = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise ModelError(f"{path}: no such model file") from None
    # What zipfile and numpy raise on damaged bytes: a bad deflate stream (zlib.error), a
    # mangled .npy header (TokenError), a flipped flag bit read as encryption (RuntimeError)
    # or as an unknown compression method (NotImplementedError).
    except (
        OSError,
        ValueError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
        tokenize.TokenError,
        RuntimeError,
        NotImplementedError,
    ) as exc:
        raise ModelError(f"{path}: not a readable model file ({exc})") from None
    for key in ("meta", "weights", "bias"):
        if key not in arrays:
            raise ModelError(f"{path}: not a model file (no {key!r} entry)")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: corrupt metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{path}: corrupt metadata (not a JSON object)")
    if meta.get("format") != FORMAT or meta.get("format_version") not in READABLE_FORMAT_VERSIONS:
        raise ModelError(
            f"{path}: format {meta.get('format')!r} v{meta.get('format_version')}, "
            f"expected {FORMAT!r} v{' or v'.join(map(str, READABLE_FORMAT_VERSIONS))}"
        )
    checksum = meta.pop("checksum", "")
    if _digest(meta, arrays) != checksum:
        raise ModelError(f"{path}: checksum mismatch: the file is corrupt or was edited")
    try:
        spec = FeaturizerSpec.from_json(meta["featurizer"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: bad featurizer settings ({exc})") from None
    try:
        if meta["format_version"] == 1:
            score = ScoreFormula(SCORE_PLACEMENT_GAIN, placement_weight=float(meta["score_gate"]))
        else:
            score = ScoreFormula.from_json(meta["score"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: bad score formula ({exc})") from None
    if spec.featurizer_version != FEATURIZER_VERSION:
        raise ModelError(
            f"{path}: trained with featurizer version {spec.featurizer_version}, "
            f"this code computes version {FEATURIZER_VERSION}: retrain the model"
        )
    if spec.dense_layout != dense_layout_fingerprint():
        raise ModelError(
            f"{path}: dense feature layout {spec.dense_layout} differs from the code's "
            f"{dense_layout_fingerprint()}: retrain the model"
        )
    weights, bias = arrays["weights"], arrays["bias"]
    if weights.shape != (spec.n_features, HEADS) or bias.shape != (HEADS,):
        raise ModelError(
            f"{path}: weights {weights.shape} / bias {bias.shape} do not fit the featurizer "
            f"({spec.n_features} features, {HEADS} heads)"
        )
    if meta.get("heads") != HEADS:
        raise ModelError(f"{path}: {meta.get('heads')} heads, this code scores {HEADS}")
    return RouterModel(
        spec=spec,
        weights=weights.astype(np.float16),
        bias=bias.astype(np.float64),
        tier_names=tuple(meta["tier_names"]),
        thresholds=tuple(float(t) for t in meta["thresholds"]),
        score=score,
        name=str(meta["name"]),
        info=meta["info"],
        checksum=checksum,
    )


def default_model_path() -> Path:
    """Return the path of the model shipped inside the package."""
    return Path(str(resources.files("router") / "models" / DEFAULT_MODEL))


__all__ = [
    "LEVELS",
    "FeaturizerSpec",
    "ModelError",
    "RouterModel",
    "Rule",
    "ScoreFormula",
    "default_model_path",
    "load_model",
    "save_model",
]
