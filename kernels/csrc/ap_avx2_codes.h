/* Plane bits -> byte codes and uint8-LUT lookups for the AVX2 kernels (ap_avx2.c, ap_lut8_avx2.c).
 *
 * No mask registers on AVX2, so each plane's 32-bit word is spread to 32 bytes (broadcast,
 * byte shuffle, bit test) and folded into byte codes MSB-first (codes = 2 * codes + bit).
 */
#ifndef AP_AVX2_CODES_H
#define AP_AVX2_CODES_H
#if defined(__x86_64__)
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include "ap_kernels.h"

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline)) AVX2

/* Byte k of the result = 0xff if column k's bit is set in word w of `plane`, else 0. */
INLINE __m256i plane_mask32(const uint32_t *plane, int64_t w) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit_of_byte = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)plane[w]), spread);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit_of_byte), bit_of_byte);
}

/* Byte k of the result = code of column k of word w (planes [0, bits), MSB first). */
INLINE __m256i byte_codes32(const uint32_t *const src[], int64_t w, int bits) {
    __m256i codes = _mm256_setzero_si256();
    for (int p = 0; p < bits; p++)  /* the mask is -1 where the bit is 1 */
        codes = _mm256_sub_epi8(_mm256_add_epi8(codes, codes), plane_mask32(src[p], w));
    return codes;
}

/* The row's q[0, 2**bits) as 16-entry byte tables, each broadcast to both lanes (entries
 * past 2**bits read as 0: codes never reach them). */
INLINE void u8_tables(const uint8_t *q, int bits, __m256i *tabs) {
    if (bits < 4) {
        uint8_t t[16] = {0};
        memcpy(t, q, (size_t)1 << bits);
        tabs[0] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)t));
        return;
    }
    for (int h = 0; h < 1 << (bits - 4); h++)
        tabs[h] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(q + 16 * h)));
}

/* q of the 32 columns of word w (byte k = column k). The low 4 code bits (the last 4
 * planes) index the tables; each upper code bit's plane mask is itself the blend mask
 * of one tree level, so those planes are never folded into codes. */
INLINE __m256i u8_lookup32(const uint32_t *const src[], int64_t w, const __m256i *tabs, int bits) {
    if (bits <= 4) return _mm256_shuffle_epi8(tabs[0], byte_codes32(src, w, bits));  /* codes < 16 */
    const __m256i lo = byte_codes32(src + bits - 4, w, 4);
    __m256i cand[1 << (AP_MAX_BITS - 4)];  /* candidates, halved per tree level */
    int n = 1 << (bits - 4);
    for (int h = 0; h < n; h++) cand[h] = _mm256_shuffle_epi8(tabs[h], lo);
    for (int bit = 4; bit < bits; bit++, n /= 2) {  /* code bit `bit` lives in plane bits - 1 - bit */
        const __m256i sel = plane_mask32(src[bits - 1 - bit], w);
        for (int h = 0; h < n / 2; h++) cand[h] = _mm256_blendv_epi8(cand[2 * h], cand[2 * h + 1], sel);
    }
    return cand[0];
}

/* 32 bytes -> fp32, columns 8j..8j+7 in w[j] (exact). */
INLINE void u8_widen(__m256i q, __m256 w[4]) {
    const __m128i q0 = _mm256_castsi256_si128(q), q1 = _mm256_extracti128_si256(q, 1);
    w[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q0));
    w[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q0, 8)));
    w[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q1));
    w[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q1, 8)));
}

#endif /* __x86_64__ */
#endif
