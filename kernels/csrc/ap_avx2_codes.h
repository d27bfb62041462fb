/* Plane bits -> byte codes and uint8-LUT lookups for the AVX2 kernels (ap_avx2.c, ap_lut8_avx2.c).
 *
 * No mask registers on AVX2, so each plane's 32-bit word is spread to 32 bytes (broadcast,
 * byte shuffle, bit test) and folded into byte codes MSB-first (codes = 2 * codes + bit);
 * or, 4 or 8 words at a time, the planes' bytes are interleaved so that a 64-bit lane holds
 * one byte of every plane and an 8x8 bit transpose turns it into 8 codes (row_codes picks
 * the faster way per width).
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

/* Sum of the 8 lanes of v (one fixed order: halves, then pairs, then the last two). */
INLINE float hsum_ps(__m256 v) {
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

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

/* Hacker's Delight `transpose8` on each 64-bit lane: bit c of byte r <-> bit r of byte c. */
INLINE __m256i bit_transpose8(__m256i x) {
    const __m256i m1 = _mm256_set1_epi64x(0x00AA00AA00AA00AALL), m2 = _mm256_set1_epi64x(0x0000CCCC0000CCCCLL),
                  m3 = _mm256_set1_epi64x(0x00000000F0F0F0F0LL);
    __m256i t = _mm256_and_si256(_mm256_xor_si256(x, _mm256_srli_epi64(x, 7)), m1);
    x = _mm256_xor_si256(_mm256_xor_si256(x, t), _mm256_slli_epi64(t, 7));
    t = _mm256_and_si256(_mm256_xor_si256(x, _mm256_srli_epi64(x, 14)), m2);
    x = _mm256_xor_si256(_mm256_xor_si256(x, t), _mm256_slli_epi64(t, 14));
    t = _mm256_and_si256(_mm256_xor_si256(x, _mm256_srli_epi64(x, 28)), m3);
    return _mm256_xor_si256(_mm256_xor_si256(x, t), _mm256_slli_epi64(t, 28));
}

/* Byte codes of the 128 columns of words w..w+3 to out[0, 128), equal to byte_codes32 on
 * each word. The 64-bit lane of column group g (8 columns) gets byte g of the plane of
 * code bit r as its byte r (plane bits - 1 - r; zero past bits) by byte and word unpacks
 * and one dword permute; bit_transpose8 then turns each lane into the group's 8 codes. */
INLINE void byte_codes128(const uint32_t *const src[], int64_t w, int bits, uint8_t *out) {
    __m256i y[4], z[4];
    for (int r = 0; r < 4; r++) {  /* code bit r in lane 0, bit r + 4 in lane 1: a load and a blend, no shuffle */
        const __m256i lo = r < bits ? _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(src[bits - 1 - r] + w)))
                                    : _mm256_setzero_si256();
        y[r] = r + 4 < bits ? _mm256_blend_epi32(lo, _mm256_broadcastsi128_si256(_mm_loadu_si128(
                                  (const __m128i *)(src[bits - 5 - r] + w))), 0xf0)
                            : lo;
    }
    z[0] = _mm256_unpacklo_epi8(y[0], y[1]);  /* lane 0: bytes 0..7 of code bits 0, 1; lane 1: bits 4, 5 */
    z[1] = _mm256_unpackhi_epi8(y[0], y[1]);  /* bytes 8..15 */
    z[2] = _mm256_unpacklo_epi8(y[2], y[3]);
    z[3] = _mm256_unpackhi_epi8(y[2], y[3]);
    const __m256i pair = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  /* dword g of lane 0 next to dword g of lane 1 */
    for (int h = 0; h < 4; h++) {  /* groups 4h..4h+3 */
        const __m256i v = h % 2 ? _mm256_unpackhi_epi16(z[h / 2], z[h / 2 + 2]) : _mm256_unpacklo_epi16(z[h / 2], z[h / 2 + 2]);
        _mm256_storeu_si256((__m256i *)(out + 32 * h), bit_transpose8(_mm256_permutevar8x32_epi32(v, pair)));
    }
}

/* Byte codes (bits <= 4) of the 256 columns of words w..w+7 to out[0, 256), equal to
 * byte_codes32 on each word: as byte_codes128 with code bit r of words w+4..w+7 as bit
 * r + 4, so each output byte holds two codes (the second at out + 128). */
INLINE void nibble_codes256(const uint32_t *const src[], int64_t w, int bits, uint8_t *out) {
    __m256i y[4], z[4];
    for (int r = 0; r < 4; r++)
        y[r] = r < bits ? _mm256_loadu_si256((const __m256i *)(src[bits - 1 - r] + w)) : _mm256_setzero_si256();
    z[0] = _mm256_unpacklo_epi8(y[0], y[1]);
    z[1] = _mm256_unpackhi_epi8(y[0], y[1]);
    z[2] = _mm256_unpacklo_epi8(y[2], y[3]);
    z[3] = _mm256_unpackhi_epi8(y[2], y[3]);
    const __m256i pair = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7), low = _mm256_set1_epi8(0x0f);
    for (int h = 0; h < 4; h++) {
        const __m256i v = h % 2 ? _mm256_unpackhi_epi16(z[h / 2], z[h / 2 + 2]) : _mm256_unpacklo_epi16(z[h / 2], z[h / 2 + 2]);
        const __m256i c = bit_transpose8(_mm256_permutevar8x32_epi32(v, pair));
        _mm256_storeu_si256((__m256i *)(out + 32 * h), _mm256_and_si256(c, low));
        _mm256_storeu_si256((__m256i *)(out + 128 + 32 * h), _mm256_and_si256(_mm256_srli_epi16(c, 4), low));
    }
}

/* Byte codes of words [w0, w1) to out[0, 32 * (w1 - w0)), equal to byte_codes32 per word.
 * Per width, the builder measured fastest on this AMD EPYC (AVX2, no AVX-512; ns per word,
 * 51-word rows, hot): nibble_codes256 at 4 bits (2.1 vs 2.5 per word; 1.0x at 3 bits, 1.35x
 * slower at 1..2), byte_codes128 at 6..8 (0.95x / 0.82x / 0.69x: 3.6 / 3.8 / 4.0 vs
 * 3.8 / 4.6 / 5.8; 1.15x slower at 5), byte_codes32 per word otherwise. */
INLINE void row_codes(const uint32_t *const src[], int64_t w0, int64_t w1, int bits, uint8_t *out) {
    int64_t w = w0;
    if (bits == 4)
        for (; w + 8 <= w1; w += 8) nibble_codes256(src, w, bits, out + 32 * (w - w0));
    else if (bits >= 6)
        for (; w + 4 <= w1; w += 4) byte_codes128(src, w, bits, out + 32 * (w - w0));
    for (; w < w1; w++) _mm256_storeu_si256((__m256i *)(out + 32 * (w - w0)), byte_codes32(src, w, bits));
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

#define AP_CODE_WORDS 64 /* words of codes built per chunk: 2 KiB of stack */

/* The bytes u8_lookup_codes32 reads for words [w0, w1), to codes[0, 32 * (w1 - w0)): the
 * codes at <= 4 bits, the low 4 code bits (the last 4 planes) above, by nibble_codes256 at
 * 4..5 bits and by the per-word fold at 6..8 (measured on the same CPU, 1 thread, min of
 * 40: the buffered kernel at 4 / 5 bits takes 0.90-0.93x / 0.84-0.94x the per-word
 * kernel's time; at 6..8 bits nibble_codes256 for the low bits was 0.91-1.17x, the fold
 * 0.89-1.06x). Full codes at 6..8 bits (byte_codes128, tree masks `codes << (7 - k)`, one
 * op instead of plane_mask32's four) were 1.03-1.13x: the transpose's and the masks'
 * shifts compete with the tree's `vpshufb` for the same ports (docs/ENGINE.md). */
INLINE void u8_codes(const uint32_t *const src[], int64_t w0, int64_t w1, int bits, uint8_t *codes) {
    if (bits <= 4) row_codes(src, w0, w1, bits, codes);
    else if (bits == 5) row_codes(src + 1, w0, w1, 4, codes);
    else for (int64_t w = w0; w < w1; w++) _mm256_store_si256((__m256i *)(codes + 32 * (w - w0)), byte_codes32(src + bits - 4, w, 4));
}

/* u8_lookup32 of word w, given c = its 32 bytes from u8_codes. */
INLINE __m256i u8_lookup_codes32(__m256i c, const uint32_t *const src[], int64_t w, const __m256i *tabs, int bits) {
    if (bits <= 4) return _mm256_shuffle_epi8(tabs[0], c);
    __m256i cand[1 << (AP_MAX_BITS - 4)];
    int n = 1 << (bits - 4);
    for (int h = 0; h < n; h++) cand[h] = _mm256_shuffle_epi8(tabs[h], c);
    for (int bit = 4; bit < bits; bit++, n /= 2) {
        const __m256i sel = plane_mask32(src[bits - 1 - bit], w);
        for (int h = 0; h < n / 2; h++) cand[h] = _mm256_blendv_epi8(cand[2 * h], cand[2 * h + 1], sel);
    }
    return cand[0];
}

/* acc[t][j] += wv[j] * x[t, 32w + 8j .. 32w + 8j + 7] for T fp32 tokens (columns 8j..8j+7 of word w). */
INLINE void fma_tokens32(const ap_gemv_args *a, int64_t w, const __m256 wv[4], __m256 acc[][4], int T) {
    for (int t = 0; t < T; t++) {
        const float *x = a->x + t * a->xstride + 32 * w;
        for (int j = 0; j < 4; j++) acc[t][j] = _mm256_fmadd_ps(wv[j], _mm256_loadu_ps(x + 8 * j), acc[t][j]);
    }
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
