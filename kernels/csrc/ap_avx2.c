/* AVX2+FMA decode kernel (x86-64 CPUs without AVX-512): 32 columns per step.
 *
 * No mask registers here, so each plane's 32-bit word is spread to 32 bytes (broadcast,
 * byte shuffle, bit test) and folded into byte codes MSB-first (codes = 2 * codes + bit).
 * Dword lane i of `codes >> 8j` then holds the code of column 4i + j in its low byte; the
 * caller stores x to match (AP_X_PERM4_32). Centroids: the row's LUT widened to fp32 once;
 * <= 3 bits one `vpermps` per 8 columns, 4 bits two `vpermps` picked by the code's top bit,
 * 5..8 bits a gather from the fp32 row.
 */
#if defined(__x86_64__)
#include <immintrin.h>
#include "ap_kernels.h"

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline)) AVX2

/* Byte k of the result = code of column k of word w (planes [0, bits), MSB first). */
INLINE __m256i byte_codes32(const uint32_t *const src[], int64_t w, int bits) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit_of_byte = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i codes = _mm256_setzero_si256();
    for (int p = 0; p < bits; p++) {
        const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)src[p][w]), spread);
        const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit_of_byte), bit_of_byte);
        codes = _mm256_sub_epi8(_mm256_add_epi8(codes, codes), set);  /* set is -1 where the bit is 1 */
    }
    return codes;
}

/* fp32 centroids of the 8 lanes of idx (low byte of each lane = code). */
INLINE __m256 lookup8(__m256i idx, const float *lut, __m256 lo, __m256 hi, int bits) {
    if (bits <= 3) return _mm256_permutevar8x32_ps(lo, idx);
    if (bits == 4) {
        const __m256 top = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));  /* code bit 3 -> sign */
        return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx), top);
    }
    return _mm256_i32gather_ps(lut, _mm256_and_si256(idx, _mm256_set1_epi32(0xff)), 4);
}

INLINE void avx2_rows_impl(const ap_gemv_args *a, int64_t row0, int64_t row1, int bits, int T) {
    float lut[1 << AP_MAX_BITS] __attribute__((aligned(32)));
    const int size = 1 << bits;
    for (int64_t n = row0; n < row1; n++) {
        if (a->lut_f16) {
            const uint16_t *src = (const uint16_t *)a->lut + n * size;
            int i = 0;
            for (; i + 8 <= size; i += 8) _mm256_store_ps(lut + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
            for (; i < size; i++) lut[i] = ap_half_to_float(src[i]);
        } else {
            const float *src = (const float *)a->lut + n * size;
            for (int i = 0; i < size; i++) lut[i] = src[i];
        }
        for (int i = size; i < 16; i++) lut[i] = 0.0f;  /* the 8-lane tables read 16 entries */
        const __m256 lo = _mm256_load_ps(lut), hi = _mm256_load_ps(lut + 8);
        const uint32_t *src[AP_MAX_BITS];
        for (int p = 0; p < bits; p++) src[p] = a->planes + p * a->plane_stride + n * a->words;
        __m256 acc[4];
        for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
        __m256 acc1[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int64_t w = 0; w < a->words; w++) {
            const __m256i codes = byte_codes32(src, w, bits);
            const float *x = a->x + 32 * w;
            for (int j = 0; j < 4; j++) {
                const __m256 wv = lookup8(_mm256_srli_epi32(codes, 8 * j), lut, lo, hi, bits);
                if (T == 1) {  /* four chains: one would wait on the FMA latency */
                    acc1[j] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + 8 * j), acc1[j]);
                } else {
                    for (int t = 0; t < T; t++)
                        acc[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + t * a->xstride + 8 * j), acc[t]);
                }
            }
        }
        if (T == 1) acc[0] = _mm256_add_ps(_mm256_add_ps(acc1[0], acc1[1]), _mm256_add_ps(acc1[2], acc1[3]));
        for (int t = 0; t < T; t++) {
            const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc[t]), _mm256_extractf128_ps(acc[t], 1));
            const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            a->y[t * a->ystride + n] = _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
        }
    }
}

/* bits and token count (1..4) as constants, so accumulators stay in registers */
#define AVX2_VARIANT(B, T) \
    AVX2 static void avx2_b##B##_t##T(const ap_gemv_args *a, int64_t r0, int64_t r1) { avx2_rows_impl(a, r0, r1, B, T); }
#define AVX2_ALL_T(B) AVX2_VARIANT(B, 1) AVX2_VARIANT(B, 2) AVX2_VARIANT(B, 3) AVX2_VARIANT(B, 4)
AVX2_ALL_T(1) AVX2_ALL_T(2) AVX2_ALL_T(3) AVX2_ALL_T(4) AVX2_ALL_T(5) AVX2_ALL_T(6) AVX2_ALL_T(7) AVX2_ALL_T(8)

#define AVX2_ROW(B) {avx2_b##B##_t1, avx2_b##B##_t2, avx2_b##B##_t3, avx2_b##B##_t4}
static const ap_gemv_fn AVX2_TABLE[AP_MAX_BITS][4] = {AVX2_ROW(1), AVX2_ROW(2), AVX2_ROW(3), AVX2_ROW(4),
                                                   AVX2_ROW(5), AVX2_ROW(6), AVX2_ROW(7), AVX2_ROW(8)};

void ap_gemv_rows_avx2(const ap_gemv_args *a, int64_t row0, int64_t row1) {
    ap_gemv_token_groups(a, row0, row1, AVX2_TABLE[a->bits - 1]);
}

#endif /* __x86_64__ */
