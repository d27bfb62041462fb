/* Native decode engine for the Llama family (Llama, Mistral, Qwen2): one call runs a whole
 * forward step of R rows (tokens), each row from its own sequence (slot) at its own
 * position and bit-width, over per-slot float32 KV caches.
 *
 * All descriptors are flat int64 records (pointers as integers) so the Python side builds
 * them as plain byte buffers; the field order below is the contract with anyprec/engine.
 */
#ifndef AP_ENGINE_H
#define AP_ENGINE_H

#include <stdint.h>
#include "ap_kernels.h"

typedef struct {
    int64_t planes;          /* int32 [P, N, words] (uint32 view) */
    int64_t plane_stride, n_rows, words, in_features;
    int64_t bias;            /* float32 [N] or 0 */
    int64_t lut_f16;         /* 1: every lut below is float16, 0: float32 */
    int64_t lut[AP_MAX_BITS + 1];  /* by bit-width: [N, 2**b]; 0 where not loaded */
    int64_t lut_u8;          /* 1: every lut is uint8 codes with the lo / scale below (lutq) */
    int64_t lut_lo[AP_MAX_BITS + 1], lut_scale[AP_MAX_BITS + 1];  /* float32 [N] each when lut_u8 */
} ap_eng_linear;

typedef struct {
    int64_t in_norm, post_norm;  /* float32 [hidden] */
    ap_eng_linear q, k, v, o, gate, up, down;
} ap_eng_layer;

typedef struct {
    int64_t n_layers, hidden, n_heads, n_kv_heads, head_dim, intermediate, vocab;
    int64_t embed;           /* float32 [vocab, hidden], or int8 when embed_i8 */
    int64_t final_norm;      /* float32 [hidden] */
    int64_t head_f16;        /* float16 [vocab, hidden] */
    int64_t rope_cos, rope_sin;  /* float32 [rope_positions, head_dim] */
    int64_t rope_positions;
    int64_t layers;          /* ap_eng_layer [n_layers] */
    double eps;              /* RMSNorm epsilon */
    double attn_scale;       /* softmax scale of q.k */
    int64_t head_mode;       /* AP_HEAD_FP16 (head_f16), AP_HEAD_INT8W / AP_HEAD_INT8 (head_i8, head_scale) */
    int64_t head_i8;         /* int8 [vocab, hidden] or 0 */
    int64_t head_scale;      /* float32 [vocab] or 0 */
    int64_t embed_i8;        /* 1: embed is int8 [vocab, hidden] rows times embed_scale, widened per token */
    int64_t embed_scale;     /* float32 [vocab] when embed_i8 */
    int64_t acts_int8;       /* 1: mat-vec calls on uint8 LUTs from 4 bits take int8 activations (one
                              * scale per 32 columns); 0: fp32. 3-bit calls stay fp32 */
    int64_t tiles_fp32;      /* 1: the tile GEMM runs fp32 tiles; 0: int16 tiles where they apply
                              * (uint8 LUTs on AVX2, ap_tiles.h), else fp32 */
} ap_eng_model;

/* Output head modes: fp16 weights (exact); int8 weights x fp32 activations; int8 x int8. */
enum { AP_HEAD_FP16 = 0, AP_HEAD_INT8W = 1, AP_HEAD_INT8 = 2 };

typedef struct {
    int64_t token, bits;
    int64_t pos;             /* cache position this row's key/value is written to */
    int64_t k_cache, v_cache;  /* float32 [n_layers, n_kv_heads, cap, head_dim] */
    int64_t cap;
    int64_t logits_row;      /* row of the logits output to fill, -1: none */
    int64_t plan;            /* int8 [n_layers, AP_ENG_MODULES] width per module, or 0: `bits` everywhere */
} ap_eng_row;

/* Quantized modules of a layer, in the order of a plan row: q, k, v, o, gate, up, down. */
#define AP_ENG_MODULES 7

/* Seconds spent per part of a step (added to, when a timings array is given). */
enum { AP_T_NORM, AP_T_QKV, AP_T_ATTN, AP_T_O, AP_T_MLP_UP, AP_T_MLP_DOWN, AP_T_HEAD, AP_T_COUNT };

/* Rows at one bit-width from which a layer call uses the tile GEMM (ap_tiles.h) instead of
 * the mat-vec kernels, measured on AVX2 (docs/ENGINE.md, "Prefill: integer tiles"; 1 thread,
 * CPU time, 16-token prompt, tiles / mat-vec only): fp32 tiles 1.36x at 3 bits, 1.92x at 4,
 * 2.9x at 8; int16 tiles 1.04x / 1.53x / 2.2x (another window); 8 rows: int16 tiles 1.0x /
 * 1.47x / 2.6x, so 3 bits gains nothing below 16 rows. */
#define AP_TILE_ROWS 16

/* Rows at one bit-width from which a decode-sized run (fewer than AP_TILE_ROWS rows) goes
 * through the tile GEMM, by bit-width (0..8; 0: never below AP_TILE_ROWS). There the mat-vec
 * kernel's table lookups, not its FMAs, bound a call, and it redoes them for every 4 tokens
 * (ap_gemv_token_groups), while a tile dequantizes each weight once. Measured on decode
 * batches (docs/ENGINE.md, "Decode batches", 1 thread, CPU time, tiles / mat-vec ms per step):
 * 4 bits 1.08x at 4 rows, 1.05x at 5, 0.74-0.80x at 8; 5 bits 0.64x at 8; 6 bits 0.64x at 8;
 * 7 bits 0.62x at 5; 8 bits 0.96x at 4, 0.80x at 5, 0.65x at 8; 3 bits 1.32x at 8 (the widened
 * LUT's `vpermps` mat-vec is cheap there). With int8 activations (acts_int8) every width
 * keeps AP_TILE_ROWS. */
#define AP_DECODE_TILE_ROWS {0, 0, 0, 0, 8, 8, 5, 5, 5}

/* Rows without a plan must be sorted by bits (rows of equal bits contiguous); rows with a
 * plan may come in any order (each module call groups them by its width). logits: float32
 * [n_logits, vocab]. tile_rows: the tile threshold for every width (<= 0: AP_TILE_ROWS,
 * or AP_DECODE_TILE_ROWS of the row's width with fp32 activations).
 * Returns 0, -1 (out of memory) or -2 (a row's bit-width has no LUT). */
int ap_engine_step(const ap_eng_model *m, const ap_eng_row *rows, int64_t n_rows, float *logits,
                   int nthreads, double *timings, int64_t tile_rows);

#define AP_ENGINE_MAX_GROUPS 32 /* mat-vec groups (<= AP_MAX_TOKENS rows at one bit-width) per layer call */

/* Defined in ap_module.c: bitplane-LUT / fp16 mat-vec calls with their OpenMP row split.
 * ap_run_gemv_groups runs several groups over one layer reading its planes once (x and
 * xstride of each group are its rows of the input; they are replaced by padded copies);
 * act_int8: the uint8-table kernel's groups (4+ bits) quantize x to int8 per 32 columns.
 * Returns 0, -1 (out of memory) or -2 (n_groups outside 1..AP_ENGINE_MAX_GROUPS). */
int ap_run_gemv_groups(ap_gemv_args *groups, int n_groups, int nthreads, int act_int8);
void ap_run_half_gemv(const ap_half_gemv_args *a, int nthreads);
int ap_run_int8_gemv(const ap_int8_gemv_args *a, int act_int8, int nthreads);

#endif
