/* Native decode engine: a whole Llama-family forward step for R rows in one call.
 *
 * Per layer: RMSNorm, q/k/v through the bitplane-LUT mat-vec at each row's bit-width,
 * rotary embedding from the caller's cos/sin tables (computed by torch exactly as
 * transformers does), keys/values appended to each row's slot cache, grouped-query
 * attention over the slot's cache up to the row's position, o_proj, residual, SiLU-gated
 * MLP, residual; then the final norm and the output head (fp16, or its per-row int8 copy)
 * for the rows that want logits. All math is fp32, so results equal the transformers fp32 forward to rounding.
 *
 * Rows of one slot may share a call (prefill chunks): every row's key/value is written
 * before any row attends, and row i attends to positions 0..pos_i only (causal).
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "ap_attention.h"
#include "ap_engine.h"
#include "ap_tiles.h"
#include "ap_vexp.h"

#define SMALL_LAYER_BYTES (1 << 14) /* layers under this many plane bytes run on one thread */

static double now(void) { return omp_get_wtime(); }

static void rmsnorm(const float *x, const float *w, float *out, int64_t n, double eps) {
    float ss = 0.0f;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    const float inv = 1.0f / sqrtf(ss / (float)n + (float)eps);
    for (int64_t i = 0; i < n; i++) out[i] = w[i] * (x[i] * inv);
}

/* The row-wise parts of a layer run on one thread below this many rows: decode batches (<= 16
 * rows) would pay more for the fork and barrier than the work. */
#define ROWS_PARALLEL 32

/* out[r] = rmsnorm(x[r]) * w for rows r < R (x, out [R, n]). */
static void norm_rows(const float *x, const float *w, float *out, int64_t R, int64_t n, double eps, int nt) {
#pragma omp parallel for num_threads(nt) if (nt > 1 && R >= ROWS_PARALLEL)
    for (int64_t r = 0; r < R; r++) rmsnorm(x + r * n, w, out + r * n, n, eps);
}

/* x[r] += h[r] for rows r < R (x, h [R, n]); then, when w is given, h[r] = rmsnorm(x[r]) * w
 * (one parallel region for both: each barrier costs a time slice on a busy machine). */
static void add_rows(float *x, float *h, const float *w, int64_t R, int64_t n, double eps, int nt) {
#pragma omp parallel for num_threads(nt) if (nt > 1 && R >= ROWS_PARALLEL)
    for (int64_t r = 0; r < R; r++) {
        for (int64_t i = r * n; i < (r + 1) * n; i++) x[i] += h[i];
        if (w) rmsnorm(x + r * n, w, h + r * n, n, eps);
    }
}

/* g[r] = silu(g[r]) * u[r] for rows r < R (g, u [R, n]); AVX2: ap_vexp.c (expf's bits). */
static void silu_mul_rows(float *g, const float *u, int64_t R, int64_t n, int nt) {
    const int avx2 = ap_engine_avx2();
#pragma omp parallel for num_threads(nt) if (nt > 1 && R >= ROWS_PARALLEL)
    for (int64_t r = 0; r < R; r++) {
        if (avx2) ap_silu_mul_avx2(g + r * n, u + r * n, n);
        else
            for (int64_t i = r * n; i < (r + 1) * n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

/* ap_dequant_args of layer L at `bits` (the dequantizer's view of the same tensors). */
static ap_dequant_args dequant_args(const ap_eng_linear *L, int bits) {
    return (ap_dequant_args){(const uint32_t *)(intptr_t)L->planes, L->plane_stride, L->n_rows, L->words,
                             L->in_features, (const void *)(intptr_t)L->lut[bits], (int)L->lut_f16, bits,
                             NULL, 0, (int)L->lut_u8, (const float *)(intptr_t)L->lut_lo[bits],
                             (const float *)(intptr_t)L->lut_scale[bits]};
}

/* Mat-vec path for rows [r0, r1) at one bit-width: groups of up to AP_MAX_TOKENS rows. */
static void add_gemv_groups(const ap_eng_linear *L, int bits, int64_t r0, int64_t r1, const float *x, float *y,
                            ap_gemv_args *groups, int *n_groups) {
    const int64_t K = L->in_features, N = L->n_rows;
    for (; r0 < r1; r0 += AP_MAX_TOKENS) {
        const int64_t t = r1 - r0 < AP_MAX_TOKENS ? r1 - r0 : AP_MAX_TOKENS;
        groups[(*n_groups)++] = (ap_gemv_args){(const uint32_t *)(intptr_t)L->planes, L->plane_stride, N, L->words,
                                               K, (const void *)(intptr_t)L->lut[bits], (int)L->lut_f16, bits,
                                               x + r0 * K, K, (int)t, y + r0 * N, N, (int)L->lut_u8,
                                               (const float *)(intptr_t)L->lut_lo[bits],
                                               (const float *)(intptr_t)L->lut_scale[bits]};
    }
}

/* Rows at `bits` from which a layer call uses the tile GEMM by default (ap_engine.h); with
 * int8 activations the mat-vec calls keep them up to AP_TILE_ROWS (the tiles are fp32/int16). */
static int64_t default_tile_rows(int bits, int act_int8) {
    static const int64_t decode[AP_MAX_BITS + 1] = AP_DECODE_TILE_ROWS;
    return act_int8 || !decode[bits] ? AP_TILE_ROWS : decode[bits];
}

/* y[r, :] = x[r, :] @ W_{widths[r]}.T + bias for rows r in [0, R); equal widths are
 * contiguous. A run of at least `tile_rows` rows at one width (<= 0: default_tile_rows)
 * goes through the tile GEMM of `tiles_kind` (AP_TILES_*) (one dequantization per block of
 * weight rows, shared by the run); shorter runs make mat-vec groups of up to AP_MAX_TOKENS
 * rows, which share one pass over the planes. */
static int linear(const ap_eng_linear *L, const int64_t *widths, int64_t R, const float *x, float *y,
                  int nthreads, int64_t tile_rows, int act_int8, int tiles_kind) {
    const int64_t K = L->in_features, N = L->n_rows;
    ap_tile_group tiles[AP_MAX_BITS];
    int n_tiles = 0;
    for (int64_t c0 = 0; c0 < R;) {  /* calls of up to AP_ENGINE_MAX_GROUPS mat-vec groups */
        ap_gemv_args groups[AP_ENGINE_MAX_GROUPS];
        int n_groups = 0, widest = 0;
        int64_t r0 = c0;
        while (r0 < R) {
            const int bits = (int)widths[r0];
            int64_t r1 = r0;
            while (r1 < R && widths[r1] == bits) r1++;
            if (bits < 1 || bits > AP_MAX_BITS || !L->lut[bits]) return -2;
            const int64_t threshold = tile_rows > 0 ? tile_rows : default_tile_rows(bits, act_int8);
            if (r1 - r0 >= threshold && n_tiles < AP_MAX_BITS) {
                tiles[n_tiles++] = (ap_tile_group){dequant_args(L, bits), x + r0 * K, K, r1 - r0, y + r0 * N, N};
            } else {
                const int64_t room = (int64_t)(AP_ENGINE_MAX_GROUPS - n_groups) * AP_MAX_TOKENS;
                if (!room) break;
                if (r1 - r0 > room) r1 = r0 + room;  /* the rest starts the next call */
                add_gemv_groups(L, bits, r0, r1, x, y, groups, &n_groups);
                widest = bits > widest ? bits : widest;
            }
            r0 = r1;
        }
        if (n_groups) {
            const int64_t plane_bytes = (int64_t)widest * N * L->words * 4;
            const int rc = ap_run_gemv_groups(groups, n_groups, plane_bytes < SMALL_LAYER_BYTES ? 1 : nthreads,
                                               act_int8);
            if (rc) return rc == -2 ? -1 : rc;
        }
        c0 = r0;
    }
    if (n_tiles && ap_run_tile_gemm(tiles, n_tiles, tiles_kind, nthreads)) return -1;
    if (L->bias) {
        const float *b = (const float *)(intptr_t)L->bias;
        for (int64_t r = 0; r < R; r++)
            for (int64_t n = 0; n < N; n++) y[r * N + n] += b[n];
    }
    return 0;
}

/* Per-step buffers for module calls with plan rows: rows regrouped by width. */
typedef struct {
    int any_plan;
    int act_int8;             /* the model's acts_int8 (ap_eng_model) */
    int tiles_kind;           /* the model's tiles_fp32 as an AP_TILES_* kind */
    int64_t *widths, *order;  /* [R] */
    float *xg, *yg;           /* [R, widest in/out features] */
} plan_scratch;

/* Module j of layer l for every row: each row at its own width for this module (its plan's
 * entry, else its bits). Plan rows are gathered in width order, run, and scattered back. */
static int module_call(const ap_eng_linear *L, int64_t l, int j, const ap_eng_row *rows, int64_t R,
                       const float *x, float *y, int nt, int64_t tr, const plan_scratch *ps) {
    if (!ps->any_plan) {
        for (int64_t r = 0; r < R; r++) ps->widths[r] = rows[r].bits;
        return linear(L, ps->widths, R, x, y, nt, tr, ps->act_int8, ps->tiles_kind);
    }
    const int64_t K = L->in_features, N = L->n_rows;
    int64_t n = 0;
    for (int64_t b = 1; b <= AP_MAX_BITS; b++)  /* counting sort of rows by width */
        for (int64_t r = 0; r < R; r++) {
            const int64_t w = rows[r].plan ? ((const int8_t *)(intptr_t)rows[r].plan)[l * AP_ENG_MODULES + j]
                                           : rows[r].bits;
            if (w == b) {
                ps->order[n] = r;
                ps->widths[n++] = b;
            }
        }
    if (n != R) return -2;  /* a width outside 1..AP_MAX_BITS */
    for (int64_t i = 0; i < R; i++) memcpy(ps->xg + i * K, x + ps->order[i] * K, (size_t)K * sizeof(float));
    const int rc = linear(L, ps->widths, R, ps->xg, ps->yg, nt, tr, ps->act_int8, ps->tiles_kind);
    for (int64_t i = 0; i < R && !rc; i++) memcpy(y + ps->order[i] * N, ps->yg + i * N, (size_t)N * sizeof(float));
    return rc;
}

/* v[i] = v[i] * cos[i] + rotate_half(v)[i] * sin[i] for each head of `heads`. */
static void rope(float *v, int64_t heads, int64_t D, const float *cos, const float *sin) {
    const int64_t half = D / 2;
    for (int64_t h = 0; h < heads; h++) {
        float *x = v + h * D;
        for (int64_t i = 0; i < half; i++) {
            const float a = x[i], b = x[i + half];
            x[i] = a * cos[i] - b * sin[i];
            x[i + half] = b * cos[i + half] + a * sin[i + half];
        }
    }
}

/* Rotary embedding of every row's queries q [R, H * D] and keys k [R, Hkv * D] at its position. */
static void rope_rows(const ap_eng_model *m, const ap_eng_row *rows, int64_t R, float *q, float *k, int nt) {
    const int64_t D = m->head_dim, QD = m->n_heads * D, KD = m->n_kv_heads * D;
#pragma omp parallel for num_threads(nt) if (nt > 1 && R >= ROWS_PARALLEL)
    for (int64_t r = 0; r < R; r++) {
        const float *cos = (const float *)(intptr_t)m->rope_cos + rows[r].pos * D;
        const float *sin = (const float *)(intptr_t)m->rope_sin + rows[r].pos * D;
        rope(q + r * QD, m->n_heads, D, cos, sin);
        rope(k + r * KD, m->n_kv_heads, D, cos, sin);
    }
}

static void store_kv(const ap_eng_model *m, int64_t layer, const ap_eng_row *rows, int64_t R, const float *k,
                     const float *v) {
    const int64_t Hkv = m->n_kv_heads, D = m->head_dim;
    for (int64_t r = 0; r < R; r++)
        for (int64_t h = 0; h < Hkv; h++) {
            const int64_t at = ((layer * Hkv + h) * rows[r].cap + rows[r].pos) * D;
            memcpy((float *)(intptr_t)rows[r].k_cache + at, k + (r * Hkv + h) * D, (size_t)D * sizeof(float));
            memcpy((float *)(intptr_t)rows[r].v_cache + at, v + (r * Hkv + h) * D, (size_t)D * sizeof(float));
        }
}

typedef struct {
    float *x, *h, *q, *k, *v, *att, *g, *u;
    plan_scratch ps;
} scratch;

static int alloc_scratch(scratch *s, const ap_eng_model *m, const ap_eng_row *rows, int64_t R) {
    const int64_t E = m->hidden, QD = m->n_heads * m->head_dim, KD = m->n_kv_heads * m->head_dim;
    const int64_t I = m->intermediate, big = E > QD ? E : QD, widest = big > I ? big : I;
    int any_plan = 0;
    for (int64_t r = 0; r < R; r++) any_plan |= rows[r].plan != 0;
    /* floats (an even count, so the int64 arrays after them are 8-byte aligned), then the
     * two int64 arrays of the plan scratch */
    int64_t floats = R * (2 * E + QD + 2 * KD + big + 2 * I) + (any_plan ? 2 * R * widest : 0);
    floats += floats & 1;
    float *all = calloc((size_t)floats * sizeof(float) + (size_t)(2 * R) * sizeof(int64_t), 1);
    if (!all) return -1;
    s->x = all;
    s->h = s->x + R * E;
    s->q = s->h + R * E;
    s->k = s->q + R * QD;
    s->v = s->k + R * KD;
    s->att = s->v + R * KD;
    s->g = s->att + R * big;
    s->u = s->g + R * I;
    s->ps.any_plan = any_plan;
    s->ps.act_int8 = m->acts_int8 != 0;
    s->ps.tiles_kind = m->tiles_fp32 ? AP_TILES_FP32 : AP_TILES_AUTO;
    s->ps.xg = any_plan ? s->u + R * I : NULL;
    s->ps.yg = any_plan ? s->ps.xg + R * widest : NULL;
    s->ps.widths = (int64_t *)(void *)(all + floats);
    s->ps.order = s->ps.widths + R;
    return 0;
}

#define TIMED(slot, expr)                           \
    do {                                            \
        const double t0_ = timings ? now() : 0.0;   \
        expr;                                       \
        if (timings) timings[slot] += now() - t0_;  \
    } while (0)
#define CHECK(expr)             \
    do {                        \
        const int rc_ = (expr); \
        if (rc_) {              \
            free(s.x);          \
            return rc_;         \
        }                       \
    } while (0)

static int run_layer(const ap_eng_model *m, int64_t l, const ap_eng_row *rows, int64_t R, scratch s, int nt,
                     int64_t tr, double *timings) {
    const ap_eng_layer *L = (const ap_eng_layer *)(intptr_t)m->layers + l;
    const int64_t E = m->hidden, I = m->intermediate;
    int rc = 0;
    if (l == 0)  /* later layers get h = their input norm from the previous layer's last add */
        TIMED(AP_T_NORM, norm_rows(s.x, (const float *)(intptr_t)L->in_norm, s.h, R, E, m->eps, nt));
    TIMED(AP_T_QKV, rc = module_call(&L->q, l, 0, rows, R, s.h, s.q, nt, tr, &s.ps);
          if (!rc) rc = module_call(&L->k, l, 1, rows, R, s.h, s.k, nt, tr, &s.ps);
          if (!rc) rc = module_call(&L->v, l, 2, rows, R, s.h, s.v, nt, tr, &s.ps));
    if (rc) return rc;
    TIMED(AP_T_ATTN, {
        rope_rows(m, rows, R, s.q, s.k, nt);
        store_kv(m, l, rows, R, s.k, s.v);
        rc = ap_attention(m, l, rows, R, s.q, s.att, nt);
    });
    if (rc) return rc;
    TIMED(AP_T_O, rc = module_call(&L->o, l, 3, rows, R, s.att, s.h, nt, tr, &s.ps));
    if (rc) return rc;
    TIMED(AP_T_NORM, add_rows(s.x, s.h, (const float *)(intptr_t)L->post_norm, R, E, m->eps, nt));
    TIMED(AP_T_MLP_UP, rc = module_call(&L->gate, l, 4, rows, R, s.h, s.g, nt, tr, &s.ps);
          if (!rc) rc = module_call(&L->up, l, 5, rows, R, s.h, s.u, nt, tr, &s.ps);
          silu_mul_rows(s.g, s.u, R, I, nt));
    if (rc) return rc;
    TIMED(AP_T_MLP_DOWN, rc = module_call(&L->down, l, 6, rows, R, s.g, s.h, nt, tr, &s.ps));
    if (rc) return rc;
    const float *next_norm = l + 1 < m->n_layers ? (const float *)(intptr_t)(L + 1)->in_norm : NULL;
    TIMED(AP_T_NORM, add_rows(s.x, s.h, next_norm, R, E, m->eps, nt));
    return 0;
}

/* Final norm + fp16 head for the rows that want logits: AP_MAX_TOKENS rows per call (the
 * head is read once per call), into a contiguous buffer, then copied to their output rows. */
static int head(const ap_eng_model *m, const ap_eng_row *rows, int64_t R, scratch s, float *logits, int nt) {
    const int64_t E = m->hidden, V = m->vocab;
    int64_t n_out = 0;
    for (int64_t r = 0; r < R; r++) n_out += rows[r].logits_row >= 0;
    if (!n_out) return 0;
    float *out = malloc((size_t)(n_out * V) * sizeof(float));
    if (!out) return -1;
    int64_t o = 0;
    for (int64_t r = 0; r < R; r++)
        if (rows[r].logits_row >= 0)
            rmsnorm(s.x + r * E, (const float *)(intptr_t)m->final_norm, s.h + o++ * E, E, m->eps);
    for (int64_t o0 = 0; o0 < n_out; o0 += AP_MAX_TOKENS) {
        const int64_t t = n_out - o0 < AP_MAX_TOKENS ? n_out - o0 : AP_MAX_TOKENS;
        if (m->head_mode == AP_HEAD_FP16) {
            ap_half_gemv_args a = {(const uint16_t *)(intptr_t)m->head_f16, V, E, s.h + o0 * E, E, (int)t,
                                   out + o0 * V, V};
            ap_run_half_gemv(&a, nt);
            continue;
        }
        ap_int8_gemv_args a = {(const int8_t *)(intptr_t)m->head_i8, (const float *)(intptr_t)m->head_scale, V, E,
                               s.h + o0 * E, E, NULL, NULL, 0, (int)t, out + o0 * V, V};
        if (ap_run_int8_gemv(&a, m->head_mode == AP_HEAD_INT8, nt)) {
            free(out);
            return -1;
        }
    }
    o = 0;
    for (int64_t r = 0; r < R; r++)
        if (rows[r].logits_row >= 0)
            memcpy(logits + rows[r].logits_row * V, out + o++ * V, (size_t)V * sizeof(float));
    free(out);
    return 0;
}

/* dst float32 [hidden] = the token's embedding row (an int8 row is widened: scale * q). */
static void embed_row(const ap_eng_model *m, int64_t token, float *dst) {
    const int64_t E = m->hidden;
    if (!m->embed_i8) {
        memcpy(dst, (const float *)(intptr_t)m->embed + token * E, (size_t)E * sizeof(float));
        return;
    }
    const int8_t *q = (const int8_t *)(intptr_t)m->embed + token * E;
    const float s = ((const float *)(intptr_t)m->embed_scale)[token];
    for (int64_t e = 0; e < E; e++) dst[e] = s * (float)q[e];
}

int ap_engine_step(const ap_eng_model *m, const ap_eng_row *rows, int64_t R, float *logits, int nthreads,
                   double *timings, int64_t tile_rows) {
    scratch s;
    if (R < 1) return 0;
    if (alloc_scratch(&s, m, rows, R)) return -1;
    const int64_t E = m->hidden;
    TIMED(AP_T_NORM, for (int64_t r = 0; r < R; r++) embed_row(m, rows[r].token, s.x + r * E));
    for (int64_t l = 0; l < m->n_layers; l++) CHECK(run_layer(m, l, rows, R, s, nthreads, tile_rows, timings));
    const double t_head = timings ? now() : 0.0;
    CHECK(head(m, rows, R, s, logits, nthreads));
    if (timings) timings[AP_T_HEAD] += now() - t_head;
    free(s.x);
    return 0;
}
