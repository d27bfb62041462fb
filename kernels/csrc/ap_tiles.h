/* Tile GEMM: many rows (tokens) through one bitplane-LUT layer by dequantized tiles.
 *
 * For R rows grouped by bit-width, each block of output rows is dequantized once per
 * group (the ap_dequant_rows_* kernels, into a thread-local fp32 buffer sized for L2),
 * then a register-blocked micro-GEMM multiplies that group's rows against it. The lookup
 * work is paid once per block and width instead of once per 8 rows as in the mat-vec path.
 *
 * Two tile kinds: fp32 (the block as lo + scale * q or the fp LUT's values, fp32 FMAs; every
 * LUT layout and ISA) and int16 (uint8 LUTs on AVX2: the block as int16 q, the activations
 * as int16 per AP_I16_KB columns, `vpmaddwd` products; ap_tiles_int.c).
 */
#ifndef AP_TILES_H
#define AP_TILES_H

#include <stdint.h>
#include "ap_kernels.h"

typedef struct {
    ap_dequant_args w;   /* the layer at this group's bit-width (w.out and w.out_bf16 are ignored) */
    const float *x;      /* [tokens, xstride], natural column order, in_features columns used */
    int64_t xstride;
    int64_t tokens;      /* >= 1, any count */
    float *y;            /* [tokens, ystride]: y[t, n] = x[t, :] . W[n, :] */
    int64_t ystride;
} ap_tile_group;

/* Tile kinds: AP_TILES_AUTO picks int16 where it applies (uint8 LUTs, AVX2), else fp32. */
enum { AP_TILES_AUTO = 0, AP_TILES_FP32 = 1 };

#define AP_I16_KB 256 /* activation columns per int16 scale (and per int32 accumulator flush) */

/* One group's activations as int16: xq [tokens, kpad] (zero past the layer's columns),
 * sx [tokens, nblk] (x ~= sx * xq per AP_I16_KB-column block), xsum [tokens] = sum of x. */
typedef struct {
    int16_t *xq;
    float *sx, *xsum;
    int64_t tokens, kpad, nblk;
} ap_i16_acts;

/* Defined in ap_tiles_int.c (AVX2; uint8 LUTs only). Token t of X from the fp32 row x [K]. */
void ap_quantize_i16_avx2(const float *x, int64_t K, ap_i16_acts *X, int64_t t);
/* Rows [r0, r1) as int16 q [r1 - r0, kpad]. */
void ap_dequant_rows_i16_avx2(const ap_dequant_args *a, int64_t r0, int64_t r1, int16_t *out, int64_t kpad);
/* y[t, j] = x[t] . W[j] for every token of X and the nb rows of w (int16 q [nb, kpad], the
 * rows' lo and scale). */
void ap_i16_block_avx2(const ap_i16_acts *X, const int16_t *w, int64_t nb, int64_t kpad, const float *lo,
                       const float *scale, float *y, int64_t ys);

typedef void (*ap_dequant_fn)(const ap_dequant_args *a, int64_t row0, int64_t row1, int64_t out_row0);

/* Runs every group over the layer (all groups share planes, n_rows and in_features),
 * OpenMP over blocks of output rows. avx2: use the AVX2/FMA micro-GEMM (else portable C);
 * int16: the integer tiles (needs avx2 and uint8 LUTs; `dequant` is then unused).
 * Returns 0 or -1 (out of memory). */
int ap_tile_gemm(const ap_tile_group *groups, int n_groups, ap_dequant_fn dequant, int avx2, int int16,
                 int nthreads);

/* Defined in ap_module.c: ap_tile_gemm with the dequantizer and micro-GEMM of the ISA in use;
 * kind: AP_TILES_AUTO or AP_TILES_FP32. */
int ap_run_tile_gemm(const ap_tile_group *groups, int n_groups, int kind, int nthreads);

#endif
