/* CPython module anyprec.kernels._cpu: runtime ISA dispatch and OpenMP row split.
 *
 * Functions take raw data pointers (int) from torch tensors; the Python wrapper in
 * kernels/cpu.py checks shapes, dtypes and contiguity before calling. The GIL is
 * released while the kernels run.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "ap_kernels.h"
#include "ap_attention.h"
#include "ap_engine.h"
#include "ap_tiles.h"
#include "ap_vexp.h"

enum { ISA_PORTABLE = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };
static int g_vbmi = -1;
static const char *ISA_NAMES[] = {"portable", "avx2", "avx512"};
static int g_isa = -1;

#if !defined(__x86_64__)
/* other architectures build the portable kernels only */
static int best_isa(void) { return ISA_PORTABLE; }
static int has_vbmi(void) { return 0; }
#define ap_gemv_rows_avx512_vbmi ap_gemv_rows_portable
#define ap_gemv_rows_avx512 ap_gemv_rows_portable
#define ap_gemv_rows_avx2 ap_gemv_rows_portable
#define ap_gemv_rows_avx2_u8 ap_gemv_rows_portable
#define ap_u8_x_sums(a, sums) ((void)(sums))
#define ap_avx2_x_order(a) AP_X_NATURAL
#define ap_dequant_rows_avx512 ap_dequant_rows_portable
#define ap_dequant_rows_avx2 ap_dequant_rows_portable
#define ap_prepare_x_avx512(src, dst, K, kpad, cols) ((void)0)
#define ap_half_gemv_rows_avx512 ap_half_gemv_rows_portable
#define ap_half_gemv_rows_avx2 ap_half_gemv_rows_portable
#define ap_int8_gemv_rows_avx2 ap_int8_gemv_rows_portable
#else
static int best_isa(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return ISA_AVX2;
    return ISA_PORTABLE;
}

static int has_vbmi(void) {
    if (g_vbmi < 0) {
        __builtin_cpu_init();
        g_vbmi = __builtin_cpu_supports("avx512vbmi") ? 1 : 0;
    }
    return g_vbmi;
}
#endif

static int current_isa(void) {
    if (g_isa < 0) g_isa = best_isa();
    return g_isa;
}

/* Column of x read at position q (0..63) of a chunk in the given order. */
static int64_t column_of(int order, int64_t q) {
    const int64_t j = q / 16, i = q % 16;
    if (order == AP_X_PERM4) return 4 * i + j;
    if (order == AP_X_PERM16) return 16 * (2 * (j % 2) + i / 8) + 8 * (j / 2) + i % 8;
    if (order == AP_X_PERM4_32) return 32 * (q / 32) + 4 * (q % 8) + (q % 32) / 8;
    return q;
}

/* x [T, K] -> buffer [T, Kpad] zero-padded, in the column order the kernel reads.
 * Runs once per call, so small layers need it cheap: one order table per chunk. */
static float *prepare_x(const float *x, int64_t T, int64_t xstride, int64_t K, int64_t words,
                        int order, int64_t *kpad_out) {
    const int64_t kpad = ((words * 32 + AP_CHUNK - 1) / AP_CHUNK) * AP_CHUNK;
    float *buf = aligned_alloc(64, (size_t)(T * kpad) * sizeof(float));
    if (!buf) return NULL;
    int64_t cols[AP_CHUNK];
    for (int64_t q = 0; q < AP_CHUNK; q++) cols[q] = column_of(order, q);
    for (int64_t t = 0; t < T; t++) {
        const float *src = x + t * xstride;
        float *dst = buf + t * kpad;
        if (current_isa() == ISA_AVX512) {
            ap_prepare_x_avx512(src, dst, K, kpad, cols);
            continue;
        }
        const int64_t full = K / AP_CHUNK * AP_CHUNK;
        for (int64_t c = 0; c < full; c += AP_CHUNK)
            for (int64_t q = 0; q < AP_CHUNK; q++) dst[c + q] = src[c + cols[q]];
        for (int64_t c = full; c < kpad; c += AP_CHUNK)
            for (int64_t q = 0; q < AP_CHUNK; q++) dst[c + q] = c + cols[q] < K ? src[c + cols[q]] : 0.0f;
    }
    *kpad_out = kpad;
    return buf;
}

#define ROW_BLOCK 64 /* rows per scheduling unit of the dequantize / fp16 loops */

static void split_rows(int64_t n_rows, int nth, int tid, int64_t *r0, int64_t *r1) {
    *r0 = n_rows * tid / nth;
    *r1 = n_rows * (tid + 1) / nth;
}

enum { K_PORTABLE, K_AVX2, K_AVX512, K_VBMI, K_U8_WIDEN, K_U8 };

#define U8_BLOCK 32 /* rows of a uint8 LUT widened at a time by gemv_rows_u8_widen (32 KB at 8 bits) */

/* uint8 LUT rows [row0, row1) through the fp32-LUT AVX2 kernel: each block of rows has its
 * LUT widened (lo + scale * q, as every reader of the scheme computes it) into a buffer
 * that stays in L1/L2, then runs as an fp32 LUT (x in that kernel's order). */
static void gemv_rows_u8_widen(const ap_gemv_args *a, int64_t row0, int64_t row1) {
    float buf[U8_BLOCK << AP_MAX_BITS];
    const int64_t size = (int64_t)1 << a->bits;
    for (int64_t b0 = row0; b0 < row1; b0 += U8_BLOCK) {
        const int64_t b1 = b0 + U8_BLOCK < row1 ? b0 + U8_BLOCK : row1;
        for (int64_t n = b0; n < b1; n++) {
            const uint8_t *q = (const uint8_t *)a->lut + n * size;
            const float lo = a->lut_lo[n], scale = a->lut_scale[n];
            for (int64_t i = 0; i < size; i++) buf[(n - b0) * size + i] = lo + scale * (float)q[i];
        }
        ap_gemv_args g = *a;
        g.planes = a->planes + b0 * a->words;
        g.n_rows = b1 - b0;
        g.lut = buf;
        g.lut_f16 = g.lut_u8 = 0;
        g.y = a->y + b0;
        ap_gemv_rows_avx2(&g, 0, b1 - b0);
    }
}

#define U8_DIRECT_MIN_BITS 4 /* measured: at <= 3 bits the widened fp32 LUT's vpermps path is 1.3-1.5x faster */

/* The one place a gemv call picks its kernel. uint8 LUTs (lut_u8) on AVX2 and AVX-512 CPUs:
 * the uint8-table kernel (ap_lut8_avx2.c) from 4 bits, below that the row block's LUT
 * widened for the AVX2 fp32-LUT kernel; the portable kernel elsewhere. */
static int pick_gemv_kernel(const ap_gemv_args *a) {
    const int isa = current_isa();
    if (a->lut_u8 && isa == ISA_PORTABLE) return K_PORTABLE;
    if (a->lut_u8) return a->bits >= U8_DIRECT_MIN_BITS ? K_U8 : K_U8_WIDEN;
    if (isa == ISA_AVX512 && a->bits >= 6 && a->lut_f16 && has_vbmi()) return K_VBMI;
    if (isa == ISA_AVX512) return K_AVX512;
    return isa == ISA_AVX2 ? K_AVX2 : K_PORTABLE;
}

/* Column order in which `kernel` reads x for a call like `a` (ap_kernels.h). */
static int x_order(int kernel, const ap_gemv_args *a) {
    if (kernel == K_VBMI) return AP_X_PERM16;
    if (kernel == K_AVX512 && a->bits <= 5) return AP_X_PERM4;
    if (kernel == K_AVX2) return ap_avx2_x_order(a);
    if (kernel == K_U8_WIDEN) {
        ap_gemv_args f = *a;
        f.lut_f16 = f.lut_u8 = 0;
        return ap_avx2_x_order(&f);
    }
    return AP_X_NATURAL;
}

/* Expands one scale per `group` columns [T, ceil(kpad / group)] to one per 32-column block. */
static void block_scales(const float *gs, int tokens, int64_t blocks, int64_t group, float *sx) {
    const int64_t groups = (blocks * 32 + group - 1) / group;
    for (int t = 0; t < tokens; t++)
        for (int64_t b = 0; b < blocks; b++) sx[t * blocks + b] = gs[t * groups + b * 32 / group];
}

#define ENGINE_ACT_GROUP 32 /* the engine's int8 activations: one scale per 32 columns */

static size_t align64(size_t n) { return (n + 63) / 64 * 64; }

/* Bytes of int8-activation scratch for uint8-LUT call `a` with one scale per act_group
 * columns: x8 [T, 32 * words], group scales, 32-column block scales, each 64-byte aligned. */
static size_t u8_acts_bytes(const ap_gemv_args *a, int64_t act_group) {
    const int64_t T = a->tokens, k8 = 32 * a->words, groups = (k8 + act_group - 1) / act_group;
    return align64((size_t)(T * k8)) + align64(sizeof(float) * (size_t)(T * groups)) +
           align64(sizeof(float) * (size_t)(T * a->words));
}

/* Quantizes a's prepared x (natural order, zero-padded) to int8 with one scale per act_group
 * columns into `scratch` (u8_acts_bytes(a, act_group) bytes, 64-byte aligned) and points a's
 * x8 / x8_scale / x8stride at it; call before ap_u8_x_sums, which then sums the int8 x. */
static void u8_acts_int8(ap_gemv_args *a, int64_t act_group, char *scratch) {
    const int T = a->tokens;
    const int64_t blocks = a->words, k8 = 32 * blocks, groups = (k8 + act_group - 1) / act_group;
    int8_t *x8 = (int8_t *)scratch;
    float *gs = (float *)(void *)(scratch + align64((size_t)(T * k8)));
    float *sx = (float *)(void *)((char *)gs + align64(sizeof(float) * (size_t)(T * groups)));
    ap_quantize_acts_int8_groups(a->x, a->xstride, T, a->in_features, act_group, x8, k8, gs, groups);
    block_scales(gs, T, blocks, act_group, sx);
    a->x8 = x8;
    a->x8_scale = sx;
    a->x8stride = k8;
}

static int run_gemv(ap_gemv_args *a, const float *x, int64_t xstride, int nthreads, int act_int8) {
    const int kernel = pick_gemv_kernel(a);
    const int order = x_order(kernel, a);
    int64_t kpad = 0;
    float *buf = prepare_x(x, a->tokens, xstride, a->in_features, a->words, order, &kpad);
    if (!buf) return -1;
    a->x = buf;
    a->xstride = kpad;
    float sums[AP_MAX_TOKENS];
    char *acts = NULL;
    if (kernel == K_U8 && act_int8) {
        acts = aligned_alloc(64, u8_acts_bytes(a, ENGINE_ACT_GROUP));
        if (!acts) {
            free(buf);
            return -1;
        }
        u8_acts_int8(a, ENGINE_ACT_GROUP, acts);
    }
    if (kernel == K_U8) {
        ap_u8_x_sums(a, sums);  /* once per call, not per row block */
        a->x_sum = sums;
    }
    /* one contiguous share of rows per thread (even-sized, for the row-pair kernel):
     * measured against dynamic 64-row blocks, 5-10% less time per SmolLM2 token, whose
     * layers have 192-1536 rows, and the same on 4096x4096 */
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        int64_t r0, r1;
        split_rows(a->n_rows, omp_get_num_threads(), omp_get_thread_num(), &r0, &r1);
        if (omp_get_thread_num() > 0) r0 -= r0 & 1;
        if (omp_get_thread_num() < omp_get_num_threads() - 1) r1 -= r1 & 1;
        if (kernel == K_VBMI) ap_gemv_rows_avx512_vbmi(a, r0, r1);
        else if (kernel == K_AVX512) ap_gemv_rows_avx512(a, r0, r1);
        else if (kernel == K_AVX2) ap_gemv_rows_avx2(a, r0, r1);
        else if (kernel == K_U8_WIDEN) gemv_rows_u8_widen(a, r0, r1);
        else if (kernel == K_U8) ap_gemv_rows_avx2_u8(a, r0, r1);
        else ap_gemv_rows_portable(a, r0, r1);
    }
    free(buf);
    free(acts);
    return 0;
}

#define GROUP_ROW_BLOCK 16 /* rows per pass over all groups: their planes stay in L1/L2 */

/* Several gemv calls over the same layer (groups: up to AP_MAX_TOKENS tokens at one
 * bit-width each) in one pass over its rows: each block of rows is run for every group
 * before the next, so the planes come from DRAM once, for the widest group (the narrower
 * groups read the first planes of the same rows, now in cache). */
static int run_gemv_groups(ap_gemv_args *groups, int n_groups, int nthreads, int act_int8) {
    int kernels[AP_ENGINE_MAX_GROUPS];
    float *bufs[AP_ENGINE_MAX_GROUPS] = {0};
    float sums[AP_ENGINE_MAX_GROUPS][AP_MAX_TOKENS];
    size_t acts_bytes = 0;  /* one int8 scratch for every group that quantizes its x */
    for (int g = 0; g < n_groups; g++) {
        kernels[g] = pick_gemv_kernel(&groups[g]);
        if (act_int8 && kernels[g] == K_U8) acts_bytes += u8_acts_bytes(&groups[g], ENGINE_ACT_GROUP);
    }
    char *acts = acts_bytes ? aligned_alloc(64, acts_bytes) : NULL;
    char *next_acts = acts;
    int failed = acts_bytes && !acts;
    for (int g = 0; g < n_groups && !failed; g++) {
        ap_gemv_args *a = &groups[g];
        const int order = x_order(kernels[g], a);
        int64_t kpad = 0;
        bufs[g] = prepare_x(a->x, a->tokens, a->xstride, a->in_features, a->words, order, &kpad);
        failed |= !bufs[g];
        a->x = bufs[g];
        a->xstride = kpad;
        if (bufs[g] && act_int8 && kernels[g] == K_U8) {
            u8_acts_int8(a, ENGINE_ACT_GROUP, next_acts);
            next_acts += u8_acts_bytes(a, ENGINE_ACT_GROUP);
        }
        if (bufs[g] && kernels[g] == K_U8) {
            ap_u8_x_sums(a, sums[g]);
            a->x_sum = sums[g];
        }
    }
    if (!failed) {
        const int64_t n_rows = groups[0].n_rows;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
        {
            int64_t r0, r1;
            split_rows(n_rows, omp_get_num_threads(), omp_get_thread_num(), &r0, &r1);
            if (omp_get_thread_num() > 0) r0 -= r0 & 1;
            if (omp_get_thread_num() < omp_get_num_threads() - 1) r1 -= r1 & 1;
            for (int64_t b0 = r0; b0 < r1; b0 += GROUP_ROW_BLOCK) {
                const int64_t b1 = b0 + GROUP_ROW_BLOCK < r1 ? b0 + GROUP_ROW_BLOCK : r1;
                for (int g = 0; g < n_groups; g++) {
                    if (kernels[g] == K_VBMI) ap_gemv_rows_avx512_vbmi(&groups[g], b0, b1);
                    else if (kernels[g] == K_AVX512) ap_gemv_rows_avx512(&groups[g], b0, b1);
                    else if (kernels[g] == K_AVX2) ap_gemv_rows_avx2(&groups[g], b0, b1);
                    else if (kernels[g] == K_U8_WIDEN) gemv_rows_u8_widen(&groups[g], b0, b1);
                    else if (kernels[g] == K_U8) ap_gemv_rows_avx2_u8(&groups[g], b0, b1);
                    else ap_gemv_rows_portable(&groups[g], b0, b1);
                }
            }
        }
    }
    for (int g = 0; g < n_groups; g++) free(bufs[g]);
    free(acts);
    return failed ? -1 : 0;
}

/* The one place a dequantize call picks its kernel (uint8 LUTs: the AVX2 build on AVX-512 CPUs too). */
static ap_dequant_fn pick_dequant(const ap_dequant_args *a) {
    const int isa = current_isa();
    if (isa == ISA_AVX512 && !a->lut_u8) return ap_dequant_rows_avx512;
    return isa == ISA_PORTABLE ? ap_dequant_rows_portable : ap_dequant_rows_avx2;
}

static void run_dequant(const ap_dequant_args *a, int64_t row0, int64_t row1, int nthreads) {
    const ap_dequant_fn dq = pick_dequant(a);
    const int64_t blocks = (row1 - row0 + ROW_BLOCK - 1) / ROW_BLOCK;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nthreads > 1)
    for (int64_t blk = 0; blk < blocks; blk++) {
        const int64_t r0 = row0 + blk * ROW_BLOCK, r1 = r0 + ROW_BLOCK < row1 ? r0 + ROW_BLOCK : row1;
        dq(a, r0, r1, row0);
    }
}

static void run_half_gemv(const ap_half_gemv_args *a, int nthreads) {
    const int isa = current_isa();
    const int64_t blocks = (a->n_rows + ROW_BLOCK - 1) / ROW_BLOCK;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nthreads > 1)
    for (int64_t blk = 0; blk < blocks; blk++) {
        const int64_t r0 = blk * ROW_BLOCK, r1 = r0 + ROW_BLOCK < a->n_rows ? r0 + ROW_BLOCK : a->n_rows;
        if (isa == ISA_AVX512) ap_half_gemv_rows_avx512(a, r0, r1);
        else if (isa == ISA_AVX2) ap_half_gemv_rows_avx2(a, r0, r1);
        else ap_half_gemv_rows_portable(a, r0, r1);
    }
}

/* Int8 head mat-vec; act_int8: quantize the activations per token first (ap_int8.c).
 * Returns 0 or -1 (out of memory). */
static int run_int8_gemv(const ap_int8_gemv_args *in, int act_int8, int nthreads) {
    ap_int8_gemv_args a = *in;
    int8_t *x8 = NULL;
    float sx[AP_MAX_TOKENS];
    if (act_int8) {
        const int64_t kpad = (a.k + 31) / 32 * 32;
        x8 = aligned_alloc(64, (size_t)(a.tokens * kpad));
        if (!x8) return -1;
        ap_quantize_acts_int8(&a, x8, sx, kpad);
        a.x8 = x8;
        a.sx = sx;
        a.x8stride = kpad;
    } else {
        a.x8 = NULL;
    }
    const int isa = current_isa();
    const int64_t blocks = (a.n_rows + ROW_BLOCK - 1) / ROW_BLOCK;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nthreads > 1)
    for (int64_t blk = 0; blk < blocks; blk++) {
        const int64_t r0 = blk * ROW_BLOCK, r1 = r0 + ROW_BLOCK < a.n_rows ? r0 + ROW_BLOCK : a.n_rows;
        if (isa != ISA_PORTABLE) ap_int8_gemv_rows_avx2(&a, r0, r1);  /* AVX-512 CPUs run the AVX2 build */
        else ap_int8_gemv_rows_portable(&a, r0, r1);
    }
    free(x8);
    return 0;
}

int ap_run_int8_gemv(const ap_int8_gemv_args *a, int act_int8, int nthreads) {
    return run_int8_gemv(a, act_int8, nthreads);
}

int ap_run_gemv_groups(ap_gemv_args *groups, int n_groups, int nthreads, int act_int8) {
    if (n_groups < 1 || n_groups > AP_ENGINE_MAX_GROUPS) return -2;
    if (n_groups == 1) return run_gemv(groups, groups->x, groups->xstride, nthreads, act_int8);
    return run_gemv_groups(groups, n_groups, nthreads, act_int8);
}

void ap_run_half_gemv(const ap_half_gemv_args *a, int nthreads) { run_half_gemv(a, nthreads); }

/* Every group of one call is one layer's: the same LUT kind, so one dequantizer serves them. */
/* Integer tiles need the AVX2 kernels and uint8 LUTs (AVX-512 CPUs run AVX2 too). */
int ap_run_tile_gemm(const ap_tile_group *groups, int n_groups, int kind, int nthreads) {
    if (n_groups < 1) return 0;
    const int avx2 = current_isa() != ISA_PORTABLE;
    const int int16 = avx2 && kind == AP_TILES_AUTO && groups[0].w.lut_u8;
    return ap_tile_gemm(groups, n_groups, pick_dequant(&groups[0].w), avx2, int16, nthreads);
}

int ap_engine_avx2(void) { return current_isa() != ISA_PORTABLE; }

static int parse_ints(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, int64_t *out, const char *name) {
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd integer arguments, got %zd", name, want, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        out[i] = PyLong_AsLongLong(args[i]);
        if (out[i] == -1 && PyErr_Occurred()) return -1;
    }
    return 0;
}

static int check_common(int64_t bits, int64_t nthreads) {
    if (bits < 1 || bits > AP_MAX_BITS || nthreads < 1) {
        PyErr_Format(PyExc_ValueError, "bits=%lld must be in 1..8 and nthreads=%lld >= 1",
                     (long long)bits, (long long)nthreads);
        return -1;
    }
    return 0;
}

/* uint8 LUT arguments: the optional trailing (lut_lo, lut_scale) pointers of gemv / dequant;
 * given and non-zero, lut holds uint8 codes (anyprec/lutq.py). Returns the count of
 * leading arguments, or -1 with an error set. */
static int parse_u8_tail(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t base, int64_t *v, const char *name) {
    const Py_ssize_t n = nargs == base + 2 ? base + 2 : base;
    if (parse_ints(args, nargs, n, v, name)) return -1;
    if (n == base) v[base] = v[base + 1] = 0;
    if ((v[base] == 0) != (v[base + 1] == 0)) {
        PyErr_Format(PyExc_ValueError, "%s: pass both lut_lo and lut_scale for a uint8 LUT, or neither", name);
        return -1;
    }
    return 0;
}

/* gemv(planes, plane_stride, n_rows, words, in_features, lut, lut_f16, bits,
 *      x, tokens, x_stride, y, y_stride, nthreads[, lut_lo, lut_scale]) */
static PyObject *py_gemv(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t v[16];
    if (parse_u8_tail(args, nargs, 14, v, "gemv") || check_common(v[7], v[13])) return NULL;
    if (v[9] < 1 || v[9] > AP_MAX_TOKENS) {
        PyErr_Format(PyExc_ValueError, "tokens=%lld must be in 1..%d", (long long)v[9], AP_MAX_TOKENS);
        return NULL;
    }
    ap_gemv_args a = {(const uint32_t *)(intptr_t)v[0], v[1], v[2], v[3], v[4],
                      (const void *)(intptr_t)v[5], (int)v[6], (int)v[7],
                      NULL, 0, (int)v[9], (float *)(intptr_t)v[11], v[12],
                      v[14] != 0, (const float *)(intptr_t)v[14], (const float *)(intptr_t)v[15]};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = run_gemv(&a, (const float *)(intptr_t)v[8], v[10], (int)v[13], 0);
    Py_END_ALLOW_THREADS
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* dequant(planes, plane_stride, n_rows, words, in_features, lut, lut_f16, bits,
 *         row0, row1, out, out_bf16, nthreads[, lut_lo, lut_scale]) */
static PyObject *py_dequant(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t v[15];
    if (parse_u8_tail(args, nargs, 13, v, "dequant") || check_common(v[7], v[12])) return NULL;
    if (v[8] < 0 || v[9] > v[2] || v[8] > v[9]) {
        PyErr_Format(PyExc_ValueError, "row range [%lld, %lld) is outside [0, %lld)",
                     (long long)v[8], (long long)v[9], (long long)v[2]);
        return NULL;
    }
    ap_dequant_args a = {(const uint32_t *)(intptr_t)v[0], v[1], v[2], v[3], v[4],
                         (const void *)(intptr_t)v[5], (int)v[6], (int)v[7],
                         (void *)(intptr_t)v[10], (int)v[11],
                         v[13] != 0, (const float *)(intptr_t)v[13], (const float *)(intptr_t)v[14]};
    Py_BEGIN_ALLOW_THREADS
    run_dequant(&a, v[8], v[9], (int)v[12]);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* tile_gemm(planes, plane_stride, n_rows, words, in_features, lut, lut_f16, bits,
 *           x, tokens, x_stride, y, y_stride, nthreads[, lut_lo, lut_scale, kind]): the tile GEMM
 * for any token count; lut_lo != 0: a uint8 LUT with its lo / scale; kind: AP_TILES_* (0: auto) */
static PyObject *py_tile_gemm(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t v[17] = {0};
    if (parse_ints(args, nargs, nargs == 17 ? 17 : 14, v, "tile_gemm") || check_common(v[7], v[13])) return NULL;
    if ((v[14] == 0) != (v[15] == 0) || (v[16] != AP_TILES_AUTO && v[16] != AP_TILES_FP32)) {
        PyErr_Format(PyExc_ValueError, "tile_gemm: pass both lut_lo and lut_scale or neither, and kind 0 (auto) "
                     "or 1 (fp32), got kind=%lld", (long long)v[16]);
        return NULL;
    }
    if (v[9] < 1) {
        PyErr_Format(PyExc_ValueError, "tokens=%lld must be >= 1", (long long)v[9]);
        return NULL;
    }
    ap_tile_group g = {{(const uint32_t *)(intptr_t)v[0], v[1], v[2], v[3], v[4], (const void *)(intptr_t)v[5],
                        (int)v[6], (int)v[7], NULL, 0, v[14] != 0, (const float *)(intptr_t)v[14],
                        (const float *)(intptr_t)v[15]},
                       (const float *)(intptr_t)v[8], v[10], v[9], (float *)(intptr_t)v[11], v[12]};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = ap_run_tile_gemm(&g, 1, (int)v[16], (int)v[13]);
    Py_END_ALLOW_THREADS
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* half_gemv(w, n_rows, k, x, tokens, x_stride, y, y_stride, nthreads) */
static PyObject *py_half_gemv(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t v[9];
    if (parse_ints(args, nargs, 9, v, "half_gemv") || check_common(1, v[8])) return NULL;
    if (v[4] < 1 || v[4] > AP_MAX_TOKENS) {
        PyErr_Format(PyExc_ValueError, "tokens=%lld must be in 1..%d", (long long)v[4], AP_MAX_TOKENS);
        return NULL;
    }
    ap_half_gemv_args a = {(const uint16_t *)(intptr_t)v[0], v[1], v[2], (const float *)(intptr_t)v[3], v[5],
                           (int)v[4], (float *)(intptr_t)v[6], v[7]};
    Py_BEGIN_ALLOW_THREADS
    run_half_gemv(&a, (int)v[8]);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* int8_gemv(w, scale, n_rows, k, x, tokens, x_stride, y, y_stride, act_int8, nthreads) */
static PyObject *py_int8_gemv(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t v[11];
    if (parse_ints(args, nargs, 11, v, "int8_gemv") || check_common(1, v[10])) return NULL;
    if (v[5] < 1 || v[5] > AP_MAX_TOKENS) {
        PyErr_Format(PyExc_ValueError, "tokens=%lld must be in 1..%d", (long long)v[5], AP_MAX_TOKENS);
        return NULL;
    }
    ap_int8_gemv_args a = {(const int8_t *)(intptr_t)v[0], (const float *)(intptr_t)v[1], v[2], v[3],
                           (const float *)(intptr_t)v[4], v[6], NULL, NULL, 0, (int)v[5],
                           (float *)(intptr_t)v[7], v[8]};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = run_int8_gemv(&a, (int)v[9], (int)v[10]);
    Py_END_ALLOW_THREADS
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

#if defined(__x86_64__)

/* uint8-LUT mat-vec on the AVX2 kernel; act_group > 0: activations quantized to int8 with
 * one scale per act_group columns (a multiple of 32, or >= in_features: one per token).
 * Returns 0 or -1 (out of memory). */
static int run_gemv_u8(ap_gemv_args *a, const float *x, int64_t xstride, int64_t act_group, int nthreads) {
    int64_t kpad = 0;
    float *buf = prepare_x(x, a->tokens, xstride, a->in_features, a->words, AP_X_NATURAL, &kpad);
    char *acts = act_group > 0 ? aligned_alloc(64, u8_acts_bytes(a, act_group)) : NULL;
    const int failed = !buf || (act_group > 0 && !acts);
    if (!failed) {
        a->x = buf;
        a->xstride = kpad;
        if (act_group > 0) u8_acts_int8(a, act_group, acts);
        float sums[AP_MAX_TOKENS];
        ap_u8_x_sums(a, sums);  /* once per call, not per row */
        a->x_sum = sums;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
        {
            int64_t r0, r1;
            split_rows(a->n_rows, omp_get_num_threads(), omp_get_thread_num(), &r0, &r1);
            ap_gemv_rows_avx2_u8(a, r0, r1);
        }
    }
    free(buf);
    free(acts);
    return failed ? -1 : 0;
}
#endif

/* gemv_u8(planes, plane_stride, n_rows, words, in_features, q, lo, scale, bits,
 *         x, tokens, x_stride, y, y_stride, act_group, nthreads): uint8-LUT mat-vec on the
 * AVX2 kernel (ap_lut8_avx2.c); act_group 0: fp32 activations, else int8 (run_gemv_u8). */
static PyObject *py_gemv_u8(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t v[16];
    if (parse_ints(args, nargs, 16, v, "gemv_u8") || check_common(v[8], v[15])) return NULL;
    if (v[10] < 1 || v[10] > AP_MAX_TOKENS) {
        PyErr_Format(PyExc_ValueError, "tokens=%lld must be in 1..%d", (long long)v[10], AP_MAX_TOKENS);
        return NULL;
    }
    if (v[14] < 0 || (v[14] % 32 && v[14] < v[4])) {
        PyErr_Format(PyExc_ValueError, "act_group=%lld must be 0 (fp32 activations), a multiple of 32, "
                     "or >= in_features=%lld (one scale per token)", (long long)v[14], (long long)v[4]);
        return NULL;
    }
#if defined(__x86_64__)
    if (best_isa() < ISA_AVX2) {
#endif
        PyErr_SetString(PyExc_RuntimeError, "gemv_u8 needs an x86-64 CPU with AVX2, FMA and F16C");
        return NULL;
#if defined(__x86_64__)
    }
    ap_gemv_args a = {(const uint32_t *)(intptr_t)v[0], v[1], v[2], v[3], v[4], (const void *)(intptr_t)v[5],
                      0, (int)v[8], NULL, 0, (int)v[10], (float *)(intptr_t)v[12], v[13], 1,
                      (const float *)(intptr_t)v[6], (const float *)(intptr_t)v[7]};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = run_gemv_u8(&a, (const float *)(intptr_t)v[9], v[11], v[14], (int)v[15]);
    Py_END_ALLOW_THREADS
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
#endif
}

/* engine_step(model, rows, n_rows, logits, nthreads, timings[, tile_rows]): one native
 * decode engine step (ap_engine.h); the Python side (anyprec/engine/native.py) owns every
 * pointer. tile_rows: rows at one width from which layers use the tile GEMM (0: default). */
static PyObject *py_engine_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t v[7] = {0};
    if (parse_ints(args, nargs, nargs == 7 ? 7 : 6, v, "engine_step") || check_common(1, v[4])) return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = ap_engine_step((const ap_eng_model *)(intptr_t)v[0], (const ap_eng_row *)(intptr_t)v[1], v[2],
                        (float *)(intptr_t)v[3], (int)v[4], (double *)(intptr_t)v[5], v[6]);
    Py_END_ALLOW_THREADS
    if (rc == -1) return PyErr_NoMemory();
    if (rc == -2) {
        PyErr_SetString(PyExc_ValueError, "engine_step: a row asks for a bit-width whose LUT is not loaded");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* vexp(ptr, n): float32 v[i] = expf(v[i]) in place by the engine's AVX2 exp (ap_vexp.h; tests). */
static PyObject *py_vexp(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t v[2];
    if (parse_ints(args, nargs, 2, v, "vexp")) return NULL;
    if (best_isa() < ISA_AVX2) {
        PyErr_SetString(PyExc_RuntimeError, "vexp needs an x86-64 CPU with AVX2 and FMA");
        return NULL;
    }
    ap_exp_shifted_avx2((float *)(intptr_t)v[0], v[1], 0.0f);
    Py_RETURN_NONE;
}

/* read_bytes(ptr, nbytes, nthreads) -> checksum: stream-read a buffer (bandwidth probe). */
static PyObject *py_read_bytes(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t v[3];
    if (parse_ints(args, nargs, 3, v, "read_bytes") || check_common(1, v[2])) return NULL;
    const uint64_t *data = (const uint64_t *)(intptr_t)v[0];
    const int64_t n_words = v[1] / 8;
    uint64_t total = 0;
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel num_threads((int)v[2]) reduction(^ : total)
    {
        int64_t w0, w1;
        split_rows(n_words, omp_get_num_threads(), omp_get_thread_num(), &w0, &w1);
        total ^= ap_xor_words(data + w0, w1 - w0);
    }
    Py_END_ALLOW_THREADS
    return PyLong_FromUnsignedLongLong(total);
}

static PyObject *py_isa(PyObject *self, PyObject *unused) { return PyUnicode_FromString(ISA_NAMES[current_isa()]); }

static PyObject *py_best_isa(PyObject *self, PyObject *unused) { return PyUnicode_FromString(ISA_NAMES[best_isa()]); }

/* set_isa(name): force a kernel family no better than the CPU supports (tests, benchmarks). */
static PyObject *py_set_isa(PyObject *self, PyObject *arg) {
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    for (int i = 0; i <= ISA_AVX512; i++) {
        if (strcmp(name, ISA_NAMES[i]) == 0) {
            if (i > best_isa()) {
                PyErr_Format(PyExc_ValueError, "this CPU does not support isa %s; best is %s", name, ISA_NAMES[best_isa()]);
                return NULL;
            }
            g_isa = i;
            Py_RETURN_NONE;
        }
    }
    PyErr_Format(PyExc_ValueError, "unknown isa %s; use portable, avx2 or avx512", name);
    return NULL;
}

static PyMethodDef METHODS[] = {
    {"gemv", (PyCFunction)(void (*)(void))py_gemv, METH_FASTCALL, "bitplane-LUT mat-vec for 1..8 tokens"},
    {"gemv_u8", (PyCFunction)(void (*)(void))py_gemv_u8, METH_FASTCALL, "uint8-LUT mat-vec, fp32 or int8 activations"},
    {"half_gemv", (PyCFunction)(void (*)(void))py_half_gemv, METH_FASTCALL, "fp16-stored dense mat-vec, fp32 math"},
    {"int8_gemv", (PyCFunction)(void (*)(void))py_int8_gemv, METH_FASTCALL, "per-row int8 head mat-vec"},
    {"tile_gemm", (PyCFunction)(void (*)(void))py_tile_gemm, METH_FASTCALL, "bitplane-LUT GEMM by dequantized tiles"},
    {"vexp", (PyCFunction)(void (*)(void))py_vexp, METH_FASTCALL, "the engine's AVX2 expf, in place"},
    {"dequant", (PyCFunction)(void (*)(void))py_dequant, METH_FASTCALL, "dense rows from bitplanes + LUT"},
    {"engine_step", (PyCFunction)(void (*)(void))py_engine_step, METH_FASTCALL, "one native decode engine step"},
    {"read_bytes", (PyCFunction)(void (*)(void))py_read_bytes, METH_FASTCALL, "stream-read a buffer"},
    {"isa", py_isa, METH_NOARGS, "kernel family in use"},
    {"best_isa", py_best_isa, METH_NOARGS, "best kernel family this CPU supports"},
    {"set_isa", py_set_isa, METH_O, "force a kernel family"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef MODULE = {PyModuleDef_HEAD_INIT, "_cpu", "native bitplane kernels", -1, METHODS};

PyMODINIT_FUNC PyInit__cpu(void) { return PyModule_Create(&MODULE); }
