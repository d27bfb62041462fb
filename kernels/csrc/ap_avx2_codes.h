/* Plane bits -> byte codes for the AVX2 decode kernels (ap_avx2.c, ap_lut8_avx2.c).
 *
 * No mask registers on AVX2, so each plane's 32-bit word is spread to 32 bytes (broadcast,
 * byte shuffle, bit test) and folded into byte codes MSB-first (codes = 2 * codes + bit).
 */
#ifndef AP_AVX2_CODES_H
#define AP_AVX2_CODES_H
#if defined(__x86_64__)
#include <immintrin.h>
#include <stdint.h>

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

#endif /* __x86_64__ */
#endif
