"""The pure-Python twin of ``router/_fastpath.pyx``: same functions, bit-identical results.

It is the reference the compiled module is tested against, and what runs where the
extension could not be built. Read this file to learn what the fast path computes;
read the ``.pyx`` to see how it does so without a Python object per token.

The algorithm (FEATURIZER_VERSION 1):

1. Normalise: keep the first ``max_bytes`` characters; ASCII text is lower-cased, other
   text is NFKC-normalised and case-folded; encode to UTF-8 (lone surrogates pass
   through) and keep the first ``max_bytes`` bytes.
2. Scan the bytes once: count the dense statistics, collapse each whitespace run to one
   space, map every digit to ``0`` (numbers matter by shape, not value), and pad the
   result with one space on each side.
3. Char n-grams: every ``char_min..char_max``-byte window of the padded buffer is hashed
   with xxh3-64 (seed + 1).
4. Tokens: a run of word bytes (ASCII letters, digits, ``_`` and every byte >= 0x80) or a
   single other non-space byte. A token's hash is xxh3-64 of its bytes (seed); an n-gram
   of tokens chains the previous hash with the next token's: xxh3-64 of the two hashes as
   little-endian uint64 (seed + 2). Word n-grams of 1..``word_max`` tokens are features;
   chains up to the longest rule phrase are also looked up in the rule table.
5. Signed hashing: feature index = hash mod 2**buckets_log2, sign = the hash's top bit.
   Word features are scaled by 1/sqrt(number of word n-grams), char features by
   1/sqrt(number of char n-grams); dense bins and fired rules have value 1.
6. Logits: per head, logit = bias + scale_w * sum(word weights) + scale_c * sum(char
   weights) + sum(dense and rule weights), each sum accumulated in float64 in emission
   order; a chat's earlier turns add ``context_weight`` times their own sums.
7. Outputs: level probabilities = softmax(heads 0-4); the score by the model's formula:
   ``SCORE_GATED_LEVEL`` (the models trained now): sigmoid(level_weight * ((1 - g) *
   E[level] + g * outcome level + length_weight * (log1p(bytes) - length_center)) +
   score_bias), g = sigmoid(gate head), the outcome level being the gain head, E[level] =
   sum of k * P(level k), bytes the query's normalised length (step 1; a chat's last
   turn, not its context);
   ``SCORE_LEVEL_GAIN`` (earlier format-2 models): sigmoid(level_weight * E[level] +
   sigmoid(gate head) * gain head + score_bias);
   ``SCORE_PLACEMENT_GAIN`` (format-1 models): sigmoid(gain head + placement_weight *
   sigmoid(placement head)).
"""

from __future__ import annotations

import math
import struct
import unicodedata
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import xxhash

FEATURIZER_VERSION = 1
LEVELS = 5
# Heads: 5 level logits (softmax), the gain logit and the gate logit (which the format-1
# formula reads as the placement logit).
GAIN_HEAD = LEVELS
GATE_HEAD = LEVELS + 1
HEADS = LEVELS + 2
# Score formulas, by number (the model file's score.formula).
SCORE_PLACEMENT_GAIN = 1
SCORE_LEVEL_GAIN = 2
SCORE_GATED_LEVEL = 3
SCORE_FORMULAS = (SCORE_PLACEMENT_GAIN, SCORE_LEVEL_GAIN, SCORE_GATED_LEVEL)

# Weights as model files hold them (float16) or as training makes them (float32): both
# paths read the same values, widened exactly to float64.
Weights = npt.NDArray[np.float16] | npt.NDArray[np.float32]

_xxh3 = xxhash.xxh3_64_intdigest
_PAIR = struct.Struct("<QQ")
_WHITESPACE = frozenset(b" \t\n\r\x0b\x0c")
_MATH = frozenset(b"+-*/=^<>%|")
_CODE = frozenset(b"{}[]();`#_\\$@")
_DIGITS = frozenset(b"0123456789")
_TOP_BIT = 1 << 63
_MASK64 = (1 << 64) - 1

# Dense statistics, each one-hot encoded into bins: a value v falls in bin i when
# EDGES[i] <= v < EDGES[i + 1] (the last bin is open).
DENSE_EDGES: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("bytes", (0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)),
    ("words", (0, 3, 6, 11, 21, 41, 81, 161, 321)),
    ("questions", (0, 1, 2, 3, 5)),
    ("numbers", (0, 1, 2, 3, 5, 9, 17)),
    ("math", (0, 1, 3, 6, 11, 21)),
    ("lines", (0, 1, 2, 5, 11, 31)),
    ("code", (0, 1, 3, 7, 16, 41)),
    ("ends_question", (0, 1)),
)
N_DENSE = sum(len(edges) for _, edges in DENSE_EDGES)


# The longest byte n-gram a model may hash (the compiled path hashes at most 16 bytes).
MAX_CHAR_GRAM = 8


def query_length(n_bytes: int) -> float:
    """Return the length the score reads: log1p of the normalised byte count."""
    return math.log1p(n_bytes)


def _is_word_byte(b: int) -> bool:
    return b >= 0x80 or b == 0x5F or 0x30 <= b <= 0x39 or 0x61 <= b <= 0x7A or 0x41 <= b <= 0x5A


def normalize(text: str, max_bytes: int) -> bytes:
    """Return the normalised UTF-8 bytes the features are computed from."""
    text = text[:max_bytes]
    text = text.lower() if text.isascii() else unicodedata.normalize("NFKC", text).casefold()
    return text.encode("utf-8", "surrogatepass")[:max_bytes]


def _scan(raw: bytes) -> tuple[bytes, list[int]]:
    """Return the padded feature buffer and the raw dense statistics of normalised bytes."""
    out = bytearray(b" ")
    questions = math_symbols = code = lines = digits_run = numbers = 0
    in_space = True
    for b in raw:
        if b in _WHITESPACE:
            if b == 0x0A:
                lines += 1
            if not in_space:
                out.append(0x20)
                in_space = True
            digits_run = 0
            continue
        in_space = False
        if b in _DIGITS:
            if not digits_run:
                numbers += 1
            digits_run = 1
            out.append(0x30)
            continue
        digits_run = 0
        if b == 0x3F:
            questions += 1
        elif b in _MATH:
            math_symbols += 1
        if b in _CODE:
            code += 1
        out.append(b)
    if not in_space:
        out.append(0x20)
    stripped = raw.rstrip(b" \t\n\r\x0b\x0c")
    ends_question = 1 if stripped.endswith(b"?") else 0
    # "words" is filled in by the tokenizer.
    return bytes(out), [len(raw), 0, questions, numbers, math_symbols, lines, code, ends_question]


def _tokens(buf: bytes) -> list[tuple[int, int]]:
    """Return (start, end) of each token of the feature buffer."""
    spans = []
    i, n = 0, len(buf)
    while i < n:
        b = buf[i]
        if b == 0x20:
            i += 1
        elif _is_word_byte(b):
            j = i + 1
            while j < n and _is_word_byte(buf[j]):
                j += 1
            spans.append((i, j))
            i = j
        else:
            spans.append((i, i + 1))
            i += 1
    return spans


def _dense_indices(stats: Sequence[int], offset: int) -> list[int]:
    indices = []
    for (_, edges), value in zip(DENSE_EDGES, stats, strict=True):
        k = len(edges) - 1
        while value < edges[k]:
            k -= 1
        indices.append(offset + k)
        offset += len(edges)
    return indices


def phrase_chain(phrase: str, seed: int, max_bytes: int = 1 << 15) -> list[int]:
    """Return the chained hashes of a rule phrase's first 1, 2, ... tokens (as in queries)."""
    buf, _ = _scan(normalize(phrase, max_bytes))
    spans = _tokens(buf)
    if not spans:
        raise ValueError(f"rule phrase {phrase!r} has no tokens")
    chain = [_xxh3(buf[spans[0][0] : spans[0][1]], seed)]
    for s, e in spans[1:]:
        chain.append(_xxh3(_PAIR.pack(chain[-1], _xxh3(buf[s:e], seed)), seed + 2))
    return chain


def phrase_hash(phrase: str, seed: int, max_bytes: int = 1 << 15) -> tuple[int, int]:
    """Return (chained hash, token count) of a rule phrase, tokenized like queries."""
    chain = phrase_chain(phrase, seed, max_bytes)
    return chain[-1], len(chain)


def check_settings(
    *, buckets_log2: int, word_max: int, char_min: int, char_max: int, max_bytes: int, n_rules: int
) -> None:
    """Raise ValueError for featurizer settings neither fast path supports."""
    if not 1 <= word_max <= 4 or not 1 <= char_min <= char_max <= MAX_CHAR_GRAM:
        raise ValueError("n-gram ranges out of bounds (word 1..4, char 1..8)")
    if not 8 <= buckets_log2 <= 24:
        raise ValueError("buckets_log2 must be in 8..24")
    if n_rules > 64:
        raise ValueError("at most 64 keyword rules")
    if max_bytes < 1:
        raise ValueError("max_bytes must be positive")


def rule_table(
    rule_phrases: Sequence[Sequence[str]], seed: int, max_bytes: int
) -> tuple[dict[int, int], int]:
    """Return phrase hash -> rule index (the first rule wins) and the longest phrase in tokens."""
    table: dict[int, int] = {}
    longest = 0
    for rule_id, phrases in enumerate(rule_phrases):
        for phrase in phrases:
            h, n = phrase_hash(phrase, seed, max_bytes)
            table.setdefault(h, rule_id)
            longest = max(longest, n)
    return table, longest


def rule_prefixes(rule_phrases: Sequence[Sequence[str]], seed: int, max_bytes: int) -> set[int]:
    """Return the chained hashes of every proper prefix of every rule phrase.

    A query's token chain that is not among them cannot grow into a phrase, so the
    compiled path stops extending it there (the same rules fire, with fewer hashes).
    """
    return {
        h
        for phrases in rule_phrases
        for phrase in phrases
        for h in phrase_chain(phrase, seed, max_bytes)[:-1]
    }


def check_score_formula(formula: int) -> None:
    """Raise ValueError for a score formula neither fast path computes."""
    if formula not in SCORE_FORMULAS:
        raise ValueError(f"unknown score formula {formula!r} (known: {list(SCORE_FORMULAS)})")


def checked_weights(weights: Weights, bias: npt.NDArray[np.float64], n_features: int) -> Weights:
    """Return the weights as a C-contiguous float16 or float32 matrix, checking both shapes."""
    weights = (
        np.ascontiguousarray(weights, dtype=np.float16)
        if weights.dtype == np.float16
        else np.ascontiguousarray(weights, dtype=np.float32)
    )
    if weights.ndim != 2 or weights.shape[0] != n_features:
        raise ValueError(f"weights must have shape ({n_features}, heads)")
    if weights.shape[1] != HEADS:
        raise ValueError(f"weights must have {HEADS} heads (5 levels, gain, gate)")
    if bias.shape != (HEADS,):
        raise ValueError(f"bias must have shape ({HEADS},)")
    return weights


class FastPath:
    """Featurize and score queries with one linear model (the pure-Python twin)."""

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
        score_formula: int = SCORE_GATED_LEVEL,
        level_weight: float = 0.0,
        score_bias: float = 0.0,
        placement_weight: float = 0.0,
        length_weight: float = 0.0,
        length_center: float = 0.0,
    ) -> None:
        check_score_formula(score_formula)
        check_settings(
            buckets_log2=buckets_log2,
            word_max=word_max,
            char_min=char_min,
            char_max=char_max,
            max_bytes=max_bytes,
            n_rules=len(rule_phrases),
        )
        self.seed = seed & _MASK64
        self.buckets_log2 = buckets_log2
        self.word_max = word_max
        self.char_min = char_min
        self.char_max = char_max
        self.max_bytes = max_bytes
        self.n_buckets = 1 << buckets_log2
        self.n_rules = len(rule_phrases)
        self.n_features = self.n_buckets + N_DENSE + self.n_rules
        self.rule_table, self.rule_len = rule_table(rule_phrases, self.seed, max_bytes)
        weights = checked_weights(weights, bias, self.n_features)
        self.n_heads = HEADS
        # Python floats are float64: the same values the compiled path reads.
        self._w = weights.astype(np.float64).tolist()
        self._bias = [float(b) for b in bias]
        self.score_formula = score_formula
        self.level_weight = float(level_weight)
        self.score_bias = float(score_bias)
        self.placement_weight = float(placement_weight)
        self.length_weight = float(length_weight)
        self.length_center = float(length_center)

    # -- featurization ---------------------------------------------------------------

    def _walk(self, text: str) -> tuple[list[int], list[int], list[int], int]:
        """Return word hashes, char hashes, dense indices and the fired-rules mask."""
        seed, seed_c, seed_p = self.seed, (self.seed + 1) & _MASK64, (self.seed + 2) & _MASK64
        buf, stats = _scan(normalize(text, self.max_bytes))
        spans = _tokens(buf)
        word_hashes: list[int] = []
        rules = 0
        chain_len = max(self.word_max, self.rule_len)
        token_hashes = [_xxh3(buf[s:e], seed) for s, e in spans]
        words = 0
        for i, h in enumerate(token_hashes):
            if _is_word_byte(buf[spans[i][0]]):
                words += 1
            g = h
            for n in range(1, chain_len + 1):
                if n > 1:
                    if i + n - 1 >= len(token_hashes):
                        break
                    g = _xxh3(_PAIR.pack(g, token_hashes[i + n - 1]), seed_p)
                if n <= self.word_max:
                    word_hashes.append(g)
                rule_id = self.rule_table.get(g)
                if rule_id is not None:
                    rules |= 1 << rule_id
        stats[1] = words
        char_hashes = [
            _xxh3(buf[i : i + n], seed_c)
            for n in range(self.char_min, self.char_max + 1)
            for i in range(len(buf) - n + 1)
        ]
        return word_hashes, char_hashes, _dense_indices(stats, self.n_buckets), rules

    def _signed(self, h: int) -> tuple[int, float]:
        return h & (self.n_buckets - 1), (-1.0 if h & _TOP_BIT else 1.0)

    def features(self, text: str) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float64], int]:
        """Return the feature indices, their values (in emission order) and the rules mask."""
        word_hashes, char_hashes, dense, rules = self._walk(text)
        indices: list[int] = []
        values: list[float] = []
        for hashes in (word_hashes, char_hashes):
            if hashes:
                scale = 1.0 / math.sqrt(len(hashes))
                for h in hashes:
                    idx, sign = self._signed(h)
                    indices.append(idx)
                    values.append(sign * scale)
        indices.extend(dense)
        values.extend([1.0] * len(dense))
        rule_base = self.n_buckets + N_DENSE
        for rule_id in range(self.n_rules):
            if rules >> rule_id & 1:
                indices.append(rule_base + rule_id)
                values.append(1.0)
        return np.array(indices, dtype=np.int32), np.array(values, dtype=np.float64), rules

    # -- scoring ---------------------------------------------------------------------

    def _accumulate(self, text: str, weight: float, logits: list[float]) -> int:
        word_hashes, char_hashes, dense, rules = self._walk(text)
        w = self._w
        for hashes in (word_hashes, char_hashes):
            if not hashes:
                continue
            sums = [0.0] * self.n_heads
            for h in hashes:
                idx, sign = self._signed(h)
                row = w[idx]
                for k in range(self.n_heads):
                    sums[k] += sign * row[k]
            scale = weight / math.sqrt(len(hashes))
            for k in range(self.n_heads):
                logits[k] += scale * sums[k]
        rule_base = self.n_buckets + N_DENSE
        extra = dense + [rule_base + r for r in range(self.n_rules) if rules >> r & 1]
        for idx in extra:
            row = w[idx]
            for k in range(self.n_heads):
                logits[k] += weight * row[k]
        return rules

    def logits(
        self, text: str, context: str = "", context_weight: float = 0.0
    ) -> tuple[list[float], int]:
        """Return the heads' logits and the fired-rules mask of a query (and its context)."""
        logits = list(self._bias)
        rules = self._accumulate(text, 1.0, logits)
        if context and context_weight > 0.0:
            rules |= self._accumulate(context, context_weight, logits)
        return logits, rules

    def score(
        self, text: str, context: str = "", context_weight: float = 0.0
    ) -> tuple[float, tuple[float, ...], int]:
        """Return the difficulty score, the level probabilities and the fired-rules mask.

        Heads 0-4 are the level logits (softmax). With ``SCORE_GATED_LEVEL`` the score is
        sigmoid(level_weight * ((1 - g) * E[level] + g * outcome level + length level) +
        score_bias): the expected level carries general difficulty, the gain head (read as
        a level) where the outcomes place the query, and the gate head g = sigmoid(gate)
        how much the query is like the rows with outcomes that taught the gain head; the
        length level, length_weight * (log1p(bytes) - length_center), ranks a source's
        longer queries above its shorter ones (``query_length``). With
        ``SCORE_LEVEL_GAIN`` (earlier format-2 models) it is sigmoid(level_weight *
        E[level] + sigmoid(gate) * gain + score_bias); with ``SCORE_PLACEMENT_GAIN``
        (format-1 models) sigmoid(gain + placement_weight * sigmoid(placement)).
        """
        logits, rules = self.logits(text, context, context_weight)
        top = max(logits[:LEVELS])
        exps = [math.exp(v - top) for v in logits[:LEVELS]]
        total = 0.0
        for e in exps:
            total += e
        levels = tuple(e / total for e in exps)
        if self.score_formula == SCORE_GATED_LEVEL:
            expected = 0.0
            for k, p in enumerate(levels):
                expected += k * p
            g = _sigmoid(logits[GATE_HEAD])
            length = self.length_weight * (
                query_length(len(normalize(text, self.max_bytes))) - self.length_center
            )
            z = (
                self.level_weight * ((1.0 - g) * expected + g * logits[GAIN_HEAD] + length)
                + self.score_bias
            )
        elif self.score_formula == SCORE_LEVEL_GAIN:
            expected = 0.0
            for k, p in enumerate(levels):
                expected += k * p
            z = (
                self.level_weight * expected
                + _sigmoid(logits[GATE_HEAD]) * logits[GAIN_HEAD]
                + self.score_bias
            )
        else:
            z = logits[GAIN_HEAD] + self.placement_weight * _sigmoid(logits[GATE_HEAD])
        return _sigmoid(z), levels, rules


def _sigmoid(x: float) -> float:
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)
