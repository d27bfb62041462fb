/* Helpers shared by the AVX-512 kernel files. Included after each file's
 * `#pragma GCC target(...)`, so every copy is compiled for that file's instruction set. */
#ifndef AP_AVX512_COMMON_H
#define AP_AVX512_COMMON_H

#define INLINE static inline __attribute__((always_inline))
#define PREFETCH_BYTES 1024
#define PREFETCH_EVERY 8 /* steps: one 64-byte line of each plane */

/* Byte codes of planes [p_first, bits) for the 64 columns at src[p]. */
INLINE __m512i byte_codes(const uint64_t *const src[], int p_first, int bits) {
    __m512i codes = _mm512_setzero_si512();
    for (int p = p_first; p < bits; p++) {
        __mmask64 m = _load_mask64((__mmask64 *)src[p]);
        codes = _mm512_mask_add_epi8(codes, m, codes, _mm512_set1_epi8((char)(1 << (bits - 1 - p))));
    }
    return codes;
}

INLINE void row_pointers(const uint32_t *planes, int64_t plane_stride, int64_t words, int64_t n,
                         int bits, const uint64_t *src[]) {
    for (int p = 0; p < bits; p++) src[p] = (const uint64_t *)(planes + p * plane_stride + n * words);
}

/* Prefetch the line PREFETCH_BYTES ahead of step c in each plane of two rows (the same
 * row twice for one): the hardware prefetcher alone falls behind on 2 x 8 streams. */
INLINE void prefetch_planes(const uint64_t *const a[], const uint64_t *const b[], int64_t c, int bits) {
    for (int p = 0; p < bits; p++) {
        _mm_prefetch((const char *)(a[p] + c) + PREFETCH_BYTES, _MM_HINT_T0);
        if (b != a) _mm_prefetch((const char *)(b[p] + c) + PREFETCH_BYTES, _MM_HINT_T0);
    }
}

/* Runs the statements in `...` for steps c = 0 .. full-1: whole plane lines of
 * PREFETCH_EVERY steps unrolled, with `prefetch` once per line, then the remaining steps.
 * Unrolling removes the per-step prefetch test and makes x offsets constants (measured
 * 3% faster at 3..5 bits, 3-10% at 6..8 bits on 4096x4096). */
#define FOR_EACH_STEP(full, c, prefetch, ...)                                   \
    do {                                                                        \
        const int64_t lines_end_ = (full) / PREFETCH_EVERY * PREFETCH_EVERY;    \
        int64_t c = 0;                                                          \
        while (c < lines_end_) {                                                \
            prefetch;                                                           \
            _Pragma("GCC unroll 8") for (int u_ = 0; u_ < PREFETCH_EVERY; u_++, c++) { __VA_ARGS__; } \
        }                                                                       \
        for (; c < (full); c++) { __VA_ARGS__; }                                \
    } while (0)

/* The odd last word of a row, zero-extended to 64 bits so no load runs past the row. */
INLINE void tail_words(const uint64_t *const src[], int64_t full, int bits, uint64_t buf[],
                       const uint64_t *tail[]) {
    for (int p = 0; p < bits; p++) {
        buf[p] = *(const uint32_t *)(src[p] + full);
        tail[p] = &buf[p];
    }
}

#endif /* AP_AVX512_COMMON_H */
