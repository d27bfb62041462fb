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
 * Overflow: |q * xq| <= 255 * 32767 = 8355585. Each int32 lane of an accumulator adds the
 * pairs q[k] * xq[k] + q[k+1] * xq[k+1] of every 16-column step (AP_I16_KB / 8 = 32 products
 * per block), and the 8 lanes are then summed in int32 (`vphaddd`, wrapping): AP_I16_KB = 256
 * products, 256 * 8355585 = 2139029760 <= 2^31 - 1 = 2147483647, so no sum can wrap. The
 * block's int32 dot product is then converted to fp32 and scaled by its sx.
 */
#include <math.h>
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

/* Token t of X from its fp32 row x (K columns), per AP_I16_KB-column block: sx = absmax / 32767,
 * xq = round-half-even(x * (32767 / absmax)) (`vcvtps2dq`, lrintf for the tail), so
 * |x - sx * xq| <= sx / 2 plus fp32 rounding; xq = 0 past K, xsum = the fp32 sum of x. */
AVX2 void ap_quantize_i16_avx2(const float *x, int64_t K, ap_i16_acts *X, int64_t t) {
    int16_t *q = X->xq + t * X->kpad;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 total = _mm256_setzero_ps();
    float tail_sum = 0.0f;
    for (int64_t b = 0; b < X->nblk; b++) {
        const int64_t k0 = b * AP_I16_KB, k1 = k0 + AP_I16_KB < K ? k0 + AP_I16_KB : K;
        __m256 vmax = _mm256_setzero_ps();
        int64_t k = k0;
        for (; k + 8 <= k1; k += 8) {
            const __m256 v = _mm256_loadu_ps(x + k);
            vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, v));
            total = _mm256_add_ps(total, v);
        }
        float amax = 0.0f, lanes[8];
        _mm256_storeu_ps(lanes, vmax);
        for (int i = 0; i < 8; i++) amax = lanes[i] > amax ? lanes[i] : amax;
        for (int64_t kk = k; kk < k1; kk++) {
            amax = fabsf(x[kk]) > amax ? fabsf(x[kk]) : amax;
            tail_sum += x[kk];
        }
        const float inv = amax > 0.0f ? 32767.0f / amax : 0.0f;
        X->sx[t * X->nblk + b] = amax / 32767.0f;
        const __m256 vinv = _mm256_set1_ps(inv);
        for (k = k0; k + 16 <= k1; k += 16) {
            const __m256i lo = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k), vinv));
            const __m256i hi = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8), vinv));
            /* packs interleaves the 128-bit lanes: put them back in column order */
            _mm256_storeu_si256((__m256i *)(q + k), _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xd8));
        }
        for (; k < k1; k++) q[k] = (int16_t)lrintf(x[k] * inv);
    }
    for (int64_t k = K; k < X->kpad; k++) q[k] = 0;
    float lanes[8];
    _mm256_storeu_ps(lanes, total);
    X->xsum[t] = tail_sum + lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5] + lanes[6] + lanes[7];
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

/* 2 tokens x 4 rows: 8 int32 accumulators + 4 weights + 1 x + the product before its add =
 * 14 ymm registers. 4 x 3 (the fp32 tile's shape) needs 17 and spills. Measured on Zen 3
 * (1 core, L1-resident operands, busy machine): 2 x 4 and 3 x 3 reach ~70-77 GMAC/s, 4 x 2
 * ~56, 4 x 3 ~40, the fp32 4 x 3 tile ~40; in the blocked GEMM below 2 x 4 gives 42-46. */
#define MT 2 /* tokens per micro-tile */
#define NR 4 /* weight rows per micro-tile */

_Static_assert(MT * NR == 8, "sum8 reduces exactly 8 accumulators");

/* The 8 lane sums of v[0..7] (sum k = all lanes of v[k]); each fits int32 (header bound). */
INLINE __m256i sum8(const __m256i v[8]) {
    const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

/* One m x r micro-tile (m <= MT, r <= NR; constants after inlining) over the columns
 * [k0, k1) of activation block b: acc[t][j] += sx[t, b] * xq[t] . q[j] over those columns. */
INLINE void micro_i16(const ap_i16_acts *X, int64_t t0, const int16_t *w, int64_t kpad, int64_t b, int64_t k0,
                      int64_t k1, float *acc, int64_t ys, const int m, const int r) {
    __m256i s[MT * NR];
    for (int i = 0; i < MT * NR; i++) s[i] = _mm256_setzero_si256();
    for (int64_t k = k0; k < k1; k += 16) {
        __m256i wv[NR];
        for (int j = 0; j < r; j++) wv[j] = _mm256_loadu_si256((const __m256i *)(w + j * kpad + k));
        for (int t = 0; t < m; t++) {
            const __m256i xv = _mm256_loadu_si256((const __m256i *)(X->xq + (t0 + t) * kpad + k));
            for (int j = 0; j < r; j++) s[t * NR + j] = _mm256_add_epi32(s[t * NR + j], _mm256_madd_epi16(xv, wv[j]));
        }
    }
    int32_t dot[MT * NR] __attribute__((aligned(32)));
    _mm256_store_si256((__m256i *)dot, sum8(s));
    for (int t = 0; t < m; t++) {
        const float sx = X->sx[(t0 + t) * X->nblk + b];
        for (int j = 0; j < r; j++) acc[t * ys + j] += sx * (float)dot[t * NR + j];
    }
}

/* Blocked over columns: one AP_I16_KB-column slice of the block's nb rows (nb * 512 bytes)
 * stays in L1 while every token tile passes over it, so the weights are read from L2 once
 * per slice instead of once per token tile (L2 bandwidth was the limit of the unblocked loop). */
AVX2 void ap_i16_block_avx2(const ap_i16_acts *X, const int16_t *w, int64_t nb, int64_t kpad, const float *lo,
                            const float *scale, float *y, int64_t ys) {
    for (int64_t t = 0; t < X->tokens; t++)
        for (int64_t j = 0; j < nb; j++) y[t * ys + j] = 0.0f;
    for (int64_t b = 0, k0 = 0; k0 < kpad; b++, k0 += AP_I16_KB) {
        const int64_t k1 = k0 + AP_I16_KB < kpad ? k0 + AP_I16_KB : kpad;
        for (int64_t t0 = 0; t0 < X->tokens; t0 += MT) {
            const int m = X->tokens - t0 < MT ? (int)(X->tokens - t0) : MT;
            for (int64_t j0 = 0; j0 < nb; j0 += NR) {
                const int r = nb - j0 < NR ? (int)(nb - j0) : NR;
                const int16_t *wj = w + j0 * kpad;
                float *acc = y + t0 * ys + j0;
                switch (m * 8 + r) {
#define CASE(M, R) \
    case M * 8 + R: micro_i16(X, t0, wj, kpad, b, k0, k1, acc, ys, M, R); break;
                    CASE(1, 1) CASE(1, 2) CASE(1, 3) CASE(1, 4) CASE(2, 1) CASE(2, 2) CASE(2, 3) CASE(2, 4)
#undef CASE
                    default: break;
                }
            }
        }
    }
    for (int64_t t = 0; t < X->tokens; t++)
        for (int64_t j = 0; j < nb; j++) y[t * ys + j] = lo[j] * X->xsum[t] + scale[j] * y[t * ys + j];
}

#endif /* __x86_64__ */
