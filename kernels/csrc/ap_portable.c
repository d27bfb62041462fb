/* Portable scalar kernels: the fallback of the runtime dispatch (AVX2: ap_avx2.c,
 * ap_lut8_avx2.c). */
#include <string.h>
#include "ap_kernels.h"

float ap_half_to_float(uint16_t h) {
    /* IEEE binary16 -> binary32, exact (subnormals, inf and nan included). */
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400u));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t ap_float_to_bf16(float f) {
    /* round to nearest even, as torch does for finite values */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* LUT row n widened to float32: fp32 copied, fp16 widened exactly, uint8 codes mapped to
 * lo + scale * q (the lutq scheme; -std=c11 keeps the product and the sum rounded apart,
 * as torch computes them). */
static inline void load_lut_row(const void *lut, int lut_f16, int lut_u8, const float *lo, const float *scale,
                                int bits, int64_t n, float *dst) {
    const int64_t size = (int64_t)1 << bits;
    if (lut_u8) {
        const uint8_t *src = (const uint8_t *)lut + n * size;
        const float l = lo[n], s = scale[n];
        for (int64_t i = 0; i < size; i++) dst[i] = l + s * (float)src[i];
    } else if (lut_f16) {
        const uint16_t *src = (const uint16_t *)lut + n * size;
        for (int64_t i = 0; i < size; i++) dst[i] = ap_half_to_float(src[i]);
    } else {
        memcpy(dst, (const float *)lut + n * size, (size_t)size * sizeof(float));
    }
}

static inline unsigned code_at(const uint32_t *row_words[], int bits, int64_t w, int i) {
    unsigned code = 0;
    for (int p = 0; p < bits; p++) code |= ((row_words[p][w] >> i) & 1u) << (bits - 1 - p);
    return code;
}

#define DEFINE_PORTABLE_GEMV(SUFFIX, ATTR)                                                        \
    ATTR void ap_gemv_rows_##SUFFIX(const ap_gemv_args *a, int64_t row0, int64_t row1) {    \
        float lut[1 << AP_MAX_BITS];                                                         \
        const uint32_t *rw[AP_MAX_BITS];                                                     \
        for (int64_t n = row0; n < row1; n++) {                                              \
            load_lut_row(a->lut, a->lut_f16, a->lut_u8, a->lut_lo, a->lut_scale, a->bits, n, lut); \
            for (int p = 0; p < a->bits; p++)                                                \
                rw[p] = a->planes + p * a->plane_stride + n * a->words;                      \
            float acc[AP_MAX_TOKENS] = {0};                                                  \
            for (int64_t w = 0; w < a->words; w++) {                                         \
                for (int i = 0; i < 32; i++) {                                               \
                    float wv = lut[code_at(rw, a->bits, w, i)];                              \
                    for (int t = 0; t < a->tokens; t++)                                      \
                        acc[t] += wv * a->x[t * a->xstride + w * 32 + i];                    \
                }                                                                            \
            }                                                                                \
            for (int t = 0; t < a->tokens; t++) a->y[t * a->ystride + n] = acc[t];           \
        }                                                                                    \
    }

#define DEFINE_PORTABLE_DEQUANT(SUFFIX, ATTR)                                                \
    ATTR void ap_dequant_rows_##SUFFIX(const ap_dequant_args *a, int64_t row0, int64_t row1, \
                                       int64_t out_row0) {                                   \
        float lut[1 << AP_MAX_BITS];                                                         \
        const uint32_t *rw[AP_MAX_BITS];                                                     \
        for (int64_t n = row0; n < row1; n++) {                                              \
            load_lut_row(a->lut, a->lut_f16, a->lut_u8, a->lut_lo, a->lut_scale, a->bits, n, lut); \
            for (int p = 0; p < a->bits; p++)                                                \
                rw[p] = a->planes + p * a->plane_stride + n * a->words;                      \
            int64_t base = (n - out_row0) * a->in_features;                                  \
            for (int64_t w = 0; w < a->words; w++) {                                         \
                /* codes of the word's 32 columns, plane by plane: the i loop vectorises */  \
                unsigned codes[32] = {0};                                                    \
                for (int p = 0; p < a->bits; p++) {                                          \
                    const uint32_t word = rw[p][w];                                          \
                    for (int i = 0; i < 32; i++) codes[i] = (codes[i] << 1) | ((word >> i) & 1u); \
                }                                                                            \
                const int64_t k0 = w * 32, cols = a->in_features - k0 < 32 ? a->in_features - k0 : 32; \
                if (a->out_bf16)                                                             \
                    for (int64_t i = 0; i < cols; i++)                                       \
                        ((uint16_t *)a->out)[base + k0 + i] = ap_float_to_bf16(lut[codes[i]]); \
                else                                                                         \
                    for (int64_t i = 0; i < cols; i++) ((float *)a->out)[base + k0 + i] = lut[codes[i]]; \
            }                                                                                \
        }                                                                                    \
    }

DEFINE_PORTABLE_GEMV(portable, )
DEFINE_PORTABLE_DEQUANT(portable, )  /* AVX2: ap_avx2.c */

/* XOR of all 64-bit words of [data, data + n_words): a pure streaming read for measuring
 * memory bandwidth (the compiler vectorises it; 4 accumulators hide the latency). */
uint64_t ap_xor_words(const uint64_t *data, int64_t n_words) {
    uint64_t acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n_words; i += 8)
        for (int j = 0; j < 8; j++) acc[j] ^= data[i + j];
    for (; i < n_words; i++) acc[0] ^= data[i];
    return acc[0] ^ acc[1] ^ acc[2] ^ acc[3] ^ acc[4] ^ acc[5] ^ acc[6] ^ acc[7];
}
