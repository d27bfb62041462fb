/* Int8 mat-vec for the output head: y[t, n] = scale[n] * sum_k W8[n, k] * x[t, k].
 *
 * W8 is the head quantized per row, symmetric (anyprec/engine/head.py makes it once, at
 * engine load): a quarter of the fp32 head's bytes, half of the fp16 copy's. Two ways to
 * take the activations, both measured (docs/ENGINE.md):
 *   act_int8 = 0: fp32 x times widened int8 weights, fp32 sums (the weights' rounding only);
 *   act_int8 = 1: x quantized per token, symmetric, round-half-even (x8 = rint(x / sx),
 *                 sx = max|x| / 127), int8 x int8 products summed exactly in int32, then
 *                 y = sum * sx * scale[n] (llama.cpp's trick: 32 products per `vpmaddubsw`).
 * AVX2 and portable builds, picked at run time like the other kernels.
 */
#include <math.h>
#include <stdlib.h>
#include "ap_kernels.h"

/* Activations x [T, k] -> int8 x8 [T, kpad] (zeros past k) and a scale per `group` columns
 * sx [T, sx_stride] (group >= k: one per token): symmetric, sx = max|x| / 127 over the group,
 * x8 = rint(x / sx) rounding half to even; an all-zero group gets sx = 0, x8 = 0. */
void ap_quantize_acts_int8_groups(const float *x, int64_t xstride, int tokens, int64_t k, int64_t group,
                                  int8_t *x8, int64_t kpad, float *sx, int64_t sx_stride) {
    for (int t = 0; t < tokens; t++) {
        const float *src = x + t * xstride;
        int8_t *dst = x8 + t * kpad;
        for (int64_t g0 = 0, g = 0; g0 < kpad; g0 += group, g++) {
            const int64_t g1 = g0 + group < kpad ? g0 + group : kpad;
            float top = 0.0f;
            for (int64_t c = g0; c < g1 && c < k; c++) top = fabsf(src[c]) > top ? fabsf(src[c]) : top;
            const float s = top / 127.0f;
            sx[t * sx_stride + g] = s;
            for (int64_t c = g0; c < g1; c++) dst[c] = (c < k && top > 0.0f) ? (int8_t)nearbyintf(src[c] / s) : 0;
        }
    }
}

/* Per-token activation scale and int8 copy for the head; x8 is [T, kpad] (kpad: k rounded up to 32, zeros). */
void ap_quantize_acts_int8(const ap_int8_gemv_args *a, int8_t *x8, float *sx, int64_t kpad) {
    ap_quantize_acts_int8_groups(a->x, a->xstride, a->tokens, a->k, kpad, x8, kpad, sx, 1);
}

void ap_int8_gemv_rows_portable(const ap_int8_gemv_args *a, int64_t row0, int64_t row1) {
    for (int64_t n = row0; n < row1; n++) {
        const int8_t *w = a->w + n * a->k;
        for (int t = 0; t < a->tokens; t++) {
            if (a->x8) {
                const int8_t *x = a->x8 + t * a->x8stride;
                int32_t acc = 0;
                for (int64_t k = 0; k < a->k; k++) acc += (int32_t)w[k] * x[k];
                a->y[t * a->ystride + n] = (float)acc * a->sx[t] * a->scale[n];
            } else {
                const float *x = a->x + t * a->xstride;
                float acc = 0.0f;
                for (int64_t k = 0; k < a->k; k++) acc += (float)w[k] * x[k];
                a->y[t * a->ystride + n] = acc * a->scale[n];
            }
        }
    }
}

#if defined(__x86_64__)
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2,fma")))

AVX2 static inline float hsum_ps(__m256 v) {
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

AVX2 static inline int32_t hsum_epi32(__m256i v) {
    const __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    const __m128i s2 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    return _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0xb1)));
}

/* int8 x int8 for T tokens (a constant in each variant, so the accumulators stay in
 * registers): |w| (unsigned) times x carrying w's sign, pairs summed to int16 (at most
 * 2 * 127 * 127, no saturation), then to int32, exactly. k must be a multiple of 32 here. */
AVX2 static inline __attribute__((always_inline)) void rows_i8i8(const ap_int8_gemv_args *a, int64_t row0,
                                                                 int64_t row1, int T) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t n = row0; n < row1; n++) {
        const int8_t *w = a->w + n * a->k;
        __m256i acc[AP_MAX_TOKENS];
        for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_si256();
        for (int64_t k = 0; k < a->k; k += 32) {
            const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + k));
            const __m256i wabs = _mm256_sign_epi8(wv, wv);
            for (int t = 0; t < T; t++) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(a->x8 + t * a->x8stride + k));
                const __m256i p16 = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(xv, wv));
                acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(p16, ones));
            }
        }
        for (int t = 0; t < T; t++)
            a->y[t * a->ystride + n] = (float)hsum_epi32(acc[t]) * a->sx[t] * a->scale[n];
    }
}

/* fp32 x times int8 w widened to fp32, T tokens (1..4, a constant per variant): two chains
 * per token (columns 16i..16i+7 and 16i+8..16i+15; one chain would wait on the FMA
 * latency), summed at the end. Every token's sum runs in the same order whatever T is, so
 * a row of a batch equals its one-token call bit for bit. k a multiple of 8 here. */
AVX2 static inline __attribute__((always_inline)) void row_f32i8(const int8_t *w, int64_t k_all, const float *x,
                                                                 int64_t xstride, float scale, float *y,
                                                                 int64_t ystride, int T) {
    __m256 acc0[4], acc1[4];
    for (int t = 0; t < T; t++) acc0[t] = acc1[t] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= k_all; k += 16) {
        const __m256i w16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + k)));
        const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(w16)));
        const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(w16, 1)));
        for (int t = 0; t < T; t++) {
            acc0[t] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x + t * xstride + k), acc0[t]);
            acc1[t] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x + t * xstride + k + 8), acc1[t]);
        }
    }
    for (; k < k_all; k += 8) {
        const __m256 wk = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(w + k))));
        for (int t = 0; t < T; t++) acc0[t] = _mm256_fmadd_ps(wk, _mm256_loadu_ps(x + t * xstride + k), acc0[t]);
    }
    for (int t = 0; t < T; t++) y[t * ystride] = hsum_ps(_mm256_add_ps(acc0[t], acc1[t])) * scale;
}

/* The same sums for T = 6..8 tokens in one pass per half: the even 8-column blocks' chain
 * (acc0 above) for every token, kept in `lo`, then the odd blocks' chain (acc1), so each
 * weight is widened once for all T tokens with T chains in flight, and every token's
 * result is row_f32i8's bit for bit. k a multiple of 8 here. */
AVX2 static inline __attribute__((always_inline)) void row_f32i8_halves(const int8_t *w, int64_t k_all,
                                                                        const float *x, int64_t xstride,
                                                                        float scale, float *y, int64_t ystride,
                                                                        int T) {
    __m256 lo[AP_MAX_TOKENS], acc[AP_MAX_TOKENS];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t k = 0; k < k_all; k += 16) {  /* even blocks, and a last block of 8 */
        const __m256 wk = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(w + k))));
        for (int t = 0; t < T; t++) acc[t] = _mm256_fmadd_ps(wk, _mm256_loadu_ps(x + t * xstride + k), acc[t]);
    }
    for (int t = 0; t < T; t++) {
        lo[t] = acc[t];
        acc[t] = _mm256_setzero_ps();
    }
    for (int64_t k = 8; k + 8 <= k_all; k += 16) {  /* odd blocks */
        const __m256 wk = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(w + k))));
        for (int t = 0; t < T; t++) acc[t] = _mm256_fmadd_ps(wk, _mm256_loadu_ps(x + t * xstride + k), acc[t]);
    }
    for (int t = 0; t < T; t++) y[t * ystride] = hsum_ps(_mm256_add_ps(lo[t], acc[t])) * scale;
}

#define I8I8_VARIANT(T) \
    AVX2 static void i8i8_t##T(const ap_int8_gemv_args *a, int64_t r0, int64_t r1) { rows_i8i8(a, r0, r1, T); }
#define F32I8_VARIANT(T)                                                                                     \
    AVX2 static void f32i8_t##T(const ap_int8_gemv_args *a, const float *x, float *y, int64_t r0, int64_t r1) { \
        for (int64_t n = r0; n < r1; n++)                                                                    \
            row_f32i8(a->w + n * a->k, a->k, x, a->xstride, a->scale[n], y + n, a->ystride, T);             \
    }
I8I8_VARIANT(1) I8I8_VARIANT(2) I8I8_VARIANT(3) I8I8_VARIANT(4)
I8I8_VARIANT(5) I8I8_VARIANT(6) I8I8_VARIANT(7) I8I8_VARIANT(8)
#define F32I8_HALVES_VARIANT(T)                                                                              \
    AVX2 static void f32i8_t##T(const ap_int8_gemv_args *a, const float *x, float *y, int64_t r0, int64_t r1) { \
        for (int64_t n = r0; n < r1; n++)                                                                    \
            row_f32i8_halves(a->w + n * a->k, a->k, x, a->xstride, a->scale[n], y + n, a->ystride, T);      \
    }
F32I8_VARIANT(1) F32I8_VARIANT(2) F32I8_VARIANT(3) F32I8_VARIANT(4)
F32I8_HALVES_VARIANT(6) F32I8_HALVES_VARIANT(7) F32I8_HALVES_VARIANT(8)

typedef void (*i8i8_fn)(const ap_int8_gemv_args *, int64_t, int64_t);
typedef void (*f32i8_fn)(const ap_int8_gemv_args *, const float *, float *, int64_t, int64_t);
static const i8i8_fn I8I8[AP_MAX_TOKENS] = {i8i8_t1, i8i8_t2, i8i8_t3, i8i8_t4, i8i8_t5, i8i8_t6, i8i8_t7, i8i8_t8};
/* fp32 activations: at most 4 tokens per pass (8 accumulators); more tokens re-read the
 * block's weights from L1 for each group of 4 */
static const f32i8_fn F32I8[4] = {f32i8_t1, f32i8_t2, f32i8_t3, f32i8_t4};
static const f32i8_fn F32I8_HALVES[3] = {f32i8_t6, f32i8_t7, f32i8_t8};

#define I8_ROW_BLOCK 16 /* rows per pass over the token groups: 9 KB of weights stay in L1 */

AVX2 static void rows_f32i8(const ap_int8_gemv_args *a, int64_t row0, int64_t row1) {
    if (a->tokens >= 6) {
        F32I8_HALVES[a->tokens - 6](a, a->x, a->y, row0, row1);
        return;
    }
    for (int64_t b0 = row0; b0 < row1; b0 += I8_ROW_BLOCK) {
        const int64_t b1 = b0 + I8_ROW_BLOCK < row1 ? b0 + I8_ROW_BLOCK : row1;
        for (int t0 = 0; t0 < a->tokens; t0 += 4) {
            const int t = a->tokens - t0 < 4 ? a->tokens - t0 : 4;
            F32I8[t - 1](a, a->x + t0 * a->xstride, a->y + t0 * a->ystride, b0, b1);
        }
    }
}

void ap_int8_gemv_rows_avx2(const ap_int8_gemv_args *a, int64_t row0, int64_t row1) {
    if (a->x8 && a->k % 32 == 0) I8I8[a->tokens - 1](a, row0, row1);
    else if (!a->x8 && a->k % 8 == 0) rows_f32i8(a, row0, row1);
    else ap_int8_gemv_rows_portable(a, row0, row1);
}
#endif /* __x86_64__ */
