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

from libc.math cimport exp, log1p, sqrt
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint64_t
from libc.stdlib cimport free, malloc

import unicodedata

import numpy as np

from router._fastpath_py import (
    DENSE_EDGES,
    N_DENSE,
    SCORE_GATED_LEVEL,
    SCORE_LEVEL_GAIN,
    check_score_formula,
    check_settings,
    checked_weights,
    rule_prefixes,
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

cdef extern from *:
    """
    /* XXH3_64bits_withSeed for inputs of at most 16 bytes (char n-grams, token-hash pairs):
       the same short path, without the long-input branch that keeps the compiler from
       inlining it into the n-gram loops. */
    static inline uint64_t mr_xxh3_short(const void* data, size_t length, uint64_t seed) {
        return XXH3_len_0to16_64b((const xxh_u8*)data, length, XXH3_kSecret, seed);
    }
    """
    uint64_t mr_xxh3_short(const void* data, size_t length, uint64_t seed) nogil

cdef extern from *:
    """
    /* Row sums over hashed n-grams. Rows of float16 weights are 8 halves (7 heads and a
       zero pad: 16 bytes, one cache line each); each head's sum is a float64 accumulated in
       emission order, as the twin's, and a set top bit of the hash negates the row (a sign
       flip is exact, and costs no branch). */
    #include <string.h>
    #if defined(__GNUC__) || defined(__clang__)
    #define MR_PREFETCH(p) __builtin_prefetch((p), 0, 3)
    #else
    #define MR_PREFETCH(p) ((void)(p))
    #endif
    #define MR_ROW16 8
    #define MR_TOP_BIT 0x8000000000000000ULL

    /* IEEE half to single precision, exactly (normal, subnormal, zero, inf, nan). */
    static inline float mr_half_to_float(uint16_t h) {
        uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
        uint32_t exponent = (h >> 10) & 0x1Fu;
        uint32_t mantissa = h & 0x3FFu;
        uint32_t bits;
        float f;
        if (exponent == 0x1Fu) {
            bits = sign | 0x7F800000u | (mantissa << 13);
        } else if (exponent != 0) {
            bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
        } else {
            /* zero or subnormal: mantissa * 2^-24 is exact in single precision */
            f = (float)mantissa * 5.9604644775390625e-8f;
            memcpy(&bits, &f, 4);
            bits |= sign;
        }
        memcpy(&f, &bits, 4);
        return f;
    }

    static void mr_sum_rows_f16_portable(const uint16_t* w, const uint64_t* hashes,
                                         Py_ssize_t count, uint64_t mask, double* sums) {
        Py_ssize_t i;
        int k;
        for (i = 0; i < count; i++) {
            uint64_t h = hashes[i];
            const uint16_t* row = w + (h & mask) * MR_ROW16;
            double sign = (h & MR_TOP_BIT) ? -1.0 : 1.0;
            for (k = 0; k < 7; k++) sums[k] += sign * (double)mr_half_to_float(row[k]);
        }
    }

    #if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    #include <immintrin.h>
    #define MR_HAVE_F16C_BUILD 1
    __attribute__((target("avx,f16c")))
    static void mr_sum_rows_f16_f16c(const uint16_t* w, const uint64_t* hashes,
                                     Py_ssize_t count, uint64_t mask, double* sums) {
        double out[8];
        __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
        Py_ssize_t i;
        int k;
        for (i = 0; i < count; i++) {
            uint64_t h = hashes[i];
            __m256 row = _mm256_cvtph_ps(
                _mm_loadu_si128((const __m128i*)(w + (h & mask) * MR_ROW16)));
            __m256d sign = _mm256_castsi256_pd(
                _mm256_set1_epi64x((long long)(h & MR_TOP_BIT)));
            __m256d head0to3 = _mm256_cvtps_pd(_mm256_castps256_ps128(row));
            __m256d head4to7 = _mm256_cvtps_pd(_mm256_extractf128_ps(row, 1));
            lo = _mm256_add_pd(lo, _mm256_xor_pd(head0to3, sign));
            hi = _mm256_add_pd(hi, _mm256_xor_pd(head4to7, sign));
        }
        _mm256_storeu_pd(out, lo);
        _mm256_storeu_pd(out + 4, hi);
        /* The sums start at zero in the caller: adding them afterwards keeps the order. */
        for (k = 0; k < 7; k++) sums[k] += out[k];
    }

    static int mr_cpu_has_f16c(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
    }
    #else
    #define MR_HAVE_F16C_BUILD 0
    static void mr_sum_rows_f16_f16c(const uint16_t* w, const uint64_t* hashes,
                                     Py_ssize_t count, uint64_t mask, double* sums) {
        mr_sum_rows_f16_portable(w, hashes, count, mask, sums);
    }
    static int mr_cpu_has_f16c(void) { return 0; }
    #endif

    static void mr_sum_rows_f32(const float* w, const uint64_t* hashes, Py_ssize_t count,
                                uint64_t mask, double* sums) {
        Py_ssize_t i;
        int k;
        for (i = 0; i < count; i++) {
            uint64_t h = hashes[i];
            const float* row = w + (h & mask) * 7;
            double sign = (h & MR_TOP_BIT) ? -1.0 : 1.0;
            for (k = 0; k < 7; k++) sums[k] += sign * (double)row[k];
        }
    }
    """
    void MR_PREFETCH(const void* p) nogil
    float mr_half_to_float(uint16_t h) nogil
    void mr_sum_rows_f16_portable(const uint16_t* w, const uint64_t* hashes, Py_ssize_t count,
                                  uint64_t mask, double* sums) nogil
    void mr_sum_rows_f16_f16c(const uint16_t* w, const uint64_t* hashes, Py_ssize_t count,
                              uint64_t mask, double* sums) nogil
    void mr_sum_rows_f32(const float* w, const uint64_t* hashes, Py_ssize_t count,
                         uint64_t mask, double* sums) nogil
    int mr_cpu_has_f16c() nogil

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
    GATED_LEVEL = 3
    MAX_DENSE_STATS = 8
    MAX_EDGES = 16
    ROW16 = 8
    # Rule table values: the rule index (NO_RULE: none) and a flag for phrase prefixes.
    NO_RULE = 0xFF
    RULE_PREFIX = 0x100

if (LEVELS, HEADS, LEVEL_GAIN, GATED_LEVEL) != (
        _PY_LEVELS, _PY_HEADS, SCORE_LEVEL_GAIN, SCORE_GATED_LEVEL):
    raise ImportError("router._fastpath was built for another head layout than the twin's")

cdef uint64_t TOP_BIT = (<uint64_t>1) << 63
# Whether this CPU converts float16 in hardware (x86 F16C); else an exact portable conversion.
cdef bint USE_F16C = mr_cpu_has_f16c()


def _set_f16c(bint on):
    """Use the F16C row sums (when the CPU has them) or the portable ones; return the old."""
    global USE_F16C
    old = USE_F16C
    USE_F16C = on and mr_cpu_has_f16c()
    return old


# Byte classes: bit 1 whitespace, 2 word byte, 4 digit, 8 maths symbol, 16 code symbol.
cdef uint8_t BYTE_CLASS[256]
# By input byte (A-Z read as a-z): its class, and the byte the scan writes for it (a space
# for whitespace, 0 for a digit, else the lower-cased byte).
cdef uint8_t RAW_CLASS[256]
cdef uint8_t RAW_EMIT[256]
# By input byte: what it adds to the counts of lines, question marks, maths symbols and code
# symbols, one per 16-bit lane (the scan empties the lanes every 65,536 bytes, before one
# could carry into the next).
cdef uint64_t RAW_COUNTS[256]


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
    cdef int low
    for b in range(256):
        low = b + 0x20 if 0x41 <= b <= 0x5A else b
        RAW_CLASS[b] = BYTE_CLASS[low]
        RAW_EMIT[b] = 0x20 if BYTE_CLASS[low] & 1 else 0x30 if BYTE_CLASS[low] & 4 else low
        RAW_COUNTS[b] = (
            (b == 0x0A)
            | (<uint64_t>(b == 0x3F) << 16)
            | (<uint64_t>(BYTE_CLASS[low] >> 3 & 1) << 32)
            | (<uint64_t>(BYTE_CLASS[low] >> 4 & 1) << 48)
        )


_init_byte_classes()


cdef inline (long, long, long, long) _add_counts(
        uint64_t counts, long lines, long questions, long math_symbols, long code) noexcept:
    """Add the four 16-bit lanes of RAW_COUNTS sums to the four counts."""
    return (lines + <long>(counts & 0xFFFF), questions + <long>(counts >> 16 & 0xFFFF),
            math_symbols + <long>(counts >> 32 & 0xFFFF), code + <long>(counts >> 48))


cdef inline uint64_t _pair_hash(uint64_t a, uint64_t b, uint64_t seed) noexcept nogil:
    # Native-order uint64 pair; the twin packs struct.pack("<QQ"), so the two agree only on
    # little-endian machines, and setup.py builds the extension only there.
    cdef uint64_t pair[2]
    pair[0] = a
    pair[1] = b
    return mr_xxh3_short(pair, 16, seed)


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
    # Weights (n_features x HEADS) and bias. float32 weights are read in place (kept alive
    # by the view); float16 ones, as model files hold them, are copied once into rows of 8
    # halves (16 bytes, 16-byte aligned by numpy: one cache line per n-gram, where a float32
    # row of 28 bytes straddles two lines for 3 n-grams in 7).
    cdef const float[:, ::1] _weights_view
    cdef const float* w
    cdef uint16_t[:, ::1] _rows16
    cdef uint16_t* w16
    cdef double bias[HEADS]
    # The score formula (see score()) and its parameters.
    cdef readonly int score_formula
    cdef readonly double level_weight, score_bias, placement_weight
    cdef readonly double length_weight, length_center
    # Rule table: open addressing on the chained hashes of the phrases and their prefixes;
    # a value is a rule index (or NO_RULE) and the RULE_PREFIX flag, -1 an empty slot.
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
    # The query's normalised byte count (its own, not its context's): the score's length.
    cdef long text_bytes
    cdef uint64_t rules_fired
    cdef object _unicode_normalize

    def __cinit__(self):
        self.rule_keys = NULL
        self.rule_ids = NULL
        self.buf = NULL
        self.tok_hash = NULL
        self.gram_hash = NULL
        self.w = NULL
        self.w16 = NULL

    def __init__(self, *, seed, buckets_log2, word_max, char_min, char_max, max_bytes,
                 rule_phrases, weights, bias, score_formula=SCORE_GATED_LEVEL,
                 level_weight=0.0, score_bias=0.0, placement_weight=0.0,
                 length_weight=0.0, length_center=0.0):
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

        # Open-addressing rule table sized to a power of two at least four times its keys.
        table, self.rule_len = rule_table(rule_phrases, self.seed, max_bytes)
        values = {h_py: rule_id for h_py, rule_id in table.items()}
        for h_py in rule_prefixes(rule_phrases, self.seed, max_bytes):
            values[h_py] = values.get(h_py, NO_RULE) | RULE_PREFIX
        slots = 64
        while slots < 4 * len(values):
            slots *= 2
        self.rule_mask = <uint64_t>(slots - 1)
        self.rule_keys = <uint64_t*>malloc(slots * sizeof(uint64_t))
        self.rule_ids = <int*>malloc(slots * sizeof(int))
        if self.rule_keys == NULL or self.rule_ids == NULL:
            raise MemoryError()
        for i in range(slots):
            self.rule_ids[i] = -1
        for h_py, rule_id in values.items():
            h = h_py
            i = <Py_ssize_t>(h & self.rule_mask)
            while self.rule_ids[i] != -1:
                i = (i + 1) & <Py_ssize_t>self.rule_mask
            self.rule_keys[i] = h
            self.rule_ids[i] = rule_id

        weights = checked_weights(weights, bias, self.n_features)
        self.n_heads = HEADS
        if weights.dtype == np.float16:
            rows16 = np.zeros((self.n_features, ROW16), dtype=np.uint16)
            rows16[:, :HEADS] = weights.view(np.uint16)
            self._rows16 = rows16
            self.w16 = &self._rows16[0, 0]
        else:
            self._weights_view = weights
            self.w = &self._weights_view[0, 0]
        for i in range(HEADS):
            self.bias[i] = float(bias[i])
        self.score_formula = score_formula
        self.level_weight = float(level_weight)
        self.score_bias = float(score_bias)
        self.placement_weight = float(placement_weight)
        self.length_weight = float(length_weight)
        self.length_center = float(length_center)

        self.n_stats = len(DENSE_EDGES)
        if self.n_stats > MAX_DENSE_STATS:
            raise ValueError("too many dense statistics for the compiled path")
        for i, (_, stat_edges) in enumerate(DENSE_EDGES):
            if len(stat_edges) > MAX_EDGES:
                raise ValueError("too many bins for the compiled path")
            self.edges_len[i] = len(stat_edges)
            for j, edge in enumerate(stat_edges):
                self.edges[i][j] = edge

        # Two bytes of padding; at most one token per byte. The n-gram hashes take at least
        # two words a byte, room for the token bounds the scan keeps there first.
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
        cdef Py_ssize_t n, i, out
        cdef uint8_t b, cls
        cdef long questions = 0, math_symbols = 0, code = 0, lines = 0, numbers = 0
        cdef long words = 0
        cdef uint64_t* starts = self.gram_hash
        cdef uint64_t* ends = self.gram_hash + self.max_bytes + 2
        cdef Py_ssize_t n_tok = 0, token_end = 0
        cdef uint64_t counts = 0
        cdef int space, word, digit, prev_word = 0, starting, last_question = 0
        cdef int spaces = 1, digits = 0
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

        # One pass without a branch on the text: a repeated query teaches the branch
        # predictor its bytes, a stream of distinct queries does not, and the branches of
        # the byte scan and word split this replaced were most of what a distinct query
        # cost over a repeated one (bench/README.md, the distinct stream). Write each
        # byte's output and advance past it unless it is whitespace after whitespace;
        # count the stats; note where tokens (word-byte runs, or one other non-space byte)
        # start and end. Token k is buf[starts[k]:ends[k + 1]]; both live in gram_hash,
        # which _hash_grams fills only later.
        self.buf[0] = 0x20
        out = 1
        ends[0] = 0
        for i in range(n):
            b = raw[i]
            cls = RAW_CLASS[b]
            space = cls & 1
            word = (cls >> 1) & 1
            digit = (cls >> 2) & 1
            self.buf[out] = RAW_EMIT[b]
            starting = (1 - space) & (1 - (prev_word & word))
            starts[n_tok] = out
            n_tok += starting
            words += starting & word
            # The open token ends after this byte unless the byte is whitespace.
            token_end += (1 - space) * (out + 1 - token_end)
            ends[n_tok] = token_end
            out += 1 - (space & spaces)
            numbers += digit & (1 - digits)
            counts += RAW_COUNTS[b]
            if i & 0xFFFF == 0xFFFF:  # before a 16-bit lane could fill
                lines, questions, math_symbols, code = _add_counts(
                    counts, lines, questions, math_symbols, code)
                counts = 0
            last_question += (1 - space) * ((b == 0x3F) - last_question)
            spaces = space
            digits = digit
            prev_word = word
        if not spaces:
            self.buf[out] = 0x20
            out += 1
        self.buf_len = out
        for i in range(n_tok):
            self.tok_hash[i] = XXH3_64bits_withSeed(
                self.buf + starts[i], <size_t>(ends[i + 1] - starts[i]), self.seed)
        self.n_tokens = n_tok

        lines, questions, math_symbols, code = _add_counts(
            counts, lines, questions, math_symbols, code)
        self.stats[0] = n
        self.stats[1] = words
        self.stats[2] = questions
        self.stats[3] = numbers
        self.stats[4] = math_symbols
        self.stats[5] = lines
        self.stats[6] = code
        self.stats[7] = last_question
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

    cdef inline double _weight(self, Py_ssize_t idx, int k) noexcept nogil:
        if self.w16 != NULL:
            return mr_half_to_float(self.w16[idx * ROW16 + k])
        return self.w[idx * HEADS + k]

    cdef inline void _prefetch_row(self, uint64_t h) noexcept nogil:
        # Start loading the n-gram's weights while the next n-grams are hashed: with ~700
        # random rows per query in a table larger than L2, waiting on memory costs more than
        # the hashing.
        cdef const float* row
        if self.w16 != NULL:
            MR_PREFETCH(self.w16 + (h & self.mask) * ROW16)
        else:
            row = self.w + (h & self.mask) * HEADS
            MR_PREFETCH(row)
            MR_PREFETCH(row + HEADS - 1)

    cdef void _hash_grams(self) noexcept:
        """Hash the prepared text's word and char n-grams into gram_hash; note fired rules."""
        cdef Py_ssize_t i, j = 0
        cdef int n, entry
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
                    self._prefetch_row(g)
                    j += 1
                entry = self._rule_lookup(g)
                if entry >= 0 and entry & NO_RULE != NO_RULE:
                    self.rules_fired |= (<uint64_t>1) << (entry & NO_RULE)
                # A chain no phrase starts with cannot grow into one: stop once the word
                # n-grams are out.
                if n >= self.word_max and (entry < 0 or not entry & RULE_PREFIX):
                    break
        self.n_word = j
        for n in range(self.char_min, self.char_max + 1):
            for i in range(self.buf_len - n + 1):
                g = mr_xxh3_short(self.buf + i, n, seed_c)
                self.gram_hash[j] = g
                self._prefetch_row(g)
                j += 1
        self.n_char = j - self.n_word

    cdef void _add_grams(self, double weight, double* logits, Py_ssize_t start,
                         Py_ssize_t count) noexcept:
        """Add weight/sqrt(count) times the signed rows of gram_hash[start:start+count]."""
        cdef double sums[HEADS]
        cdef double scale
        cdef int k
        if count == 0:
            return
        for k in range(HEADS):
            sums[k] = 0.0
        if self.w16 == NULL:
            mr_sum_rows_f32(self.w, self.gram_hash + start, count, self.mask, sums)
        elif USE_F16C:
            mr_sum_rows_f16_f16c(self.w16, self.gram_hash + start, count, self.mask, sums)
        else:
            mr_sum_rows_f16_portable(self.w16, self.gram_hash + start, count, self.mask, sums)
        scale = weight / sqrt(<double>count)
        for k in range(HEADS):
            logits[k] += scale * sums[k]

    cdef void _accumulate(self, double weight, double* logits) noexcept:
        """Add ``weight`` times the prepared text's linear terms to ``logits``."""
        cdef Py_ssize_t offset, idx
        cdef int k, stat, r
        self._hash_grams()
        self._add_grams(weight, logits, 0, self.n_word)
        self._add_grams(weight, logits, self.n_word, self.n_char)
        offset = self.n_buckets
        for stat in range(self.n_stats):
            idx = offset + self._dense_index(stat)
            for k in range(HEADS):
                logits[k] += weight * self._weight(idx, k)
            offset += self.edges_len[stat]
        for r in range(self.n_rules):
            if self.rules_fired >> r & 1:
                for k in range(HEADS):
                    logits[k] += weight * self._weight(offset + r, k)

    cdef uint64_t _logits(self, str text, str context, double context_weight,
                          double* logits) except? 0xFFFFFFFFFFFFFFFF:
        cdef uint64_t rules
        cdef int k
        for k in range(HEADS):
            logits[k] = self.bias[k]
        self._prepare(text)
        self.text_bytes = self.stats[0]
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
        cdef double top, z, g, length, expected = 0.0, total = 0.0
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
        if self.score_formula == GATED_LEVEL:
            for k in range(LEVELS):
                expected += k * probs[k]
            g = _sigmoid(logits[GATE_HEAD])
            length = self.length_weight * (log1p(<double>self.text_bytes) - self.length_center)
            z = (self.level_weight * ((1.0 - g) * expected + g * logits[GAIN_HEAD] + length)
                 + self.score_bias)
        elif self.score_formula == LEVEL_GAIN:
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
