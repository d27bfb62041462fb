/* The engine's attention (ap_attention.h): a step's rows are grouped into blocks of up to
 * AP_ATTN_ROWS rows of one slot at consecutive positions, one OpenMP job per (block, kv
 * head), longest blocks first; each job is the causal attention of the block's query
 * vectors (rows x the kv head's query heads) against that kv head.
 *
 * Portable C: per vector, one dot product per key, softmax, then the weighted sum of values.
 *
 * AVX2/FMA, in three passes over the block:
 * 1. scores S[i, t] = q_i . k_t for every vector and key t < n_max: a 2-vector x 4-key tile
 *    keeps 8 accumulators over D and reduces them together (horizontal adds, one store of 4
 *    scores per vector), so each key row is loaded once per vector pair, not once per dot;
 * 2. per vector, softmax over its own keys (t < n[i]); the weights past n[i] are set to 0;
 * 3. out[i] = sum_t p[i, t] v_t: a 4-vector x 16-column tile (8 accumulators), each value
 *    row loaded once per 4 vectors.
 * Every product is fp32 as in the portable path; only the order of the sums differs.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "ap_attention.h"
#include "ap_vexp.h"

/* Scores are scaled, shifted by their max, exponentiated (avx2: by ap_vexp.c, the same
 * bits as expf) and normalised in place. */
static void softmax_row(float *s, int64_t n, int64_t n_max, float scale, int avx2) {
    float top = -INFINITY;
    for (int64_t t = 0; t < n; t++) {
        s[t] *= scale;
        top = s[t] > top ? s[t] : top;
    }
    if (avx2) ap_exp_shifted_avx2(s, n, top);
    else
        for (int64_t t = 0; t < n; t++) s[t] = expf(s[t] - top);
    float total = 0.0f;
    for (int64_t t = 0; t < n; t++) total += s[t];
    for (int64_t t = 0; t < n; t++) s[t] /= total;
    for (int64_t t = n; t < n_max; t++) s[t] = 0.0f;
}

static void attend_portable(const ap_attn_block *a) {
    const int64_t D = a->D;
    for (int64_t i = 0; i < a->m; i++) {
        const float *q = a->q + i * D;
        float *s = a->scores + i * a->n_max, *o = a->out + i * D;
        for (int64_t t = 0; t < a->n[i]; t++) {
            float dot = 0.0f;
            for (int64_t d = 0; d < D; d++) dot += q[d] * a->k[t * D + d];
            s[t] = dot;
        }
        softmax_row(s, a->n[i], a->n[i], a->scale, 0);
        for (int64_t d = 0; d < D; d++) o[d] = 0.0f;
        for (int64_t t = 0; t < a->n[i]; t++)
            for (int64_t d = 0; d < D; d++) o[d] += s[t] * a->v[t * D + d];
    }
}

#if defined(__x86_64__)
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma")))
#define INLINE static inline __attribute__((always_inline)) AVX2

/* s0[0..3] = q0 . k_{0..3}, s1[0..3] = q1 . k_{0..3} (s1 NULL: q1 is q0 again, not stored). */
INLINE void qk_2x4(const float *q0, const float *q1, const float *k, int64_t D, float *s0, float *s1) {
    __m256 acc[8];
    for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) {
        const __m256 x0 = _mm256_loadu_ps(q0 + d), x1 = _mm256_loadu_ps(q1 + d);
        for (int j = 0; j < 4; j++) {
            const __m256 kv = _mm256_loadu_ps(k + j * D + d);
            acc[j] = _mm256_fmadd_ps(x0, kv, acc[j]);
            acc[4 + j] = _mm256_fmadd_ps(x1, kv, acc[4 + j]);
        }
    }
    /* lanes of acc[0..3] -> their 4 sums in the low half, acc[4..7] in the high half */
    const __m256 h0 = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
    const __m256 h1 = _mm256_hadd_ps(_mm256_hadd_ps(acc[4], acc[5]), _mm256_hadd_ps(acc[6], acc[7]));
    const __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20), _mm256_permute2f128_ps(h0, h1, 0x31));
    _mm_storeu_ps(s0, _mm256_castps256_ps128(sum));
    if (s1) _mm_storeu_ps(s1, _mm256_extractf128_ps(sum, 1));
}

INLINE float dot_avx2(const float *x, const float *y, int64_t D) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + d), _mm256_loadu_ps(y + d), acc);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

AVX2 static void scores_avx2(const ap_attn_block *a) {
    const int64_t D = a->D, nm = a->n_max, t4 = nm / 4 * 4;
    for (int64_t i = 0; i < a->m; i += 2) {
        const float *q0 = a->q + i * D, *q1 = i + 1 < a->m ? q0 + D : q0;
        float *s0 = a->scores + i * nm, *s1 = i + 1 < a->m ? s0 + nm : NULL;
        for (int64_t t = 0; t < t4; t += 4) qk_2x4(q0, q1, a->k + t * D, D, s0 + t, s1 ? s1 + t : NULL);
        for (int64_t t = t4; t < nm; t++) {
            s0[t] = dot_avx2(q0, a->k + t * D, D);
            if (s1) s1[t] = dot_avx2(q1, a->k + t * D, D);
        }
    }
}

/* out[i, d0 .. d0 + 8 * C) for vectors i0 .. i0 + M over keys t < n (constants after inlining). */
INLINE void pv_tile(const ap_attn_block *a, int64_t i0, int64_t d0, int64_t n, const int M, const int C) {
    const int64_t D = a->D, nm = a->n_max;
    const float *p = a->scores + i0 * nm, *v = a->v + d0;
    __m256 acc[4][2];
    for (int i = 0; i < M; i++)
        for (int c = 0; c < C; c++) acc[i][c] = _mm256_setzero_ps();
    for (int64_t t = 0; t < n; t++) {
        __m256 vv[2];
        for (int c = 0; c < C; c++) vv[c] = _mm256_loadu_ps(v + t * D + 8 * c);
        for (int i = 0; i < M; i++) {
            const __m256 w = _mm256_broadcast_ss(p + i * nm + t);
            for (int c = 0; c < C; c++) acc[i][c] = _mm256_fmadd_ps(w, vv[c], acc[i][c]);
        }
    }
    for (int i = 0; i < M; i++)
        for (int c = 0; c < C; c++) _mm256_storeu_ps(a->out + (i0 + i) * D + d0 + 8 * c, acc[i][c]);
}

AVX2 static void values_avx2(const ap_attn_block *a) {
    const int64_t D = a->D;
    for (int64_t i0 = 0; i0 < a->m; i0 += 4) {
        const int M = a->m - i0 < 4 ? (int)(a->m - i0) : 4;
        int64_t n = 0;  /* the tile's longest row: the others' weights past their n are 0 */
        for (int i = 0; i < M; i++) n = a->n[i0 + i] > n ? a->n[i0 + i] : n;
        int64_t d0 = 0;
        for (; d0 + 16 <= D; d0 += 16) switch (M) {
                case 1: pv_tile(a, i0, d0, n, 1, 2); break;
                case 2: pv_tile(a, i0, d0, n, 2, 2); break;
                case 3: pv_tile(a, i0, d0, n, 3, 2); break;
                default: pv_tile(a, i0, d0, n, 4, 2); break;
            }
        if (d0 < D) switch (M) {  /* D is a multiple of 8: at most one 8-column chunk left */
                case 1: pv_tile(a, i0, d0, n, 1, 1); break;
                case 2: pv_tile(a, i0, d0, n, 2, 1); break;
                case 3: pv_tile(a, i0, d0, n, 3, 1); break;
                default: pv_tile(a, i0, d0, n, 4, 1); break;
            }
    }
}

static void attend_avx2(const ap_attn_block *a) {
    scores_avx2(a);
    for (int64_t i = 0; i < a->m; i++) softmax_row(a->scores + i * a->n_max, a->n[i], a->n_max, a->scale, 1);
    values_avx2(a);
}
#endif

void ap_attend_block(const ap_attn_block *a, int avx2) {
#if defined(__x86_64__)
    if (avx2 && a->D % 8 == 0) {
        attend_avx2(a);
        return;
    }
#endif
    (void)avx2;
    attend_portable(a);
}

/* Rows [r0, end) that attend together: up to AP_ATTN_ROWS rows of one slot at consecutive
 * positions (a prefill chunk's), so every key up to the block's last position is written. */
static int64_t block_end(const ap_eng_row *rows, int64_t R, int64_t r0) {
    int64_t r1 = r0 + 1;
    while (r1 < R && r1 - r0 < AP_ATTN_ROWS && rows[r1].k_cache == rows[r0].k_cache &&
           rows[r1].pos == rows[r1 - 1].pos + 1)
        r1++;
    return r1;
}

/* One job: the rows [r0, r1) times the G query heads of kv head kvh (ap_attention.h);
 * buf holds the block's queries, outputs, key counts and scores. */
static void attend_job(const ap_eng_model *m, int64_t layer, const ap_eng_row *rows, int64_t r0, int64_t r1,
                       int64_t kvh, const float *q, float *out, float *buf, int avx2) {
    const int64_t H = m->n_heads, G = H / m->n_kv_heads, D = m->head_dim, Hkv = m->n_kv_heads;
    const int64_t mq = (r1 - r0) * G, base = ((layer * Hkv + kvh) * rows[r0].cap) * D;
    float *qb = buf, *ob = qb + AP_ATTN_ROWS * G * D;
    int64_t *n = (int64_t *)(void *)(ob + AP_ATTN_ROWS * G * D);
    int64_t n_max = 0;
    for (int64_t r = r0; r < r1; r++) {
        memcpy(qb + (r - r0) * G * D, q + (r * H + kvh * G) * D, (size_t)(G * D) * sizeof(float));
        for (int64_t g = 0; g < G; g++) n[(r - r0) * G + g] = rows[r].pos + 1;
        n_max = rows[r].pos + 1 > n_max ? rows[r].pos + 1 : n_max;
    }
    const ap_attn_block a = {qb, mq, n, n_max, (const float *)(intptr_t)rows[r0].k_cache + base,
                             (const float *)(intptr_t)rows[r0].v_cache + base, D, (float)m->attn_scale,
                             (float *)(void *)(n + AP_ATTN_ROWS * G), ob};
    ap_attend_block(&a, avx2);
    for (int64_t r = r0; r < r1; r++)
        memcpy(out + (r * H + kvh * G) * D, ob + (r - r0) * G * D, (size_t)(G * D) * sizeof(float));
}

/* out[r, h*D:(h+1)*D] = softmax(q . K[0..pos] * scale) @ V[0..pos] for every row and head:
 * OpenMP over (row block, kv head) jobs. */
int ap_attention(const ap_eng_model *m, int64_t layer, const ap_eng_row *rows, int64_t R, const float *q,
                     float *out, int nthreads) {
    const int64_t H = m->n_heads, G = m->n_heads / m->n_kv_heads, D = m->head_dim, Hkv = m->n_kv_heads;
    int64_t longest = 0, n_blocks = 0;
    for (int64_t r = 0; r < R; r++) longest = rows[r].pos + 1 > longest ? rows[r].pos + 1 : longest;
    int64_t *starts = malloc((size_t)(R + 1) * sizeof(int64_t));
    if (!starts) return -1;
    for (int64_t r = 0; r < R; r = block_end(rows, R, r)) starts[n_blocks++] = r;
    starts[n_blocks] = R;
    /* queries and outputs [AP_ATTN_ROWS * G, D] each, key counts, scores [AP_ATTN_ROWS * G, longest] */
    const size_t buf_bytes = (size_t)(AP_ATTN_ROWS * G) * ((size_t)(2 * D + longest) * sizeof(float) + sizeof(int64_t));
    const int avx2 = ap_engine_avx2();
    int failed = 0;
    const int threads = R * H * longest * D < (1 << 16) ? 1 : nthreads;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *buf = malloc(buf_bytes);
        if (!buf) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t job = 0; job < n_blocks * Hkv; job++) {
            if (!buf) continue;
            const int64_t b = n_blocks - 1 - job / Hkv;  /* the last rows attend longest: first */
            attend_job(m, layer, rows, starts[b], starts[b + 1], job % Hkv, q, out, buf, avx2);
        }
        free(buf);
    }
    free(starts);
    return failed ? -1 : 0;
}
