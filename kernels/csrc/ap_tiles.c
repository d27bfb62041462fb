/* Tile GEMM (ap_tiles.h): dequantize a block of output rows once per bit-width, then a
 * register-blocked micro-GEMM of that width's tokens against it.
 *
 * Both operands are K-contiguous (x [T, K] and the dequantized block [rows, K]), so the
 * micro-kernel is a 4-token x 3-row block of dot products: per 8 columns it loads 3 weight
 * vectors and 4 x vectors for 12 FMAs into 12 accumulators (16 ymm registers in all), and
 * sums each accumulator's lanes once at the end. No packing is needed: a 4-token x tile
 * (4 * K floats) stays in L1 while it sweeps the block, which stays in L2.
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
#define MT 4                        /* tokens per micro-tile */
#define NR 3                        /* weight rows per micro-tile */

/* Rows per block: as many as fit the buffer, a multiple of NR, but small enough that every
 * thread gets BLOCKS_PER_THREAD blocks (dynamic scheduling evens out the rest). */
static int64_t block_rows(int64_t n_rows, int64_t row_bytes, int nthreads) {
    int64_t nb = TILE_BUF_BYTES / (row_bytes > 0 ? row_bytes : 1);
    const int64_t share = (n_rows + (int64_t)BLOCKS_PER_THREAD * nthreads - 1) / ((int64_t)BLOCKS_PER_THREAD * nthreads);
    nb = nb < share ? nb : share;
    nb = nb / NR * NR;
    return nb < NR ? NR : nb;
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

INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* One m x r micro-tile (m <= MT tokens, r <= NR rows; constants after inlining). */
INLINE void micro(const float *x, int64_t xs, const float *w, int64_t K, float *y, int64_t ys, const int m,
                  const int r) {
    __m256 acc[MT][NR];
    for (int t = 0; t < m; t++)
        for (int j = 0; j < r; j++) acc[t][j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 wv[NR];
        for (int j = 0; j < r; j++) wv[j] = _mm256_loadu_ps(w + j * K + k);
        for (int t = 0; t < m; t++) {
            const __m256 xv = _mm256_loadu_ps(x + t * xs + k);
            for (int j = 0; j < r; j++) acc[t][j] = _mm256_fmadd_ps(xv, wv[j], acc[t][j]);
        }
    }
    for (int t = 0; t < m; t++)
        for (int j = 0; j < r; j++) {
            float s = hsum(acc[t][j]);
            for (int64_t kk = k; kk < K; kk++) s += x[t * xs + kk] * w[j * K + kk];
            y[t * ys + j] = s;
        }
}

AVX2 static void block_avx2(const float *x, int64_t xs, int64_t T, const float *w, int64_t nb, int64_t K,
                            float *y, int64_t ys) {
    for (int64_t t0 = 0; t0 < T; t0 += MT) {
        const int m = T - t0 < MT ? (int)(T - t0) : MT;
        for (int64_t j0 = 0; j0 < nb; j0 += NR) {
            const int r = nb - j0 < NR ? (int)(nb - j0) : NR;
            const float *xt = x + t0 * xs, *wj = w + j0 * K;
            float *yt = y + t0 * ys + j0;
            switch (m * 4 + r) {
#define CASE(M, R) \
    case M * 4 + R: micro(xt, xs, wj, K, yt, ys, M, R); break;
                CASE(1, 1) CASE(1, 2) CASE(1, 3) CASE(2, 1) CASE(2, 2) CASE(2, 3)
                CASE(3, 1) CASE(3, 2) CASE(3, 3) CASE(4, 1) CASE(4, 2) CASE(4, 3)
#undef CASE
                default: break;
            }
        }
    }
}
#else
#define block_avx2 block_portable
#endif

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

/* One block of rows [r0, r1) for group G: dequantize into buf, then its micro-GEMM. */
static void run_block(const ap_tile_group *G, const ap_i16_acts *X, int64_t r0, int64_t r1, void *buf,
                      ap_dequant_fn dequant, int avx2, int64_t kpad) {
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
    if (avx2) block_avx2(G->x, G->xstride, G->tokens, buf, r1 - r0, K, G->y + r0, G->ystride);
    else block_portable(G->x, G->xstride, G->tokens, buf, r1 - r0, K, G->y + r0, G->ystride);
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
    void *acts = NULL;
    if (int16 && (n_groups > AP_MAX_BITS || !(acts = alloc_acts(groups, n_groups, kpad, X)))) return -1;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
#if defined(__x86_64__)
        for (int g = 0; g < (int16 ? n_groups : 0); g++) {
#pragma omp for schedule(static)
            for (int64_t t = 0; t < groups[g].tokens; t++)
                ap_quantize_i16_avx2(groups[g].x + t * groups[g].xstride, K, &X[g], t);
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
                run_block(&groups[g], int16 ? &X[g] : NULL, r0, r1, buf, dequant, avx2, kpad);
        }
        free(buf);
    }
    free(acts);
    return failed ? -1 : 0;
}
