/* Vectorised expf, bit-identical to glibc's (ap_vexp.h). */
#include <math.h>
#include "ap_vexp.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma")))
#define INLINE static inline __attribute__((always_inline)) AVX2

/* Bits of 2^(i/32) minus (i << 52) / 32 (the exponent that k adds back): the table of the expf
 * in ARM's optimized-routines (MIT), which glibc ships as __exp2f_data.tab. */
static const uint64_t EXP2_TAB[32] = {
    0x3ff0000000000000ULL, 0x3fefd9b0d3158574ULL, 0x3fefb5586cf9890fULL, 0x3fef9301d0125b51ULL,
    0x3fef72b83c7d517bULL, 0x3fef54873168b9aaULL, 0x3fef387a6e756238ULL, 0x3fef1e9df51fdee1ULL,
    0x3fef06fe0a31b715ULL, 0x3feef1a7373aa9cbULL, 0x3feedea64c123422ULL, 0x3feece086061892dULL,
    0x3feebfdad5362a27ULL, 0x3feeb42b569d4f82ULL, 0x3feeab07dd485429ULL, 0x3feea47eb03a5585ULL,
    0x3feea09e667f3bcdULL, 0x3fee9f75e8ec5f74ULL, 0x3feea11473eb0187ULL, 0x3feea589994cce13ULL,
    0x3feeace5422aa0dbULL, 0x3feeb737b0cdc5e5ULL, 0x3feec49182a3f090ULL, 0x3feed503b23e255dULL,
    0x3feee89f995ad3adULL, 0x3feeff76f2fb5e47ULL, 0x3fef199bdd85529cULL, 0x3fef3720dcef9069ULL,
    0x3fef5818dcfba487ULL, 0x3fef7c97337b9b5fULL, 0x3fefa4afa2a490daULL, 0x3fefd0765b6e4540ULL};

/* expf of 4 floats with |x| < 88, in double as glibc does. */
INLINE __m128 exp4(__m128 x) {
    const __m256d xd = _mm256_cvtps_pd(x), shift = _mm256_set1_pd(0x1.8p+52);
    const __m256d z = _mm256_mul_pd(_mm256_set1_pd(0x1.71547652b82fep+0 * 32), xd);
    const __m256d kd_shifted = _mm256_add_pd(z, shift);  /* k in the low mantissa bits */
    const __m256i ki = _mm256_castpd_si256(kd_shifted);
    const __m256d r = _mm256_sub_pd(z, _mm256_sub_pd(kd_shifted, shift));
    __m256i t = _mm256_i64gather_epi64((const long long *)EXP2_TAB, _mm256_and_si256(ki, _mm256_set1_epi64x(31)), 8);
    const __m256d s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64(ki, 47)));  /* 2^(k/32) */
    const __m256d c0 = _mm256_set1_pd(0x1.c6af84b912394p-5 / 32 / 32 / 32);
    const __m256d c1 = _mm256_set1_pd(0x1.ebfce50fac4f3p-3 / 32 / 32);
    const __m256d c2 = _mm256_set1_pd(0x1.62e42ff0c52d6p-1 / 32);
    const __m256d p = _mm256_fmadd_pd(c0, r, c1);
    const __m256d y = _mm256_fmadd_pd(p, _mm256_mul_pd(r, r), _mm256_fmadd_pd(c2, r, _mm256_set1_pd(1.0)));
    return _mm256_cvtpd_ps(_mm256_mul_pd(y, s));
}

/* expf of 8 floats; any lane outside |x| < 88 (or NaN) sends the vector to expf. */
INLINE __m256 exp8(__m256 x) {
    const __m256 big = _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), x), _mm256_set1_ps(88.0f), _CMP_NLT_UQ);
    if (_mm256_movemask_ps(big)) {
        float v[8];
        _mm256_storeu_ps(v, x);
        for (int i = 0; i < 8; i++) v[i] = expf(v[i]);
        return _mm256_loadu_ps(v);
    }
    return _mm256_set_m128(exp4(_mm256_extractf128_ps(x, 1)), exp4(_mm256_castps256_ps128(x)));
}

AVX2 void ap_exp_shifted_avx2(float *v, int64_t n, float shift) {
    const __m256 sh = _mm256_set1_ps(shift);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(v + i, exp8(_mm256_sub_ps(_mm256_loadu_ps(v + i), sh)));
    for (; i < n; i++) v[i] = expf(v[i] - shift);
}

AVX2 void ap_silu_mul_avx2(float *g, const float *u, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i), e = exp8(_mm256_xor_ps(x, neg));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}
#else
/* other architectures never call these (the engine asks ap_engine_avx2 first) */
void ap_exp_shifted_avx2(float *v, int64_t n, float shift) {
    for (int64_t i = 0; i < n; i++) v[i] = expf(v[i] - shift);
}

void ap_silu_mul_avx2(float *g, const float *u, int64_t n) {
    for (int64_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}
#endif
