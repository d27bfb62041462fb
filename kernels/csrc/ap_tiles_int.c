/* Integer tiles (ap_tiles.h) for uint8-LUT layers on AVX2: the block of weight rows is
 * dequantized to its int16 codes q (value = lo + scale * q, lutq), the activations to int16
 * (one scale per AP_I16_KB columns of a token), and the micro-GEMM multiplies them with
 * `vpmaddwd` (16 multiply-adds per instruction against 8 per fp32 FMA). Per row n and token t:
 *
 *   y[t, n] = lo[n] * sum_k x[t, k] + scale[n] * sum_b sx[t, b] * sum_{k in b} xq[t, k] * q[n, k]
 *
 * sum_k x is the exact fp32 sum of the activations, so only the q term sees the activation
 * rounding (at most sx / 2 = absmax of the token's column block / 65534 per column).
 *
 * Overflow: each int32 lane of an accumulator adds pairs q[k] * xq[k] + q[k+1] * xq[k+1]
 * from every 16-column step, i.e. AP_I16_KB / 8 products of at most 255 * 32767 per block
 * before it is converted to fp32. With AP_I16_KB = 256 that is 32 * 255 * 32767 < 2^28; the
 * bound 2^31 - 1 would allow blocks up to 2048 columns (256 * 255 * 32767 = 2139029760).
 */
#include "ap_tiles.h"

#if defined(__x86_64__)
#include "ap_avx2_codes.h"

/* Rows [r0, r1) of the layer as int16 q, row-major [r1 - r0, kpad] (kpad = 32 * words;
 * columns past in_features hold whatever codes the padding planes give: the activations
 * there are 0). */
AVX2 static void deq_i16_rows(const ap_dequant_args *a, int64_t r0, int64_t r1, int16_t *out, int64_t kpad,
                              const int bits) {
    for (int64_t n = r0; n < r1; n++) {
        const uint32_t *src[AP_MAX_BITS];
        for (int p = 0; p < bits; p++) src[p] = a->planes + p * a->plane_stride + n * a->words;
        __m256i tabs[1 << (AP_MAX_BITS - 4)];
        u8_tables((const uint8_t *)a->lut + (n << bits), bits, tabs);
        int16_t *row = out + (n - r0) * kpad;
        for (int64_t w = 0; w < a->words; w++) {
            const __m256i q = u8_lookup32(src, w, tabs, bits);
            _mm256_storeu_si256((__m256i *)(row + 32 * w), _mm256_cvtepu8_epi16(_mm256_castsi256_si128(q)));
            _mm256_storeu_si256((__m256i *)(row + 32 * w + 16), _mm256_cvtepu8_epi16(_mm256_extracti128_si256(q, 1)));
        }
    }
}

#define DEQ_I16(B) \
    AVX2 static void deq_i16_b##B(const ap_dequant_args *a, int64_t r0, int64_t r1, int16_t *o, int64_t kp) { \
        deq_i16_rows(a, r0, r1, o, kp, B);                                                                   \
    }
DEQ_I16(1) DEQ_I16(2) DEQ_I16(3) DEQ_I16(4) DEQ_I16(5) DEQ_I16(6) DEQ_I16(7) DEQ_I16(8)

typedef void (*deq_i16_fn)(const ap_dequant_args *, int64_t, int64_t, int16_t *, int64_t);
static const deq_i16_fn DEQ_I16_TABLE[AP_MAX_BITS] = {deq_i16_b1, deq_i16_b2, deq_i16_b3, deq_i16_b4,
                                                      deq_i16_b5, deq_i16_b6, deq_i16_b7, deq_i16_b8};

AVX2 void ap_dequant_rows_i16_avx2(const ap_dequant_args *a, int64_t r0, int64_t r1, int16_t *out, int64_t kpad) {
    DEQ_I16_TABLE[a->bits - 1](a, r0, r1, out, kpad);
}

/* 4 tokens x 2 rows: 8 int32 accumulators + 2 weights + 1 x + the product before its add =
 * 12 ymm registers. 4 x 3 (the fp32 tile's shape) needs 17 and spills: measured on Zen 3,
 * 4 x 2 runs 35 GMAC/s per core against 17 for 4 x 3 (and 17 for the fp32 4 x 3 tile). */
#define MT 4 /* tokens per micro-tile */
#define NR 2 /* weight rows per micro-tile */

INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* One m x r micro-tile (m <= MT, r <= NR; constants after inlining) of ap_i16_block_avx2. */
INLINE void micro_i16(const ap_i16_acts *X, int64_t t0, const int16_t *w, int64_t kpad, const float *lo,
                      const float *scale, float *y, int64_t ys, const int m, const int r) {
    float facc[MT][NR][8] __attribute__((aligned(32))) = {{{0}}};  /* in memory: the loop keeps its registers */
    for (int64_t b = 0, k0 = 0; k0 < kpad; b++, k0 += AP_I16_KB) {
        const int64_t k1 = k0 + AP_I16_KB < kpad ? k0 + AP_I16_KB : kpad;
        __m256i acc[MT][NR];
        for (int t = 0; t < m; t++)
            for (int j = 0; j < r; j++) acc[t][j] = _mm256_setzero_si256();
        for (int64_t k = k0; k < k1; k += 16) {
            __m256i wv[NR];
            for (int j = 0; j < r; j++) wv[j] = _mm256_loadu_si256((const __m256i *)(w + j * kpad + k));
            for (int t = 0; t < m; t++) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(X->xq + (t0 + t) * kpad + k));
                for (int j = 0; j < r; j++) acc[t][j] = _mm256_add_epi32(acc[t][j], _mm256_madd_epi16(xv, wv[j]));
            }
        }
        for (int t = 0; t < m; t++) {
            const __m256 s = _mm256_set1_ps(X->sx[(t0 + t) * X->nblk + b]);
            for (int j = 0; j < r; j++)
                _mm256_store_ps(facc[t][j], _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[t][j]), s, _mm256_load_ps(facc[t][j])));
        }
    }
    for (int t = 0; t < m; t++)
        for (int j = 0; j < r; j++) y[t * ys + j] = lo[j] * X->xsum[t0 + t] + scale[j] * hsum(_mm256_load_ps(facc[t][j]));
}

AVX2 void ap_i16_block_avx2(const ap_i16_acts *X, const int16_t *w, int64_t nb, int64_t kpad, const float *lo,
                            const float *scale, float *y, int64_t ys) {
    for (int64_t t0 = 0; t0 < X->tokens; t0 += MT) {
        const int m = X->tokens - t0 < MT ? (int)(X->tokens - t0) : MT;
        for (int64_t j0 = 0; j0 < nb; j0 += NR) {
            const int r = nb - j0 < NR ? (int)(nb - j0) : NR;
            const int16_t *wj = w + j0 * kpad;
            float *yt = y + t0 * ys + j0;
            switch (m * 4 + r) {
#define CASE(M, R) \
    case M * 4 + R: micro_i16(X, t0, wj, kpad, lo + j0, scale + j0, yt, ys, M, R); break;
                CASE(1, 1) CASE(1, 2) CASE(2, 1) CASE(2, 2) CASE(3, 1) CASE(3, 2) CASE(4, 1) CASE(4, 2)
#undef CASE
                default: break;
            }
        }
    }
}

#endif /* __x86_64__ */
