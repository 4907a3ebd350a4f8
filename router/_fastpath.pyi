"""Types of the compiled fast path (router/_fastpath.pyx); the twin has the same API."""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from router._fastpath_py import Weights

def _set_f16c(on: bool) -> bool: ...

class FastPath:
    seed: int
    buckets_log2: int
    word_max: int
    char_min: int
    char_max: int
    rule_len: int
    max_bytes: int
    n_buckets: int
    n_rules: int
    n_features: int
    n_heads: int
    score_formula: int
    level_weight: float
    score_bias: float
    placement_weight: float
    length_weight: float
    length_center: float
    def __init__(
        self,
        *,
        seed: int,
        buckets_log2: int,
        word_max: int,
        char_min: int,
        char_max: int,
        max_bytes: int,
        rule_phrases: Sequence[Sequence[str]],
        weights: Weights,
        bias: npt.NDArray[np.float64],
        score_formula: int = 3,
        level_weight: float = 0.0,
        score_bias: float = 0.0,
        placement_weight: float = 0.0,
        length_weight: float = 0.0,
        length_center: float = 0.0,
    ) -> None: ...
    def features(self, text: str) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float64], int]: ...
    def logits(
        self, text: str, context: str = "", context_weight: float = 0.0
    ) -> tuple[list[float], int]: ...
    def score(
        self, text: str, context: str = "", context_weight: float = 0.0
    ) -> tuple[float, tuple[float, ...], int]: ...
