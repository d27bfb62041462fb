/* Tile GEMM (ap_tiles.h): dequantize a block of output rows once per bit-width, then a
 * register-blocked micro-GEMM of that width's tokens against it.
 *
 * AVX2/FMA: each group's activations are packed once per call (all threads, 8 x 8
 * transposes) into panels of 16 tokens, column-major (xp[k][16]); the micro-kernel is the
 * BLIS-style broadcast kernel: per column k it broadcasts 6 weight rows' values from the
 * row-major dequantized block and multiplies them by the panel's two token vectors into 12
 * accumulators (one FMA chain per output over k, no horizontal sums). Measured against the
 * former 4-token x 3-row dot-product kernel (both operands K-contiguous, 12 lane-summed
 * accumulators): 1536 x 576 and 576 x 1536 layers, 128 tokens, 1 thread, 1.1-1.4x
 * (docs/ENGINE.md). The block (L2) is swept once per panel; the panel stays in L1/L2.
 * Portable C elsewhere.
 *
 * int16 tiles (uint8 LUTs on AVX2): the activations are quantized once per call, the block
 * is dequantized to int16 codes and multiplied by ap_tiles_int.c's kernel instead.
 */
#include <omp.h>
#include <stdlib.h>
#include "ap_tiles.h"

#define TILE_BUF_BYTES (128 * 1024) /* dequantized block per thread: fits L2 with room for x */
#define I16_MAX_ROWS 48              /* int16 tiles: a 256-column slice of the block (24 KB) stays in L1 */
#define BLOCKS_PER_THREAD 4         /* at least this many blocks per thread when rows allow */
#define XP 16                       /* tokens per packed activation panel (two ymm) */
#define MR 6                        /* weight rows per micro-tile */

/* Rows per block: as many as fit the buffer, a multiple of MR, but small enough that every
 * thread gets BLOCKS_PER_THREAD blocks (dynamic scheduling evens out the rest). */
static int64_t block_rows(int64_t n_rows, int64_t row_bytes, int nthreads) {
    int64_t nb = TILE_BUF_BYTES / (row_bytes > 0 ? row_bytes : 1);
    const int64_t share = (n_rows + (int64_t)BLOCKS_PER_THREAD * nthreads - 1) / ((int64_t)BLOCKS_PER_THREAD * nthreads);
    nb = nb < share ? nb : share;
    nb = nb / MR * MR;
    return nb < MR ? MR : nb;
}

/* y[t, j] = x[t, :] . w[j, :] for t < T, j < nb (plain C; the compiler vectorises k). */
static void block_portable(const float *x, int64_t xs, int64_t T, const float *w, int64_t nb, int64_t K,
                           float *y, int64_t ys) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < nb; j++) {
            float s = 0.0f;
            for (int64_t k = 0; k < K; k++) s += x[t * xs + k] * w[j * K + k];
            y[t * ys + j] = s;
        }
}

#if defined(__x86_64__)
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma")))
#define INLINE static inline __attribute__((always_inline)) AVX2

/* Columns [k0, k0 + 8) of tokens t0 .. t0 + 8 (rows past T are zero) into the panel:
 * dst[k * w + i] for k < 8, i < 8 (w: the panel's width), by one 8 x 8 transpose. */
INLINE void pack_8x8(const float *x, int64_t xs, int64_t t0, int64_t T, int64_t k0, float *dst, int64_t w) {
    __m256 r[8], u[8], v[8];
    for (int i = 0; i < 8; i++) r[i] = t0 + i < T ? _mm256_loadu_ps(x + (t0 + i) * xs + k0) : _mm256_setzero_ps();
    for (int i = 0; i < 8; i += 2) {
        u[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        u[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        v[i] = _mm256_shuffle_ps(u[i], u[i + 2], 0x44);
        v[i + 1] = _mm256_shuffle_ps(u[i], u[i + 2], 0xEE);
        v[i + 2] = _mm256_shuffle_ps(u[i + 1], u[i + 3], 0x44);
        v[i + 3] = _mm256_shuffle_ps(u[i + 1], u[i + 3], 0xEE);
    }
    for (int k = 0; k < 4; k++) {
        _mm256_storeu_ps(dst + k * w, _mm256_permute2f128_ps(v[k], v[k + 4], 0x20));
        _mm256_storeu_ps(dst + (k + 4) * w, _mm256_permute2f128_ps(v[k], v[k + 4], 0x31));
    }
}

/* Panel p of a group's activations: tokens p * XP .. (the last panel XP / 2 wide when it
 * holds no more), dst[k][width], zero past T. */
AVX2 static void pack_panel(const float *x, int64_t xs, int64_t T, int64_t K, int64_t p, float *dst) {
    const int64_t t0 = p * XP, w = T - t0 > XP / 2 ? XP : XP / 2, k8 = K / 8 * 8;
    for (int64_t h = 0; h < w; h += 8)
        for (int64_t k = 0; k < k8; k += 8) pack_8x8(x, xs, t0 + h, T, k, dst + k * w + h, w);
    for (int64_t k = k8; k < K; k++)
        for (int64_t i = 0; i < w; i++) dst[k * w + i] = t0 + i < T ? x[(t0 + i) * xs + k] : 0.0f;
}

/* y[t, j] for the panel's tokens and m <= MR rows of w: per column k, the rows' weights are
 * broadcast against the panel's 8 * C tokens (C ymm), MR x C accumulators, one FMA chain
 * per output over k (m, C: constants after inlining). */
INLINE void micro(const float *w, int64_t K, const float *xp, int64_t T, float *y, int64_t ys, const int m,
                  const int C) {
    __m256 acc[MR][2];
    for (int j = 0; j < m; j++)
        for (int c = 0; c < C; c++) acc[j][c] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        __m256 xv[2];
        for (int c = 0; c < C; c++) xv[c] = _mm256_loadu_ps(xp + k * 8 * C + 8 * c);
        for (int j = 0; j < m; j++) {
            const __m256 a = _mm256_broadcast_ss(w + j * K + k);
            for (int c = 0; c < C; c++) acc[j][c] = _mm256_fmadd_ps(a, xv[c], acc[j][c]);
        }
    }
    float tile[MR][XP];
    for (int j = 0; j < m; j++)
        for (int c = 0; c < C; c++) _mm256_storeu_ps(tile[j] + 8 * c, acc[j][c]);
    for (int64_t i = 0; i < T && i < 8 * C; i++)
        for (int j = 0; j < m; j++) y[i * ys + j] = tile[j][i];
}

/* The block w [nb, K] against every panel of xp (the group's tokens, pack_panel). */
AVX2 static void block_avx2(const float *xp, int64_t T, const float *w, int64_t nb, int64_t K, float *y,
                            int64_t ys) {
    for (int64_t p = 0; p * XP < T; p++) {
        const int64_t t0 = p * XP, wide = T - t0 > XP / 2;
        const float *panel = xp + p * XP * K;
        for (int64_t j0 = 0; j0 < nb; j0 += MR) {
            const int m = nb - j0 < MR ? (int)(nb - j0) : MR;
            const float *wj = w + j0 * K;
            float *yt = y + t0 * ys + j0;
            switch (m * 2 + (int)wide) {
#define CASE(M, WIDE) \
    case M * 2 + WIDE: micro(wj, K, panel, T - t0, yt, ys, M, WIDE + 1); break;
                CASE(1, 0) CASE(2, 0) CASE(3, 0) CASE(4, 0) CASE(5, 0) CASE(6, 0)
                CASE(1, 1) CASE(2, 1) CASE(3, 1) CASE(4, 1) CASE(5, 1) CASE(6, 1)
#undef CASE
                default: break;
            }
        }
    }
}
#endif

/* Packed panels of every group's activations (one allocation; xp[g] = group g's), or NULL. */
static float *alloc_panels(const ap_tile_group *groups, int n_groups, int64_t K, float **xp) {
    int64_t floats = 0;
    for (int g = 0; g < n_groups; g++) floats += (groups[g].tokens + XP - 1) / XP * XP * K;
    float *all = aligned_alloc(64, ((size_t)floats * sizeof(float) + 63) / 64 * 64);
    int64_t at = 0;
    for (int g = 0; g < n_groups && all; g++) {
        xp[g] = all + at;
        at += (groups[g].tokens + XP - 1) / XP * XP * K;
    }
    return all;
}

/* Activation buffers of every group (one allocation), or NULL: out of memory. */
static void *alloc_acts(const ap_tile_group *groups, int n_groups, int64_t kpad, ap_i16_acts *X) {
    const int64_t nblk = (kpad + AP_I16_KB - 1) / AP_I16_KB;
    int64_t rows = 0;
    for (int g = 0; g < n_groups; g++) rows += groups[g].tokens;
    char *all = aligned_alloc(64, ((size_t)(rows * (2 * kpad + 4 * nblk + 4)) + 63) / 64 * 64);
    if (!all) return NULL;
    int16_t *xq = (int16_t *)(void *)all;
    float *f = (float *)(void *)(xq + rows * kpad);
    for (int g = 0; g < n_groups; g++) {
        X[g] = (ap_i16_acts){xq, f, f + groups[g].tokens * nblk, groups[g].tokens, kpad, nblk};
        xq += groups[g].tokens * kpad;
        f += groups[g].tokens * (nblk + 1);
    }
    return all;
}

/* One block of rows [r0, r1) for group G: dequantize into buf, then its micro-GEMM (AVX2:
 * against the group's packed panels xp; NULL: portable C). */
static void run_block(const ap_tile_group *G, const ap_i16_acts *X, const float *xp, int64_t r0, int64_t r1,
                      void *buf, ap_dequant_fn dequant, int64_t kpad) {
    const int64_t K = G->w.in_features;
    ap_dequant_args a = G->w;
#if defined(__x86_64__)
    if (X) {
        ap_dequant_rows_i16_avx2(&a, r0, r1, buf, kpad);
        ap_i16_block_avx2(X, buf, r1 - r0, kpad, a.lut_lo + r0, a.lut_scale + r0, G->y + r0, G->ystride);
        return;
    }
#endif
    a.out = buf;
    a.out_bf16 = 0;
    dequant(&a, r0, r1, r0);
#if defined(__x86_64__)
    if (xp) {
        block_avx2(xp, G->tokens, buf, r1 - r0, K, G->y + r0, G->ystride);
        return;
    }
#endif
    block_portable(G->x, G->xstride, G->tokens, buf, r1 - r0, K, G->y + r0, G->ystride);
}

int ap_tile_gemm(const ap_tile_group *groups, int n_groups, ap_dequant_fn dequant, int avx2, int int16,
                 int nthreads) {
    if (n_groups < 1) return 0;
    const int64_t N = groups[0].w.n_rows, K = groups[0].w.in_features, kpad = 32 * groups[0].w.words;
    const int64_t row_bytes = int16 ? 2 * kpad : 4 * K;
    int64_t nb = block_rows(N, row_bytes, nthreads);
    nb = int16 && nb > I16_MAX_ROWS ? I16_MAX_ROWS : nb;
    const int64_t blocks = (N + nb - 1) / nb;
    const size_t buf_bytes = ((size_t)(nb * row_bytes) + 63) / 64 * 64;
    ap_i16_acts X[AP_MAX_BITS];
    float *xp[AP_MAX_BITS];
    const int panels = avx2 && !int16;
    void *acts = NULL;
    if (n_groups > AP_MAX_BITS && (int16 || panels)) return -1;
    if (int16 && !(acts = alloc_acts(groups, n_groups, kpad, X))) return -1;
    if (panels && !(acts = alloc_panels(groups, n_groups, K, xp))) return -1;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
#if defined(__x86_64__)
        for (int g = 0; g < (int16 ? n_groups : 0); g++) {
#pragma omp for schedule(static)
            for (int64_t t = 0; t < groups[g].tokens; t++)
                ap_quantize_i16_avx2(groups[g].x + t * groups[g].xstride, K, &X[g], t);
        }
        for (int g = 0; g < (panels ? n_groups : 0); g++) {
#pragma omp for schedule(static)
            for (int64_t p = 0; p < (groups[g].tokens + XP - 1) / XP; p++)
                pack_panel(groups[g].x, groups[g].xstride, groups[g].tokens, K, p, xp[g] + p * XP * K);
        }
#endif
        void *buf = aligned_alloc(64, buf_bytes);
        if (!buf) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t blk = 0; blk < blocks; blk++) {
            if (!buf) continue;
            const int64_t r0 = blk * nb, r1 = r0 + nb < N ? r0 + nb : N;
            for (int g = 0; g < n_groups; g++)
                run_block(&groups[g], int16 ? &X[g] : NULL, panels ? xp[g] : NULL, r0, r1, buf, dequant, kpad);
        }
        free(buf);
    }
    free(acts);
    return failed ? -1 : 0;
}
