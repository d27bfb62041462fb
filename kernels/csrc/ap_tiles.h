/* Tile GEMM: many rows (tokens) through one bitplane-LUT layer by dequantized tiles.
 *
 * For R rows grouped by bit-width, each block of output rows is dequantized once per
 * group (the ap_dequant_rows_* kernels, into a thread-local fp32 buffer sized for L2),
 * then a register-blocked micro-GEMM multiplies that group's rows against it. The lookup
 * work is paid once per block and width instead of once per 8 rows as in the mat-vec path.
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

typedef void (*ap_dequant_fn)(const ap_dequant_args *a, int64_t row0, int64_t row1, int64_t out_row0);

/* Runs every group over the layer (all groups share planes, n_rows and in_features),
 * OpenMP over blocks of output rows. avx2: use the AVX2/FMA micro-GEMM (else portable C).
 * Returns 0 or -1 (out of memory). */
int ap_tile_gemm(const ap_tile_group *groups, int n_groups, ap_dequant_fn dequant, int avx2, int nthreads);

/* Defined in ap_module.c: ap_tile_gemm with the dequantizer and micro-GEMM of the ISA in use. */
int ap_run_tile_gemm(const ap_tile_group *groups, int n_groups, int nthreads);

#endif
