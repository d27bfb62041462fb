/* AVX2 decode kernel for uint8 LUTs (value = lo + scale * q, anyprec/lutq.py): 32 columns
 * per step, x in natural column order (AP_X_NATURAL).
 *
 * y[t, n] = lo[n] * sum_k x[t, k] + scale[n] * sum_k q[n, code[n, k]] * x[t, k]: the first sum
 * is one per token and call (x_sum), the second runs on bytes. q is looked up with `vpshufb`
 * in 16-byte tables of the row's LUT: one table at <= 4 bits, indexed by the codes built
 * from the planes as in ap_avx2_codes.h; at 5..8 bits 2**(bits-4) tables indexed by the low
 * 4 code bits and a `vpblendvb` tree whose masks are the upper planes' bit masks (an
 * equality blend per table and codes folded from all planes were measured slower, see
 * docs/ENGINE.md).
 *
 * fp32 activations: q widened to fp32, one FMA per 8 columns and token.
 * int8 activations (a->x8): x ~= sx[block] * x8 per 32-column block. With q' = q - 128 (signed,
 * -128..127), q * x8 = q' * x8 + 128 * x8, and `vpmaddubsw(|q'|, sign(x8, q'))` forms
 * q'0 * x0 + q'1 * x1 in int16: |q'| <= 128 (abs of -128 is 0x80, read unsigned) and
 * |x8| <= 127, so each pair is at most 2 * 128 * 127 = 32512 < 32767, never saturating (q
 * itself would not fit: 2 * 255 * 127 = 64770). `vpmaddwd` with ones then sums 4 columns
 * exactly in int32, converted to fp32 and scaled by the block's sx. The 128 * x8 part folds
 * into the per-token sum: y = (lo + 128 * scale) * x_sum + scale * sum_b sx_b * S'_b, with
 * x_sum = sum_b sx_b * sum_{k in b} x8[k].
 */
#if defined(__x86_64__)
#include <immintrin.h>
#include "ap_kernels.h"
#include "ap_avx2_codes.h"

/* sum_k q * x for T fp32 tokens: q widened to fp32, columns 8j..8j+7 in acc[t][j]. */
INLINE void dot_f32(const ap_gemv_args *a, const uint32_t *const src[], const __m256i *tabs, int bits, int T,
                    float out[4]) {
    __m256 acc[4][4];
    for (int t = 0; t < T; t++)
        for (int j = 0; j < 4; j++) acc[t][j] = _mm256_setzero_ps();
    uint8_t codes[32 * AP_CODE_WORDS] __attribute__((aligned(32)));
    for (int64_t w0 = 0; w0 < a->words; w0 += AP_CODE_WORDS) {
        const int64_t w1 = w0 + AP_CODE_WORDS < a->words ? w0 + AP_CODE_WORDS : a->words;
        u8_codes(src, w0, w1, bits, codes);
        for (int64_t w = w0; w < w1; w++) {
            __m256 wv[4];
            u8_widen(u8_lookup_codes32(_mm256_load_si256((const __m256i *)(codes + 32 * (w - w0))), src, w, tabs, bits), wv);
            fma_tokens32(a, w, wv, acc, T);
        }
    }
    for (int t = 0; t < T; t++)
        out[t] = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[t][0], acc[t][1]), _mm256_add_ps(acc[t][2], acc[t][3])));
}

/* sum_b sx_b * sum_{k in b} (q - 128) * x8 for T int8 tokens (see the top of the file). */
INLINE void dot_i8(const ap_gemv_args *a, const uint32_t *const src[], const __m256i *tabs, int bits, int T,
                   float out[4]) {
    const __m256i ones = _mm256_set1_epi16(1), bias = _mm256_set1_epi8((char)0x80);
    const int64_t sstride = a->x8stride / 32;
    __m256 acc[4];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    uint8_t codes[32 * AP_CODE_WORDS] __attribute__((aligned(32)));
    for (int64_t w0 = 0; w0 < a->words; w0 += AP_CODE_WORDS) {
        const int64_t w1 = w0 + AP_CODE_WORDS < a->words ? w0 + AP_CODE_WORDS : a->words;
        u8_codes(src, w0, w1, bits, codes);
        for (int64_t w = w0; w < w1; w++) {
            const __m256i c = _mm256_load_si256((const __m256i *)(codes + 32 * (w - w0)));
            const __m256i qs = _mm256_xor_si256(u8_lookup_codes32(c, src, w, tabs, bits), bias);
            const __m256i qa = _mm256_abs_epi8(qs);
            for (int t = 0; t < T; t++) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(a->x8 + t * a->x8stride + 32 * w));
                const __m256i s32 = _mm256_madd_epi16(_mm256_maddubs_epi16(qa, _mm256_sign_epi8(xv, qs)), ones);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), _mm256_broadcast_ss(a->x8_scale + t * sstride + w), acc[t]);
            }
        }
    }
    for (int t = 0; t < T; t++) out[t] = hsum_ps(acc[t]);
}

/* x_sum[t] for t < a->tokens as ap_gemv_args defines it (x unpadded, or x8 and x8_scale). */
void ap_u8_x_sums(const ap_gemv_args *a, float *sums) {
    for (int t = 0; t < a->tokens; t++) {
        float s = 0.0f;
        if (a->x8) {
            for (int64_t w = 0; w < a->words; w++) {
                int32_t b = 0;
                for (int c = 0; c < 32; c++) b += a->x8[t * a->x8stride + 32 * w + c];
                s += a->x8_scale[t * (a->x8stride / 32) + w] * (float)b;
            }
        } else {
            for (int64_t k = 0; k < a->in_features; k++) s += a->x[t * a->xstride + k];
        }
        sums[t] = s;
    }
}

INLINE void u8_rows(const ap_gemv_args *a, int64_t row0, int64_t row1, int bits, int T) {
    float sums[4];
    if (a->x_sum) for (int t = 0; t < T; t++) sums[t] = a->x_sum[t];
    else ap_u8_x_sums(a, sums);  /* a->tokens == T here */
    const float offset = a->x8 ? 128.0f : 0.0f;  /* the int8 path sums (q - 128) * x8 */
    __m256i tabs[1 << (AP_MAX_BITS - 4)];
    for (int64_t n = row0; n < row1; n++) {
        u8_tables((const uint8_t *)a->lut + (n << bits), bits, tabs);
        const uint32_t *src[AP_MAX_BITS];
        for (int p = 0; p < bits; p++) src[p] = a->planes + p * a->plane_stride + n * a->words;
        float dot[4];
        if (a->x8) dot_i8(a, src, tabs, bits, T, dot);
        else dot_f32(a, src, tabs, bits, T, dot);
        const float lo = a->lut_lo[n], scale = a->lut_scale[n], base = lo + offset * scale;
        for (int t = 0; t < T; t++) a->y[t * a->ystride + n] = base * sums[t] + scale * dot[t];
    }
}

/* bits and token count (1..4) as constants, so accumulators stay in registers */
#define U8_VARIANT(B, T) \
    AVX2 static void u8_b##B##_t##T(const ap_gemv_args *a, int64_t r0, int64_t r1) { u8_rows(a, r0, r1, B, T); }
#define U8_ALL_T(B) U8_VARIANT(B, 1) U8_VARIANT(B, 2) U8_VARIANT(B, 3) U8_VARIANT(B, 4)
U8_ALL_T(1) U8_ALL_T(2) U8_ALL_T(3) U8_ALL_T(4) U8_ALL_T(5) U8_ALL_T(6) U8_ALL_T(7) U8_ALL_T(8)

#define U8_ROW(B) {u8_b##B##_t1, u8_b##B##_t2, u8_b##B##_t3, u8_b##B##_t4}
static const ap_gemv_fn U8_TABLE[AP_MAX_BITS][4] = {U8_ROW(1), U8_ROW(2), U8_ROW(3), U8_ROW(4),
                                                 U8_ROW(5), U8_ROW(6), U8_ROW(7), U8_ROW(8)};

void ap_gemv_rows_avx2_u8(const ap_gemv_args *a, int64_t row0, int64_t row1) {
    ap_gemv_token_groups(a, row0, row1, U8_TABLE[a->bits - 1]);
}

#endif /* __x86_64__ */
