/* Causal attention of a block of query vectors against one key/value head (ap_engine.c).
 *
 * The engine groups the rows of a step that share a slot (a prefill chunk) into blocks of
 * up to AP_ATTN_ROWS rows, and runs one job per (block, kv head): the block's rows times the
 * query heads of that kv head (grouped-query attention) attend together, so each key and
 * value row is loaded once per block instead of once per (row, head).
 */
#ifndef AP_ATTENTION_H
#define AP_ATTENTION_H

#include <stdint.h>
#include "ap_engine.h"

#define AP_ATTN_ROWS 4 /* rows of one slot per attention job */

typedef struct {
    const float *q;    /* [m, D] query vectors, contiguous */
    int64_t m;         /* query vectors (rows x query heads of the kv head) */
    const int64_t *n;  /* [m] keys vector i attends: positions 0 .. n[i] - 1 (>= 1) */
    int64_t n_max;     /* max of n */
    const float *k, *v;  /* [>= n_max, D] this kv head's cache */
    int64_t D;
    float scale;       /* softmax scale of q . k */
    float *scores;     /* [m, n_max] scratch */
    float *out;        /* [m, D] */
} ap_attn_block;

/* out[i] = softmax(q[i] . k[0 .. n[i]) * scale) @ v[0 .. n[i]) for every vector i. avx2:
 * the AVX2/FMA kernels (D a multiple of 8), else portable C (one dot product per key). */
void ap_attend_block(const ap_attn_block *a, int avx2);

/* out[r, h*D:(h+1)*D] = softmax(q . K[0..pos] * scale) @ V[0..pos] for every row r < R and
 * query head h of `layer` (q, out [R, n_heads * head_dim]; every row's key and value already
 * in its slot's cache), OpenMP over (row block, kv head) jobs. Returns 0 or -1 (out of memory). */
int ap_attention(const ap_eng_model *m, int64_t layer, const ap_eng_row *rows, int64_t R, const float *q,
                 float *out, int nthreads);

/* Defined in ap_module.c: 1 when the kernels in use are AVX2 or better (set_isa may force
 * the portable ones). */
int ap_engine_avx2(void);

#endif
