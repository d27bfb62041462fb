/* AVX-512 VBMI decode kernel for 6..8 bits with an fp16 LUT (the artifact's dtype).
 *
 * A tree of fp32 permutes costs 2**(bits-5) shuffles per 16 columns. Here the fp16 LUT
 * row is split into a low-byte and a high-byte table (2**bits bytes each, held in 1..4
 * registers) and one vpermb / vpermi2b looks up 64 columns at once; bytes are re-paired
 * into fp16 with unpack and widened exactly with vcvtph2ps. For 8 bits plane 0 (the MSB)
 * picks between the two 128-entry halves directly as a byte mask.
 * x is read in "perm16" order (see ap_x_order): the column order unpack produces.
 */
#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi")
#include <immintrin.h>
#include "ap_kernels.h"

#include "ap_avx512_common.h"

INLINE void split_lut_row(const uint16_t *row, int bits, __m512i lo[4], __m512i hi[4]) {
    __m512i even = _mm512_set_epi8(126, 124, 122, 120, 118, 116, 114, 112, 110, 108, 106, 104, 102, 100, 98, 96,
                                   94, 92, 90, 88, 86, 84, 82, 80, 78, 76, 74, 72, 70, 68, 66, 64,
                                   62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32,
                                   30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_add_epi8(even, _mm512_set1_epi8(1));
    for (int r = 0; r < (1 << bits) / 64; r++) {
        const __m512i a = _mm512_loadu_si512(row + 64 * r), b = _mm512_loadu_si512(row + 64 * r + 32);
        lo[r] = _mm512_permutex2var_epi8(a, even, b);
        hi[r] = _mm512_permutex2var_epi8(a, odd, b);
    }
}

/* Byte table lookup of 64 codes; t holds 2**bits entries, msb the plane-0 mask (8 bits). */
INLINE __m512i lookup64(__m512i codes, const __m512i t[4], __mmask64 msb, int bits) {
    if (bits == 6) return _mm512_permutexvar_epi8(codes, t[0]);
    if (bits == 7) return _mm512_permutex2var_epi8(t[0], codes, t[1]);
    const __m512i a = _mm512_permutex2var_epi8(t[0], codes, t[1]);
    const __m512i b = _mm512_permutex2var_epi8(t[2], codes, t[3]);
    return _mm512_mask_blend_epi8(msb, a, b);
}

INLINE void vbmi_step(const uint64_t *const src[], const float *x, int64_t xstride, const __m512i lo[4],
                      const __m512i hi[4], int bits, int T, __m512 acc[4]) {
    const __m512i codes = byte_codes(src, bits == 8 ? 1 : 0, bits);
    const __mmask64 msb = bits == 8 ? _load_mask64((__mmask64 *)src[0]) : 0;
    const __m512i l = lookup64(codes, lo, msb, bits), h = lookup64(codes, hi, msb, bits);
    const __m512i u0 = _mm512_unpacklo_epi8(l, h), u1 = _mm512_unpackhi_epi8(l, h);
    __m512 w[4];
    w[0] = _mm512_cvtph_ps(_mm512_castsi512_si256(u0));
    w[1] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(u0, 1));
    w[2] = _mm512_cvtph_ps(_mm512_castsi512_si256(u1));
    w[3] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(u1, 1));
    for (int j = 0; j < 4; j++)
        for (int t = 0; t < T; t++) {
            const int a = T == 1 ? j : t;
            acc[a] = _mm512_fmadd_ps(w[j], _mm512_loadu_ps(x + t * xstride + 16 * j), acc[a]);
        }
}

INLINE void vbmi_rows_impl(const ap_gemv_args *a, int64_t row0, int64_t row1, int bits, int T) {
    const int64_t full = a->words / 2;
    for (int64_t n = row0; n < row1; n++) {
        __m512i lo[4], hi[4];
        __m512 acc[4];
        const uint64_t *src[AP_MAX_BITS], *cur[AP_MAX_BITS];
        split_lut_row((const uint16_t *)a->lut + (n << bits), bits, lo, hi);
        row_pointers(a->planes, a->plane_stride, a->words, n, bits, src);
        for (int i = 0; i < 4; i++) acc[i] = _mm512_setzero_ps();
        FOR_EACH_STEP(full, c, prefetch_planes(src, src, c, bits),
                      for (int p = 0; p < bits; p++) cur[p] = src[p] + c;
                      vbmi_step(cur, a->x + c * AP_CHUNK, a->xstride, lo, hi, bits, T, acc));
        if (a->words & 1) {
            uint64_t buf[AP_MAX_BITS];
            tail_words(src, full, bits, buf, cur);
            vbmi_step(cur, a->x + full * AP_CHUNK, a->xstride, lo, hi, bits, T, acc);
        }
        if (T == 1) {
            const __m512 s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
            a->y[n] = _mm512_reduce_add_ps(s);
        } else {
            for (int t = 0; t < T; t++) a->y[t * a->ystride + n] = _mm512_reduce_add_ps(acc[t]);
        }
    }
}

#define VBMI_VARIANT(B, T) \
    static void vbmi_b##B##_t##T(const ap_gemv_args *a, int64_t r0, int64_t r1) { vbmi_rows_impl(a, r0, r1, B, T); }
#define VBMI_ALL_T(B) VBMI_VARIANT(B, 1) VBMI_VARIANT(B, 2) VBMI_VARIANT(B, 3) VBMI_VARIANT(B, 4)
VBMI_ALL_T(6) VBMI_ALL_T(7) VBMI_ALL_T(8)

#define VBMI_ROW(B) {vbmi_b##B##_t1, vbmi_b##B##_t2, vbmi_b##B##_t3, vbmi_b##B##_t4}
static const ap_gemv_fn VBMI_TABLE[3][4] = {VBMI_ROW(6), VBMI_ROW(7), VBMI_ROW(8)};

void ap_gemv_rows_avx512_vbmi(const ap_gemv_args *a, int64_t row0, int64_t row1) {
    ap_gemv_token_groups(a, row0, row1, VBMI_TABLE[a->bits - 6]);
}

#endif /* __x86_64__ */
