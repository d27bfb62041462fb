/* AVX-512 (F+BW) kernels: 64 columns per step, bitplane words used as byte masks.
 *
 * Per 64 columns, each plane's 64-bit word is a k-mask; masked byte adds build the 64
 * byte codes (one vector op per plane). The centroid of 16 codes comes from a per-row
 * LUT held in registers: vpermps (<= 4 bits), vpermt2ps (5 bits), and for 6..8 bits a
 * vpermt2ps per 32-entry slice blended by the high planes' masks.
 *
 * bits <= 5 ("permuted" order): dword lane i of codes >> 8j holds the code of column
 * 4i + j, so the 4 index vectors cost one shift each; the caller stores x permuted to
 * match (x_perm[64c + 16j + i] = x[64c + 4i + j]).
 * bits >= 6 ("natural" order): bytes are widened with vpmovzxbd so lane i is column
 * 16j + i and the high planes' 16-bit mask words select the LUT slice directly.
 */
#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
#include <immintrin.h>
#include <string.h>
#include "ap_kernels.h"

#include "ap_avx512_common.h"

INLINE void load_lut_regs(const void *lut, int lut_f16, int bits, int64_t n, __m512 L[16]) {
    const int size = 1 << bits, nreg = size >= 16 ? size / 16 : 1;
    const __mmask16 m = size >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << size) - 1u);
    for (int r = 0; r < nreg; r++) {
        if (lut_f16) {
            const uint16_t *src = (const uint16_t *)lut + n * size + 16 * r;
            L[r] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, src));
        } else {
            L[r] = _mm512_maskz_loadu_ps(m, (const float *)lut + n * size + 16 * r);
        }
    }
}

/* Centroids of 16 lanes: idx holds the low min(bits, 5) code bits, hm[q] the mask of
 * plane q for bits >= 6 (q < bits - 5). */
INLINE __m512 lookup16(__m512i idx, const __m512 L[16], const __mmask16 hm[3], int bits) {
    if (bits <= 4) return _mm512_permutexvar_ps(idx, L[0]);
    if (bits == 5) return _mm512_permutex2var_ps(L[0], idx, L[1]);
    __m512 s[8];
    const int slices = 1 << (bits - 5);
    for (int i = 0; i < slices; i++) s[i] = _mm512_permutex2var_ps(L[2 * i], idx, L[2 * i + 1]);
    for (int level = bits - 6, width = slices; level >= 0; level--, width /= 2)
        for (int i = 0; i < width / 2; i++) s[i] = _mm512_mask_blend_ps(hm[level], s[2 * i], s[2 * i + 1]);
    return s[0];
}

INLINE void load_high_masks(const uint64_t *const src[], int bits, int j, __mmask16 hm[3]) {
    for (int q = 0; q < bits - 5; q++) hm[q] = _load_mask16((__mmask16 *)src[q] + j);
}

/* 128-bit lane j of v (j must fold to a constant after unrolling). */
INLINE __m128i lane128(__m512i v, int j) {
    switch (j) {
    case 0: return _mm512_castsi512_si128(v);
    case 1: return _mm512_extracti32x4_epi32(v, 1);
    case 2: return _mm512_extracti32x4_epi32(v, 2);
    default: return _mm512_extracti32x4_epi32(v, 3);
    }
}

/* One 64-column step: acc[T == 1 ? j : t] += centroids * x. */
INLINE void gemv_step(const uint64_t *const src[], const float *x, int64_t xstride,
                      const __m512 L[16], int bits, int T, __m512 acc[4]) {
    if (bits <= 5) {
        const __m512i codes = byte_codes(src, 0, bits);
        for (int j = 0; j < 4; j++) {
            const __m512i idx = j ? _mm512_srli_epi32(codes, 8 * j) : codes;
            const __m512 w = lookup16(idx, L, 0, bits);
            for (int t = 0; t < T; t++) {
                const int a = T == 1 ? j : t;
                acc[a] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + t * xstride + 16 * j), acc[a]);
            }
        }
        return;
    }
    const __m512i codes = byte_codes(src, bits - 5, bits);
    for (int j = 0; j < 4; j++) {
        __mmask16 hm[3];
        load_high_masks(src, bits, j, hm);
        const __m512i idx = _mm512_cvtepu8_epi32(lane128(codes, j));
        const __m512 w = lookup16(idx, L, hm, bits);
        for (int t = 0; t < T; t++) {
            const int a = T == 1 ? j : t;
            acc[a] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + t * xstride + 16 * j), acc[a]);
        }
    }
}

INLINE void pair_step(const uint64_t *const src[2][AP_MAX_BITS], int64_t c, const ap_gemv_args *a,
                      const __m512 L[2][16], int bits, __m512 acc[2][4], const uint64_t *cur[2][AP_MAX_BITS]) {
    for (int r = 0; r < 2; r++) {
        for (int p = 0; p < bits; p++) cur[r][p] = src[r][p] + c;
        gemv_step(cur[r], a->x + c * AP_CHUNK, a->xstride, L[r], bits, 1, acc[r]);
    }
}

/* Two rows, one token, bits <= 5: both rows' lookups share each x load and the loop
 * overhead, which a single row's short inner loop (9 steps on a 576-wide layer) does not
 * amortize. */
INLINE void gemv_row_pair(const ap_gemv_args *a, int64_t n, int bits) {
    const int64_t full = a->words / 2;
    __m512 L[2][16], acc[2][4];
    const uint64_t *src[2][AP_MAX_BITS], *cur[2][AP_MAX_BITS];
    for (int r = 0; r < 2; r++) {
        load_lut_regs(a->lut, a->lut_f16, bits, n + r, L[r]);
        row_pointers(a->planes, a->plane_stride, a->words, n + r, bits, src[r]);
        for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_ps();
    }
    FOR_EACH_STEP(full, c, prefetch_planes(src[0], src[1], c, bits), pair_step(src, c, a, L, bits, acc, cur));
    if (a->words & 1) {
        uint64_t buf[2][AP_MAX_BITS];
        for (int r = 0; r < 2; r++) {
            tail_words(src[r], full, bits, buf[r], cur[r]);
            gemv_step(cur[r], a->x + full * AP_CHUNK, a->xstride, L[r], bits, 1, acc[r]);
        }
    }
    for (int r = 0; r < 2; r++) {
        const __m512 s = _mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]), _mm512_add_ps(acc[r][2], acc[r][3]));
        a->y[n + r] = _mm512_reduce_add_ps(s);
    }
}

INLINE void gemv_rows_impl(const ap_gemv_args *a, int64_t row0, int64_t row1, int bits, int T) {
    const int64_t full = a->words / 2;
    if (T == 1 && bits <= 5)
        for (; row0 + 1 < row1; row0 += 2) gemv_row_pair(a, row0, bits);
    for (int64_t n = row0; n < row1; n++) {
        __m512 L[16], acc[4];
        const uint64_t *src[AP_MAX_BITS], *cur[AP_MAX_BITS];
        load_lut_regs(a->lut, a->lut_f16, bits, n, L);
        row_pointers(a->planes, a->plane_stride, a->words, n, bits, src);
        for (int i = 0; i < 4; i++) acc[i] = _mm512_setzero_ps();
        FOR_EACH_STEP(full, c, prefetch_planes(src, src, c, bits),
                      for (int p = 0; p < bits; p++) cur[p] = src[p] + c;
                      gemv_step(cur, a->x + c * AP_CHUNK, a->xstride, L, bits, T, acc));
        if (a->words & 1) {
            uint64_t buf[AP_MAX_BITS];
            tail_words(src, full, bits, buf, cur);
            gemv_step(cur, a->x + full * AP_CHUNK, a->xstride, L, bits, T, acc);
        }
        if (T == 1) {
            const __m512 s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
            a->y[n] = _mm512_reduce_add_ps(s);
        } else {
            for (int t = 0; t < T; t++) a->y[t * a->ystride + n] = _mm512_reduce_add_ps(acc[t]);
        }
    }
}

#define GEMV_VARIANT(B, T) \
    static void gemv_b##B##_t##T(const ap_gemv_args *a, int64_t r0, int64_t r1) { gemv_rows_impl(a, r0, r1, B, T); }
#define GEMV_ALL_T(B) GEMV_VARIANT(B, 1) GEMV_VARIANT(B, 2) GEMV_VARIANT(B, 3) GEMV_VARIANT(B, 4)
GEMV_ALL_T(1) GEMV_ALL_T(2) GEMV_ALL_T(3) GEMV_ALL_T(4) GEMV_ALL_T(5) GEMV_ALL_T(6) GEMV_ALL_T(7) GEMV_ALL_T(8)

#define GEMV_ROW(B) {gemv_b##B##_t1, gemv_b##B##_t2, gemv_b##B##_t3, gemv_b##B##_t4}
static const ap_gemv_fn GEMV_TABLE[AP_MAX_BITS][4] = {GEMV_ROW(1), GEMV_ROW(2), GEMV_ROW(3), GEMV_ROW(4),
                                                   GEMV_ROW(5), GEMV_ROW(6), GEMV_ROW(7), GEMV_ROW(8)};

void ap_gemv_rows_avx512(const ap_gemv_args *a, int64_t row0, int64_t row1) {
    ap_gemv_token_groups(a, row0, row1, GEMV_TABLE[a->bits - 1]);
}

/* ---- dequantize: natural column order, fp32 or bf16 rows ---- */

INLINE void store16(void *out, int64_t offset, __m512 w, int valid, int bf16) {
    const __mmask16 m = valid >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << valid) - 1u);
    if (!bf16) {
        _mm512_mask_storeu_ps((float *)out + offset, m, w);
        return;
    }
    const __m512i u = _mm512_castps_si512(w);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    _mm256_mask_storeu_epi16((uint16_t *)out + offset, m, _mm512_cvtepi32_epi16(r));
}

INLINE void dequant_step(const uint64_t *const src[], const __m512 L[16], int bits, void *out,
                         int64_t offset, int64_t valid, int bf16) {
    const __m512i codes = byte_codes(src, bits > 5 ? bits - 5 : 0, bits);
    for (int j = 0; j < 4 && valid - 16 * j > 0; j++) {
        __mmask16 hm[3];
        load_high_masks(src, bits, j, hm);
        const __m512i idx = _mm512_cvtepu8_epi32(lane128(codes, j));
        store16(out, offset + 16 * j, lookup16(idx, L, hm, bits), (int)(valid - 16 * j), bf16);
    }
}

INLINE void dequant_rows_impl(const ap_dequant_args *a, int64_t row0, int64_t row1, int64_t out_row0, int bits) {
    const int64_t full = a->words / 2, K = a->in_features;
    for (int64_t n = row0; n < row1; n++) {
        __m512 L[16];
        const uint64_t *src[AP_MAX_BITS], *cur[AP_MAX_BITS];
        load_lut_regs(a->lut, a->lut_f16, bits, n, L);
        row_pointers(a->planes, a->plane_stride, a->words, n, bits, src);
        const int64_t base = (n - out_row0) * K;
        for (int64_t c = 0; c < full; c++) {
            for (int p = 0; p < bits; p++) cur[p] = src[p] + c;
            dequant_step(cur, L, bits, a->out, base + c * AP_CHUNK, K - c * AP_CHUNK, a->out_bf16);
        }
        if (a->words & 1) {
            uint64_t buf[AP_MAX_BITS];
            tail_words(src, full, bits, buf, cur);
            dequant_step(cur, L, bits, a->out, base + full * AP_CHUNK, K - full * AP_CHUNK, a->out_bf16);
        }
    }
}

#define DEQ_VARIANT(B) \
    static void deq_b##B(const ap_dequant_args *a, int64_t r0, int64_t r1, int64_t o) { dequant_rows_impl(a, r0, r1, o, B); }
DEQ_VARIANT(1) DEQ_VARIANT(2) DEQ_VARIANT(3) DEQ_VARIANT(4) DEQ_VARIANT(5) DEQ_VARIANT(6) DEQ_VARIANT(7) DEQ_VARIANT(8)

typedef void (*deq_fn)(const ap_dequant_args *, int64_t, int64_t, int64_t);
static const deq_fn DEQ_TABLE[AP_MAX_BITS] = {deq_b1, deq_b2, deq_b3, deq_b4, deq_b5, deq_b6, deq_b7, deq_b8};

void ap_dequant_rows_avx512(const ap_dequant_args *a, int64_t row0, int64_t row1, int64_t out_row0) {
    DEQ_TABLE[a->bits - 1](a, row0, row1, out_row0);
}

/* ---- x in a kernel's column order: dst[c + q] = x[c + cols[q]], zeros past K ---- */

INLINE __m512 load16_upto(const float *src, int64_t valid) {
    if (valid >= 16) return _mm512_loadu_ps(src);
    if (valid <= 0) return _mm512_setzero_ps();
    return _mm512_maskz_loadu_ps((__mmask16)((1u << valid) - 1u), src);
}

void ap_prepare_x_avx512(const float *src, float *dst, int64_t K, int64_t kpad, const int64_t cols[AP_CHUNK]) {
    __m512i idx[4];
    __mmask16 high[4];
    for (int j = 0; j < 4; j++) {
        int32_t lanes[16];
        high[j] = 0;
        for (int i = 0; i < 16; i++) {
            lanes[i] = (int32_t)(cols[16 * j + i] & 31);
            if (cols[16 * j + i] >= 32) high[j] |= (__mmask16)(1u << i);
        }
        idx[j] = _mm512_loadu_si512(lanes);
    }
    for (int64_t c = 0; c < kpad; c += AP_CHUNK) {
        __m512 r[4];
        for (int q = 0; q < 4; q++) r[q] = load16_upto(src + c + 16 * q, K - c - 16 * q);
        for (int j = 0; j < 4; j++) {
            const __m512 lo = _mm512_permutex2var_ps(r[0], idx[j], r[1]);
            const __m512 hi = _mm512_permutex2var_ps(r[2], idx[j], r[3]);
            _mm512_storeu_ps(dst + c + 16 * j, _mm512_mask_blend_ps(high[j], lo, hi));
        }
    }
}

#endif /* __x86_64__ */
