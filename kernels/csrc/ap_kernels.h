/* Shared declarations of the native bitplane-LUT kernels (format v1 planes).
 *
 * Planes: int32 words, plane p of row n at planes + p * plane_stride + n * W, column k in
 * word k / 32, bit k % 32 (LSB first); plane 0 is the most significant code bit.
 * LUT: float32 or float16 [N, 2**bits], row-contiguous; or uint8 codes [N, 2**bits] with a
 * float32 lo and scale per row (value = lo + scale * q, anyprec/lutq.py), flagged by lut_u8.
 */
#ifndef AP_KERNELS_H
#define AP_KERNELS_H

#include <stdint.h>

#define AP_MAX_BITS 8
#define AP_MAX_TOKENS 8   /* decode kernels take up to this many tokens per call */
#define AP_CHUNK 64       /* columns per inner step: one 64-bit word of each plane */

typedef struct {
    const uint32_t *planes;  /* plane 0, row 0, word 0 */
    int64_t plane_stride;    /* words between consecutive planes */
    int64_t n_rows, words, in_features;
    const void *lut;         /* [N, 2**bits] */
    int lut_f16;             /* 1: lut is IEEE half, 0: float32 (ignored when lut_u8) */
    int bits;
    const float *x;          /* [T, xstride] padded with zeros to a multiple of AP_CHUNK */
    int64_t xstride;
    int tokens;              /* 1..AP_MAX_TOKENS */
    float *y;                /* [T, ystride] */
    int64_t ystride;
    int lut_u8;              /* 1: lut is uint8 [N, 2**bits] codes with lut_lo / lut_scale */
    const float *lut_lo, *lut_scale;  /* [N] each when lut_u8 */
    /* int8 activations (uint8 LUTs, ap_lut8_avx2.c); x8 NULL: the fp32 x above */
    const int8_t *x8;        /* [T, x8stride], x8stride a multiple of 32, zero-padded */
    const float *x8_scale;   /* [T, x8stride / 32]: x ~= x8_scale[k / 32] * x8[k] */
    int64_t x8stride;
    const float *x_sum;      /* [T] sum_k x (sum_k x8_scale * x8 with x8), or NULL: the kernel sums */
} ap_gemv_args;

typedef struct {
    const uint32_t *planes;
    int64_t plane_stride, n_rows, words, in_features;
    const void *lut;
    int lut_f16, bits;
    void *out;               /* [row1 - row0, in_features] */
    int out_bf16;            /* 1: bfloat16 output, 0: float32 */
    int lut_u8;              /* as in ap_gemv_args */
    const float *lut_lo, *lut_scale;
} ap_dequant_args;

typedef struct {
    const uint16_t *w;       /* float16 [n_rows, k], row-contiguous */
    int64_t n_rows, k;
    const float *x;          /* [T, xstride] */
    int64_t xstride;
    int tokens;              /* 1..AP_MAX_TOKENS */
    float *y;                /* [T, ystride] */
    int64_t ystride;
} ap_half_gemv_args;

typedef struct {
    const int8_t *w;         /* int8 [n_rows, k], row-contiguous (per-row symmetric) */
    const float *scale;      /* float32 [n_rows]: W[n, k] ~= scale[n] * w[n, k] */
    int64_t n_rows, k;
    const float *x;          /* [T, xstride] fp32 activations */
    int64_t xstride;
    const int8_t *x8;        /* NULL: fp32 activations; else int8 [T, x8stride] (ap_quantize_acts_int8) */
    const float *sx;         /* [T] activation scales when x8 is set */
    int64_t x8stride;
    int tokens;              /* 1..AP_MAX_TOKENS */
    float *y;                /* [T, ystride] */
    int64_t ystride;
} ap_int8_gemv_args;

/* Row-range workers: each computes rows [row0, row1). */
typedef void (*ap_gemv_fn)(const ap_gemv_args *a, int64_t row0, int64_t row1);

/* Runs by_tokens[T - 1] (variants compiled for 1..4 tokens, whose accumulators stay in
 * registers) over the tokens of `a` in groups of up to 4 (x, x8 and its scales, x_sum and y
 * offset per group); each group re-reads the rows' planes, which the first group left in cache. */
static inline void ap_gemv_token_groups(const ap_gemv_args *a, int64_t row0, int64_t row1,
                                        const ap_gemv_fn by_tokens[4]) {
    for (int t0 = 0; t0 < a->tokens; t0 += 4) {
        ap_gemv_args g = *a;
        g.tokens = a->tokens - t0 < 4 ? a->tokens - t0 : 4;
        g.y = a->y + t0 * a->ystride;
        if (a->x) g.x = a->x + t0 * a->xstride;
        if (a->x8) {  /* int8 activations and their per-32-column scales */
            g.x8 = a->x8 + t0 * a->x8stride;
            g.x8_scale = a->x8_scale + t0 * (a->x8stride / 32);
        }
        if (a->x_sum) g.x_sum = a->x_sum + t0;
        by_tokens[g.tokens - 1](&g, row0, row1);
    }
}

void ap_gemv_rows_portable(const ap_gemv_args *a, int64_t row0, int64_t row1);
void ap_gemv_rows_avx2(const ap_gemv_args *a, int64_t row0, int64_t row1);
int ap_avx2_x_order(const ap_gemv_args *a);  /* AP_X_PERM4_32, or AP_X_NATURAL (5..8 bits, fp16 LUT) */
void ap_gemv_rows_avx512(const ap_gemv_args *a, int64_t row0, int64_t row1);
void ap_gemv_rows_avx2_u8(const ap_gemv_args *a, int64_t row0, int64_t row1);  /* lut_u8, x natural */
void ap_u8_x_sums(const ap_gemv_args *a, float *sums);  /* x_sum [tokens] for a uint8-LUT call */
void ap_dequant_rows_portable(const ap_dequant_args *a, int64_t row0, int64_t row1, int64_t out_row0);
void ap_dequant_rows_avx2(const ap_dequant_args *a, int64_t row0, int64_t row1, int64_t out_row0);
void ap_dequant_rows_avx512(const ap_dequant_args *a, int64_t row0, int64_t row1, int64_t out_row0);

void ap_half_gemv_rows_portable(const ap_half_gemv_args *a, int64_t row0, int64_t row1);
void ap_half_gemv_rows_avx2(const ap_half_gemv_args *a, int64_t row0, int64_t row1);
void ap_half_gemv_rows_avx512(const ap_half_gemv_args *a, int64_t row0, int64_t row1);

void ap_quantize_acts_int8(const ap_int8_gemv_args *a, int8_t *x8, float *sx, int64_t kpad);
void ap_quantize_acts_int8_groups(const float *x, int64_t xstride, int tokens, int64_t k, int64_t group,
                                  int8_t *x8, int64_t kpad, float *sx, int64_t sx_stride);
void ap_int8_gemv_rows_portable(const ap_int8_gemv_args *a, int64_t row0, int64_t row1);
void ap_int8_gemv_rows_avx2(const ap_int8_gemv_args *a, int64_t row0, int64_t row1);

void ap_prepare_x_avx512(const float *src, float *dst, int64_t K, int64_t kpad, const int64_t cols[AP_CHUNK]);
void ap_gemv_rows_avx512_vbmi(const ap_gemv_args *a, int64_t row0, int64_t row1);

/* Column order in which a decode kernel reads x within each 64-column chunk. */
enum { AP_X_NATURAL = 0, AP_X_PERM4 = 1, AP_X_PERM16 = 2, AP_X_PERM4_32 = 3 };
/* PERM4 (AVX-512, bits <= 5): position 16j + i holds column 4i + j.
 * PERM16 (AVX-512 VBMI, bits >= 6, fp16 lut): position 16j + i holds column
 * 16 * (2 * (j % 2) + i / 8) + 8 * (j / 2) + i % 8.
 * PERM4_32 (AVX2, bits <= 4 or an fp32 LUT): in each 32-column half h, position 32h + 8j + i
 * holds column 32h + 4i + j. */

uint64_t ap_xor_words(const uint64_t *data, int64_t n_words);
float ap_half_to_float(uint16_t h);
uint16_t ap_float_to_bf16(float f);

#endif
