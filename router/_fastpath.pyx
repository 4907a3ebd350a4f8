# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""The compiled fast path: featurize and score a query with no Python object per token.

Same functions, same results as ``router/_fastpath_py.py`` (read that for the algorithm).
Here the normalised bytes are scanned once into a buffer owned by the instance, token
spans and hashes go into reusable C arrays, xxh3 is called through xxHash's C API
(inlined from the vendored ``third_party/xxhash/xxhash.h``), and the weights are read
through a raw pointer.

The GIL is held throughout: the service runs one event-loop thread per process, so
releasing it would cost more than it gives, and holding it makes the instance's scratch
buffers safe to reuse across calls.
"""

from libc.math cimport exp, sqrt
from libc.stdint cimport int32_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc

import unicodedata

import numpy as np

from router._fastpath_py import (
    DENSE_EDGES,
    N_DENSE,
    SCORE_LEVEL_GAIN,
    check_score_formula,
    check_settings,
    checked_weights,
    rule_table,
)
from router._fastpath_py import HEADS as _PY_HEADS
from router._fastpath_py import LEVELS as _PY_LEVELS

cdef extern from *:
    """
    #define XXH_INLINE_ALL
    #include "xxhash.h"
    """
    uint64_t XXH3_64bits_withSeed(const void* data, size_t length, uint64_t seed) nogil

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object)
    void* PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)

cdef enum:
    LEVELS = 5
    GAIN_HEAD = 5
    GATE_HEAD = 6
    HEADS = 7
    LEVEL_GAIN = 2
    MAX_DENSE_STATS = 8
    MAX_EDGES = 16

if (LEVELS, HEADS, LEVEL_GAIN) != (_PY_LEVELS, _PY_HEADS, SCORE_LEVEL_GAIN):
    raise ImportError("router._fastpath was built for another head layout than the twin's")

cdef uint64_t TOP_BIT = (<uint64_t>1) << 63

# Byte classes: bit 1 whitespace, 2 word byte, 4 digit, 8 maths symbol, 16 code symbol.
cdef uint8_t BYTE_CLASS[256]


cdef void _init_byte_classes():
    cdef int b
    for b in range(256):
        BYTE_CLASS[b] = 0
    for b in b" \t\n\r\x0b\x0c":
        BYTE_CLASS[b] |= 1
    for b in range(256):
        if b >= 0x80 or b == 0x5F or 0x30 <= b <= 0x39 or 0x61 <= b <= 0x7A or 0x41 <= b <= 0x5A:
            BYTE_CLASS[b] |= 2
    for b in b"0123456789":
        BYTE_CLASS[b] |= 4
    for b in b"+-*/=^<>%|":
        BYTE_CLASS[b] |= 8
    for b in b"{}[]();`#_\\$@":
        BYTE_CLASS[b] |= 16


_init_byte_classes()


cdef inline uint64_t _pair_hash(uint64_t a, uint64_t b, uint64_t seed) noexcept nogil:
    # Native-order uint64 pair; the twin packs struct.pack("<QQ"), so the two agree only on
    # little-endian machines, and setup.py builds the extension only there.
    cdef uint64_t pair[2]
    pair[0] = a
    pair[1] = b
    return XXH3_64bits_withSeed(pair, 16, seed)


cdef inline double _sigmoid(double x) noexcept nogil:
    cdef double e
    if x >= 0.0:
        return 1.0 / (1.0 + exp(-x))
    e = exp(x)
    return e / (1.0 + e)


cdef class FastPath:
    """Featurize and score queries with one linear model (compiled)."""

    cdef readonly uint64_t seed
    cdef readonly int buckets_log2, word_max, char_min, char_max, rule_len
    cdef readonly Py_ssize_t max_bytes, n_buckets, n_rules, n_features, n_heads
    cdef uint64_t mask
    # Weights (n_features x HEADS, float32) and bias, kept alive by the arrays.
    cdef const float[:, ::1] _weights_view
    cdef const float* w
    cdef double bias[HEADS]
    # The score formula (see score()) and its parameters.
    cdef readonly int score_formula
    cdef readonly double level_weight, score_bias, placement_weight
    # Rule table: open addressing on the chained phrase hash.
    cdef uint64_t* rule_keys
    cdef int* rule_ids
    cdef uint64_t rule_mask
    # Dense bins.
    cdef int n_stats
    cdef int edges_len[MAX_DENSE_STATS]
    cdef long edges[MAX_DENSE_STATS][MAX_EDGES]
    # Per-call scratch, sized for max_bytes once.
    cdef uint8_t* buf
    cdef Py_ssize_t buf_len
    cdef uint64_t* tok_hash
    # Hashes of the word n-grams, then of the char n-grams, of the prepared text.
    cdef uint64_t* gram_hash
    cdef Py_ssize_t n_word, n_char
    cdef Py_ssize_t n_tokens
    cdef long stats[MAX_DENSE_STATS]
    cdef uint64_t rules_fired
    cdef object _unicode_normalize

    def __cinit__(self):
        self.rule_keys = NULL
        self.rule_ids = NULL
        self.buf = NULL
        self.tok_hash = NULL
        self.gram_hash = NULL

    def __init__(self, *, seed, buckets_log2, word_max, char_min, char_max, max_bytes,
                 rule_phrases, weights, bias, score_formula=SCORE_LEVEL_GAIN,
                 level_weight=0.0, score_bias=0.0, placement_weight=0.0):
        cdef Py_ssize_t i, slots
        cdef uint64_t h
        check_score_formula(score_formula)
        check_settings(buckets_log2=buckets_log2, word_max=word_max, char_min=char_min,
                       char_max=char_max, max_bytes=max_bytes, n_rules=len(rule_phrases))
        self.seed = seed & 0xFFFFFFFFFFFFFFFF
        self.buckets_log2 = buckets_log2
        self.word_max = word_max
        self.char_min = char_min
        self.char_max = char_max
        self.max_bytes = max_bytes
        self.n_buckets = 1 << buckets_log2
        self.mask = <uint64_t>(self.n_buckets - 1)
        self.n_rules = len(rule_phrases)
        self.n_features = self.n_buckets + N_DENSE + self.n_rules

        # Open-addressing rule table sized to a power of two at least four times the phrases.
        table, self.rule_len = rule_table(rule_phrases, self.seed, max_bytes)
        slots = 64
        while slots < 4 * len(table):
            slots *= 2
        self.rule_mask = <uint64_t>(slots - 1)
        self.rule_keys = <uint64_t*>malloc(slots * sizeof(uint64_t))
        self.rule_ids = <int*>malloc(slots * sizeof(int))
        if self.rule_keys == NULL or self.rule_ids == NULL:
            raise MemoryError()
        for i in range(slots):
            self.rule_ids[i] = -1
        for h_py, rule_id in table.items():
            h = h_py
            i = <Py_ssize_t>(h & self.rule_mask)
            while self.rule_ids[i] != -1:
                i = (i + 1) & <Py_ssize_t>self.rule_mask
            self.rule_keys[i] = h
            self.rule_ids[i] = rule_id

        weights = checked_weights(weights, bias, self.n_features)
        self.n_heads = HEADS
        self._weights_view = weights
        self.w = &self._weights_view[0, 0]
        for i in range(HEADS):
            self.bias[i] = float(bias[i])
        self.score_formula = score_formula
        self.level_weight = float(level_weight)
        self.score_bias = float(score_bias)
        self.placement_weight = float(placement_weight)

        self.n_stats = len(DENSE_EDGES)
        if self.n_stats > MAX_DENSE_STATS:
            raise ValueError("too many dense statistics for the compiled path")
        for i, (_, stat_edges) in enumerate(DENSE_EDGES):
            if len(stat_edges) > MAX_EDGES:
                raise ValueError("too many bins for the compiled path")
            self.edges_len[i] = len(stat_edges)
            for j, edge in enumerate(stat_edges):
                self.edges[i][j] = edge

        # Two bytes of padding; at most one token per byte.
        self.buf = <uint8_t*>malloc(max_bytes + 2)
        self.tok_hash = <uint64_t*>malloc((max_bytes + 2) * sizeof(uint64_t))
        self.gram_hash = <uint64_t*>malloc(
            (max_bytes + 2) * (word_max + char_max - char_min + 1) * sizeof(uint64_t))
        if self.buf == NULL or self.tok_hash == NULL or self.gram_hash == NULL:
            raise MemoryError()
        self._unicode_normalize = unicodedata.normalize

    def __dealloc__(self):
        free(self.rule_keys)
        free(self.rule_ids)
        free(self.buf)
        free(self.tok_hash)
        free(self.gram_hash)

    # -- normalisation and scanning ---------------------------------------------------

    cdef int _prepare(self, str text) except -1:
        """Normalise, scan and tokenize ``text`` into the scratch buffers."""
        cdef const uint8_t* raw
        cdef Py_ssize_t n, i, out, start
        cdef uint8_t b, cls
        cdef bint in_space = True, in_digits = False
        cdef long questions = 0, math_symbols = 0, code = 0, lines = 0, numbers = 0
        cdef long words = 0
        cdef int last = -1
        cdef bytes encoded
        if PyUnicode_IS_ASCII(text):
            # ASCII: one byte per character; lower-cased while scanning below.
            raw = <const uint8_t*>PyUnicode_DATA(text)
            n = PyUnicode_GET_LENGTH(text)
            if n > self.max_bytes:
                n = self.max_bytes
        else:
            sliced = text[:self.max_bytes]
            if sliced.isascii():
                folded = sliced.lower()
            else:
                folded = self._unicode_normalize("NFKC", sliced).casefold()
            encoded = folded.encode("utf-8", "surrogatepass")
            raw = <const uint8_t*>encoded
            n = len(encoded)
            if n > self.max_bytes:
                n = self.max_bytes

        self.buf[0] = 0x20
        out = 1
        for i in range(n):
            b = raw[i]
            if 0x41 <= b <= 0x5A:
                b += 0x20
            cls = BYTE_CLASS[b]
            if cls & 1:
                if b == 0x0A:
                    lines += 1
                if not in_space:
                    self.buf[out] = 0x20
                    out += 1
                    in_space = True
                in_digits = False
                continue
            in_space = False
            last = b
            if cls & 4:
                if not in_digits:
                    numbers += 1
                in_digits = True
                self.buf[out] = 0x30
                out += 1
                continue
            in_digits = False
            if b == 0x3F:
                questions += 1
            elif cls & 8:
                math_symbols += 1
            if cls & 16:
                code += 1
            self.buf[out] = b
            out += 1
        if not in_space:
            self.buf[out] = 0x20
            out += 1
        self.buf_len = out

        # Tokens: word-byte runs, or one other non-space byte.
        self.n_tokens = 0
        i = 0
        while i < out:
            b = self.buf[i]
            if b == 0x20:
                i += 1
                continue
            start = i
            if BYTE_CLASS[b] & 2:
                i += 1
                while i < out and BYTE_CLASS[self.buf[i]] & 2:
                    i += 1
                words += 1
            else:
                i += 1
            self.tok_hash[self.n_tokens] = XXH3_64bits_withSeed(
                self.buf + start, i - start, self.seed)
            self.n_tokens += 1

        self.stats[0] = n
        self.stats[1] = words
        self.stats[2] = questions
        self.stats[3] = numbers
        self.stats[4] = math_symbols
        self.stats[5] = lines
        self.stats[6] = code
        self.stats[7] = 1 if last == 0x3F else 0
        return 0

    cdef inline int _rule_lookup(self, uint64_t h) noexcept nogil:
        cdef Py_ssize_t i = <Py_ssize_t>(h & self.rule_mask)
        while self.rule_ids[i] != -1:
            if self.rule_keys[i] == h:
                return self.rule_ids[i]
            i = (i + 1) & <Py_ssize_t>self.rule_mask
        return -1

    cdef inline Py_ssize_t _dense_index(self, int stat) noexcept nogil:
        cdef int k = self.edges_len[stat] - 1
        while self.stats[stat] < self.edges[stat][k]:
            k -= 1
        return k

    # -- scoring ----------------------------------------------------------------------

    cdef void _add_row(self, double* sums, uint64_t h) noexcept nogil:
        cdef const float* row = self.w + (h & self.mask) * HEADS
        cdef int k
        if h & TOP_BIT:
            for k in range(HEADS):
                sums[k] += -1.0 * row[k]
        else:
            for k in range(HEADS):
                sums[k] += 1.0 * row[k]

    cdef void _hash_grams(self) noexcept:
        """Hash the prepared text's word and char n-grams into gram_hash; note fired rules."""
        cdef Py_ssize_t i, j = 0
        cdef int n, rule_id
        cdef int chain_len = self.word_max if self.word_max > self.rule_len else self.rule_len
        cdef uint64_t g
        cdef uint64_t seed_c = self.seed + 1
        cdef uint64_t seed_p = self.seed + 2
        self.rules_fired = 0
        for i in range(self.n_tokens):
            g = self.tok_hash[i]
            for n in range(1, chain_len + 1):
                if n > 1:
                    if i + n - 1 >= self.n_tokens:
                        break
                    g = _pair_hash(g, self.tok_hash[i + n - 1], seed_p)
                if n <= self.word_max:
                    self.gram_hash[j] = g
                    j += 1
                rule_id = self._rule_lookup(g)
                if rule_id >= 0:
                    self.rules_fired |= (<uint64_t>1) << rule_id
        self.n_word = j
        for n in range(self.char_min, self.char_max + 1):
            for i in range(self.buf_len - n + 1):
                self.gram_hash[j] = XXH3_64bits_withSeed(self.buf + i, n, seed_c)
                j += 1
        self.n_char = j - self.n_word

    cdef void _add_grams(self, double weight, double* logits, Py_ssize_t start,
                         Py_ssize_t count) noexcept:
        """Add weight/sqrt(count) times the signed rows of gram_hash[start:start+count]."""
        cdef double sums[HEADS]
        cdef double scale
        cdef Py_ssize_t i
        cdef int k
        if count == 0:
            return
        for k in range(HEADS):
            sums[k] = 0.0
        for i in range(start, start + count):
            self._add_row(sums, self.gram_hash[i])
        scale = weight / sqrt(<double>count)
        for k in range(HEADS):
            logits[k] += scale * sums[k]

    cdef void _accumulate(self, double weight, double* logits) noexcept:
        """Add ``weight`` times the prepared text's linear terms to ``logits``."""
        cdef const float* row
        cdef Py_ssize_t offset, idx
        cdef int k, stat, r
        self._hash_grams()
        self._add_grams(weight, logits, 0, self.n_word)
        self._add_grams(weight, logits, self.n_word, self.n_char)
        offset = self.n_buckets
        for stat in range(self.n_stats):
            idx = offset + self._dense_index(stat)
            row = self.w + idx * HEADS
            for k in range(HEADS):
                logits[k] += weight * row[k]
            offset += self.edges_len[stat]
        for r in range(self.n_rules):
            if self.rules_fired >> r & 1:
                row = self.w + (offset + r) * HEADS
                for k in range(HEADS):
                    logits[k] += weight * row[k]

    cdef uint64_t _logits(self, str text, str context, double context_weight,
                          double* logits) except? 0xFFFFFFFFFFFFFFFF:
        cdef uint64_t rules
        cdef int k
        for k in range(HEADS):
            logits[k] = self.bias[k]
        self._prepare(text)
        self._accumulate(1.0, logits)
        rules = self.rules_fired
        if context and context_weight > 0.0:
            self._prepare(context)
            self._accumulate(context_weight, logits)
            rules |= self.rules_fired
        return rules

    def logits(self, str text, str context="", double context_weight=0.0):
        """Return the heads' logits and the fired-rules mask of a query (and its context)."""
        cdef double logits[HEADS]
        rules = self._logits(text, context, context_weight, logits)
        return [logits[k] for k in range(HEADS)], rules

    def score(self, str text, str context="", double context_weight=0.0):
        """Return the difficulty score, the level probabilities and the fired-rules mask."""
        cdef double logits[HEADS]
        cdef double exps[LEVELS]
        cdef double probs[LEVELS]
        cdef double top, z, expected = 0.0, total = 0.0
        cdef int k
        rules = self._logits(text, context, context_weight, logits)
        top = logits[0]
        for k in range(1, LEVELS):
            if logits[k] > top:
                top = logits[k]
        for k in range(LEVELS):
            exps[k] = exp(logits[k] - top)
        for k in range(LEVELS):
            total += exps[k]
        for k in range(LEVELS):
            probs[k] = exps[k] / total
        if self.score_formula == LEVEL_GAIN:
            for k in range(LEVELS):
                expected += k * probs[k]
            z = (self.level_weight * expected
                 + _sigmoid(logits[GATE_HEAD]) * logits[GAIN_HEAD]
                 + self.score_bias)
        else:
            z = logits[GAIN_HEAD] + self.placement_weight * _sigmoid(logits[GATE_HEAD])
        return (
            _sigmoid(z),
            (probs[0], probs[1], probs[2], probs[3], probs[4]),
            rules,
        )

    # -- features for training ----------------------------------------------------------

    def features(self, str text):
        """Return the feature indices, their values (in emission order) and the rules mask."""
        cdef Py_ssize_t i, j, offset
        cdef int stat, r
        cdef uint64_t h
        cdef double scale_word, scale_char, scale
        self._prepare(text)
        self._hash_grams()
        n_grams = self.n_word + self.n_char
        indices = np.empty(n_grams + self.n_stats + self.n_rules, dtype=np.int32)
        values = np.empty(n_grams + self.n_stats + self.n_rules, dtype=np.float64)
        cdef int32_t[::1] iv = indices
        cdef double[::1] vv = values
        scale_word = 1.0 / sqrt(<double>self.n_word) if self.n_word else 0.0
        scale_char = 1.0 / sqrt(<double>self.n_char) if self.n_char else 0.0
        for i in range(n_grams):
            h = self.gram_hash[i]
            scale = scale_word if i < self.n_word else scale_char
            iv[i] = <int32_t>(h & self.mask)
            vv[i] = -scale if h & TOP_BIT else scale
        j = n_grams
        offset = self.n_buckets
        for stat in range(self.n_stats):
            iv[j] = <int32_t>(offset + self._dense_index(stat))
            vv[j] = 1.0
            j += 1
            offset += self.edges_len[stat]
        for r in range(self.n_rules):
            if self.rules_fired >> r & 1:
                iv[j] = <int32_t>(offset + r)
                vv[j] = 1.0
                j += 1
        return indices[:j], values[:j], self.rules_fired
