/* Dense mat-vec from a float16-stored weight: y[t, n] = sum_k float(W[n, k]) * x[t, k].
 *
 * For the layers the artifact keeps dense in fp16 (the tied embedding / lm_head): the
 * weights are widened exactly to fp32 in registers and accumulated in fp32, so the
 * result is the fp32 model's up to summation order, while half the bytes are read.
 * Three builds picked at run time like the bitplane kernels: AVX-512, AVX2+F16C, scalar.
 */
#include "ap_kernels.h"

void ap_half_gemv_rows_portable(const ap_half_gemv_args *a, int64_t row0, int64_t row1) {
    for (int64_t n = row0; n < row1; n++) {
        const uint16_t *w = a->w + n * a->k;
        float acc[AP_MAX_TOKENS] = {0};
        for (int64_t k = 0; k < a->k; k++) {
            const float wk = ap_half_to_float(w[k]);
            for (int t = 0; t < a->tokens; t++) acc[t] += wk * a->x[t * a->xstride + k];
        }
        for (int t = 0; t < a->tokens; t++) a->y[t * a->ystride + n] = acc[t];
    }
}

#if defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("avx2,fma,f16c"))) void ap_half_gemv_rows_avx2(const ap_half_gemv_args *a, int64_t row0,
                                                                     int64_t row1) {
    const int64_t full = a->k / 8 * 8;
    for (int64_t n = row0; n < row1; n++) {
        const uint16_t *w = a->w + n * a->k;
        __m256 acc[AP_MAX_TOKENS];
        for (int t = 0; t < a->tokens; t++) acc[t] = _mm256_setzero_ps();
        for (int64_t k = 0; k < full; k += 8) {
            const __m256 wk = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + k)));
            for (int t = 0; t < a->tokens; t++)
                acc[t] = _mm256_fmadd_ps(wk, _mm256_loadu_ps(a->x + t * a->xstride + k), acc[t]);
        }
        for (int t = 0; t < a->tokens; t++) {
            float lanes[8], sum = 0.0f;
            _mm256_storeu_ps(lanes, acc[t]);
            for (int i = 0; i < 8; i++) sum += lanes[i];
            for (int64_t k = full; k < a->k; k++) sum += ap_half_to_float(w[k]) * a->x[t * a->xstride + k];
            a->y[t * a->ystride + n] = sum;
        }
    }
}

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

/* 16 weights at k, widened; lanes past `valid` are 0. */
AVX512 static inline __m512 weights16(const uint16_t *w, int64_t k, int64_t valid) {
    const __mmask16 m = valid >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << valid) - 1u);
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w + k));
}

AVX512 static inline __m512 x16(const float *x, int64_t k, int64_t valid) {
    const __mmask16 m = valid >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << valid) - 1u);
    return _mm512_maskz_loadu_ps(m, x + k);
}

AVX512 void ap_half_gemv_rows_avx512(const ap_half_gemv_args *a, int64_t row0, int64_t row1) {
    const int64_t K = a->k, full64 = K / 64 * 64;
    for (int64_t n = row0; n < row1; n++) {
        const uint16_t *w = a->w + n * K;
        if (a->tokens == 1) {  /* four accumulators: one FMA chain would wait on latency */
            __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
            int64_t k = 0;
            for (; k < full64; k += 64)
                for (int j = 0; j < 4; j++)
                    acc[j] = _mm512_fmadd_ps(weights16(w, k + 16 * j, 16), _mm512_loadu_ps(a->x + k + 16 * j), acc[j]);
            for (; k < K; k += 16) acc[0] = _mm512_fmadd_ps(weights16(w, k, K - k), x16(a->x, k, K - k), acc[0]);
            a->y[n] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
            continue;
        }
        __m512 acc[AP_MAX_TOKENS];
        for (int t = 0; t < a->tokens; t++) acc[t] = _mm512_setzero_ps();
        for (int64_t k = 0; k < K; k += 16) {
            const __m512 wk = weights16(w, k, K - k);
            for (int t = 0; t < a->tokens; t++)
                acc[t] = _mm512_fmadd_ps(wk, x16(a->x + t * a->xstride, k, K - k), acc[t]);
        }
        for (int t = 0; t < a->tokens; t++) a->y[t * a->ystride + n] = _mm512_reduce_add_ps(acc[t]);
    }
}
#endif /* __x86_64__ */
