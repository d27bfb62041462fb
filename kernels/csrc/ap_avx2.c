/* AVX2+FMA decode kernel (x86-64 CPUs without AVX-512): 32 columns per step.
 *
 * Byte codes come from the planes as in ap_avx2_codes.h. Dword lane i of `codes >> 8j`
 * then holds the code of column 4i + j in its low byte; the caller stores x to match
 * (AP_X_PERM4_32). Centroids: the row's LUT widened to fp32 once;
 * <= 3 bits one `vpermps` per 8 columns, 4 bits two `vpermps` picked by the code's top bit.
 * 5..8 bits with an fp16 LUT (the artifact's): the LUT is split into 16-entry tables of low
 * and high bytes; `vpshufb` looks the code's low nibble up in each (32 columns at once) and
 * the table is picked by the code's upper bits (a `vpblendvb` tree at 5 bits, an equality
 * blend per table at 6..8), then the fp16 bytes are re-paired and widened exactly (x in
 * natural order). Gathers cost ~16 cycles per 8 columns on this family of CPUs (3x the
 * nibble path at 5 bits, 1.4x at 8); fp32 LUTs still use them.
 */
#if defined(__x86_64__)
#include <immintrin.h>
#include "ap_kernels.h"
#include "ap_avx2_codes.h"

/* fp32 centroids of the 8 lanes of idx (low byte of each lane = code). */
INLINE __m256 lookup8(__m256i idx, const float *lut, __m256 lo, __m256 hi, int bits) {
    if (bits <= 3) return _mm256_permutevar8x32_ps(lo, idx);
    if (bits == 4) {
        const __m256 top = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));  /* code bit 3 -> sign */
        return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx), top);
    }
    return _mm256_i32gather_ps(lut, _mm256_and_si256(idx, _mm256_set1_epi32(0xff)), 4);
}

/* The fp16 row lut[0, 2**bits) as 2**(bits-4) pairs of 16-byte tables (low bytes, high
 * bytes), each broadcast to both lanes: tabs[2h] = low bytes of entries 16h..16h+15. */
INLINE void nibble_tables(const uint16_t *lut, int bits, __m256i *tabs) {
    const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                           0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    for (int h = 0; h < 1 << (bits - 4); h++) {
        const __m256i v = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(lut + 16 * h)), split);
        const __m256i s = _mm256_permute4x64_epi64(v, 0xd8);  /* [lo 0-7, lo 8-15, hi 0-7, hi 8-15] */
        tabs[2 * h] = _mm256_permute2x128_si256(s, s, 0x00);
        tabs[2 * h + 1] = _mm256_permute2x128_si256(s, s, 0x11);
    }
}

/* fp16 low / high bytes of 32 columns -> fp32, columns 8q..8q+7 in w[q] (exact). */
INLINE void nibble_widen(__m256i lob, __m256i hib, __m256 w[4]) {
    const __m256i a = _mm256_unpacklo_epi8(lob, hib), b = _mm256_unpackhi_epi8(lob, hib);
    w[0] = _mm256_cvtph_ps(_mm256_castsi256_si128(a));       /* columns 0-7 */
    w[1] = _mm256_cvtph_ps(_mm256_castsi256_si128(b));       /* 8-15 */
    w[2] = _mm256_cvtph_ps(_mm256_extracti128_si256(a, 1));  /* 16-23 */
    w[3] = _mm256_cvtph_ps(_mm256_extracti128_si256(b, 1));  /* 24-31 */
}

#define STREAM_BITS 6 /* measured: the tree wins at 5 bits (240 vs 260 us), equality at 6..8 */
/* fp32 centroids of 32 byte codes, columns 8q..8q+7 in w[q]. */
INLINE void nibble_lookup32(__m256i codes, const __m256i *tabs, int bits, __m256 w[4]) {
    const __m256i lo = _mm256_and_si256(codes, _mm256_set1_epi8(0x0f));
    if (bits >= STREAM_BITS) {  /* select by equality, streaming (a tree keeps many vectors live) */
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(codes, 4), _mm256_set1_epi8(0x0f));
        __m256i rl = _mm256_setzero_si256(), rh = _mm256_setzero_si256();
        for (int h = 0; h < 1 << (bits - 4); h++) {
            const __m256i m = _mm256_cmpeq_epi8(hi, _mm256_set1_epi8((char)h));
            rl = _mm256_blendv_epi8(rl, _mm256_shuffle_epi8(tabs[2 * h], lo), m);
            rh = _mm256_blendv_epi8(rh, _mm256_shuffle_epi8(tabs[2 * h + 1], lo), m);
        }
        nibble_widen(rl, rh, w);
        return;
    }
    __m256i lob[1 << (STREAM_BITS - 5)], hib[1 << (STREAM_BITS - 5)];  /* candidates, halved per tree level */
    int n = 1 << (bits - 4);
    for (int h = 0; h < n; h++) {
        lob[h] = _mm256_shuffle_epi8(tabs[2 * h], lo);
        hib[h] = _mm256_shuffle_epi8(tabs[2 * h + 1], lo);
    }
    for (int bit = 4; bit < bits; bit++, n /= 2) {  /* code bit `bit` -> byte bit 7: the blend mask */
        const __m256i sel = bit == 7 ? codes : _mm256_slli_epi16(codes, 7 - bit);
        for (int h = 0; h < n / 2; h++) {
            lob[h] = _mm256_blendv_epi8(lob[2 * h], lob[2 * h + 1], sel);
            hib[h] = _mm256_blendv_epi8(hib[2 * h], hib[2 * h + 1], sel);
        }
    }
    nibble_widen(lob[0], hib[0], w);
}

INLINE void avx2_rows_nibble(const ap_gemv_args *a, int64_t row0, int64_t row1, int bits, int T) {
    __m256i tabs[2 << (AP_MAX_BITS - 4)];
    for (int64_t n = row0; n < row1; n++) {
        nibble_tables((const uint16_t *)a->lut + (n << bits), bits, tabs);
        const uint32_t *src[AP_MAX_BITS];
        for (int p = 0; p < bits; p++) src[p] = a->planes + p * a->plane_stride + n * a->words;
        __m256 acc[4][4];
        for (int t = 0; t < T; t++)
            for (int j = 0; j < 4; j++) acc[t][j] = _mm256_setzero_ps();
        uint8_t codes[32 * AP_CODE_WORDS] __attribute__((aligned(32)));
        for (int64_t w0 = 0; w0 < a->words; w0 += AP_CODE_WORDS) {
            const int64_t w1 = w0 + AP_CODE_WORDS < a->words ? w0 + AP_CODE_WORDS : a->words;
            row_codes(src, w0, w1, bits, codes);
            for (int64_t w = w0; w < w1; w++) {
                __m256 wv[4];
                nibble_lookup32(_mm256_load_si256((const __m256i *)(codes + 32 * (w - w0))), tabs, bits, wv);
                fma_tokens32(a, w, wv, acc, T);
            }
        }
        for (int t = 0; t < T; t++)
            a->y[t * a->ystride + n] =
                hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[t][0], acc[t][1]), _mm256_add_ps(acc[t][2], acc[t][3])));
    }
}

/* Float LUT row n (fp16 widened exactly, or fp32) into lut[0, max(2**bits, 16)), 32-byte aligned. */
INLINE void f32_lut_row(const void *src_lut, int lut_f16, int64_t n, int bits, float *lut) {
    const int size = 1 << bits;
    if (lut_f16) {
        const uint16_t *src = (const uint16_t *)src_lut + n * size;
        int i = 0;
        for (; i + 8 <= size; i += 8) _mm256_store_ps(lut + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
        for (; i < size; i++) lut[i] = ap_half_to_float(src[i]);
    } else {
        const float *src = (const float *)src_lut + n * size;
        for (int i = 0; i < size; i++) lut[i] = src[i];
    }
    for (int i = size; i < 16; i++) lut[i] = 0.0f;  /* the 8-lane tables read 16 entries */
}

INLINE void avx2_rows_impl(const ap_gemv_args *a, int64_t row0, int64_t row1, int bits, int T) {
    float lut[1 << AP_MAX_BITS] __attribute__((aligned(32)));
    for (int64_t n = row0; n < row1; n++) {
        f32_lut_row(a->lut, a->lut_f16, n, bits, lut);
        const __m256 lo = _mm256_load_ps(lut), hi = _mm256_load_ps(lut + 8);
        const uint32_t *src[AP_MAX_BITS];
        for (int p = 0; p < bits; p++) src[p] = a->planes + p * a->plane_stride + n * a->words;
        __m256 acc[4];
        for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
        __m256 acc1[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int64_t w = 0; w < a->words; w++) {  /* per word: a row_codes buffer was measured 1.1-1.25x slower here */
            const __m256i codes = byte_codes32(src, w, bits);
            const float *x = a->x + 32 * w;
            for (int j = 0; j < 4; j++) {
                const __m256 wv = lookup8(_mm256_srli_epi32(codes, 8 * j), lut, lo, hi, bits);
                if (T == 1) {  /* four chains: one would wait on the FMA latency */
                    acc1[j] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + 8 * j), acc1[j]);
                } else {
                    for (int t = 0; t < T; t++)
                        acc[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + t * a->xstride + 8 * j), acc[t]);
                }
            }
        }
        if (T == 1) acc[0] = _mm256_add_ps(_mm256_add_ps(acc1[0], acc1[1]), _mm256_add_ps(acc1[2], acc1[3]));
        for (int t = 0; t < T; t++) a->y[t * a->ystride + n] = hsum_ps(acc[t]);
    }
}

/* The nibble path: 5..8 bits with an fp16 LUT. */
#define NIBBLE(B, a) ((B) >= 5 && (B) <= 8 && (a)->lut_f16)

/* bits and token count (1..4) as constants, so accumulators stay in registers */
#define AVX2_VARIANT(B, T)                                                          \
    AVX2 static void avx2_b##B##_t##T(const ap_gemv_args *a, int64_t r0, int64_t r1) { \
        if (NIBBLE(B, a)) avx2_rows_nibble(a, r0, r1, B >= 5 ? B : 5, T);             \
        else avx2_rows_impl(a, r0, r1, B, T);                                       \
    }
#define AVX2_ALL_T(B) AVX2_VARIANT(B, 1) AVX2_VARIANT(B, 2) AVX2_VARIANT(B, 3) AVX2_VARIANT(B, 4)
AVX2_ALL_T(1) AVX2_ALL_T(2) AVX2_ALL_T(3) AVX2_ALL_T(4) AVX2_ALL_T(5) AVX2_ALL_T(6) AVX2_ALL_T(7) AVX2_ALL_T(8)

#define AVX2_ROW(B) {avx2_b##B##_t1, avx2_b##B##_t2, avx2_b##B##_t3, avx2_b##B##_t4}
static const ap_gemv_fn AVX2_TABLE[AP_MAX_BITS][4] = {AVX2_ROW(1), AVX2_ROW(2), AVX2_ROW(3), AVX2_ROW(4),
                                                   AVX2_ROW(5), AVX2_ROW(6), AVX2_ROW(7), AVX2_ROW(8)};

int ap_avx2_x_order(const ap_gemv_args *a) { return NIBBLE(a->bits, a) ? AP_X_NATURAL : AP_X_PERM4_32; }

void ap_gemv_rows_avx2(const ap_gemv_args *a, int64_t row0, int64_t row1) {
    ap_gemv_token_groups(a, row0, row1, AVX2_TABLE[a->bits - 1]);
}

/* ---- dequantize (the tile GEMM's blocks): natural column order, fp32 or bf16 rows ----
 * uint8 LUTs: q looked up with `vpshufb` (u8_lookup32), widened, then lo + scale * q as a
 * rounded multiply and a rounded add (the scheme's ops: bit-equal to the portable kernel).
 * fp16 LUTs at 5..8 bits: the decode kernel's nibble path. Otherwise the row's fp32 LUT by
 * `vpermps` (<= 4 bits) or a gather (fp32 LUT, 5..8 bits). */

/* 8 fp32 values to out + k as fp32, or bf16 rounded to nearest even (ap_float_to_bf16). */
INLINE void store8(void *out, int64_t k, __m256 v, int bf16) {
    if (!bf16) {
        _mm256_storeu_ps((float *)out + k, v);
        return;
    }
    const __m256i u = _mm256_castps_si256(v), hi = _mm256_srli_epi32(u, 16);
    const __m256i even = _mm256_and_si256(hi, _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), even)), 16);
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
    const __m256i h = _mm256_blendv_epi8(r, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan);  /* nan: quietened */
    const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(h, h), 0x08);  /* 8 halves in the low lane */
    _mm_storeu_si128((__m128i *)((uint16_t *)out + k), _mm256_castsi256_si128(p));
}

/* Columns k0..k0+cols-1 (cols <= 32) of v[4] (columns 8j..8j+7 in v[j]) to out. */
INLINE void store32(void *out, int64_t k0, int64_t cols, const __m256 v[4], int bf16) {
    if (cols == 32) {
        for (int j = 0; j < 4; j++) store8(out, k0 + 8 * j, v[j], bf16);
        return;
    }
    float tmp[32];
    for (int j = 0; j < 4; j++) _mm256_storeu_ps(tmp + 8 * j, v[j]);
    for (int64_t i = 0; i < cols; i++) {
        if (bf16) ((uint16_t *)out)[k0 + i] = ap_float_to_bf16(tmp[i]);
        else ((float *)out)[k0 + i] = tmp[i];
    }
}

/* fp32 LUT values of 32 byte codes (natural order), columns 8j..8j+7 in v[j]. */
INLINE void f32_values32(__m256i codes, const float *lut, __m256 lo, __m256 hi, int bits, __m256 v[4]) {
    const __m128i c0 = _mm256_castsi256_si128(codes), c1 = _mm256_extracti128_si256(codes, 1);
    v[0] = lookup8(_mm256_cvtepu8_epi32(c0), lut, lo, hi, bits);
    v[1] = lookup8(_mm256_cvtepu8_epi32(_mm_srli_si128(c0, 8)), lut, lo, hi, bits);
    v[2] = lookup8(_mm256_cvtepu8_epi32(c1), lut, lo, hi, bits);
    v[3] = lookup8(_mm256_cvtepu8_epi32(_mm_srli_si128(c1, 8)), lut, lo, hi, bits);
}

INLINE void dequant_row(const ap_dequant_args *a, int64_t n, void *out, int bits) {
    const uint32_t *src[AP_MAX_BITS];
    for (int p = 0; p < bits; p++) src[p] = a->planes + p * a->plane_stride + n * a->words;
    const int64_t K = a->in_features;
    __m256 v[4];
    if (a->lut_u8) {
        __m256i tabs[1 << (AP_MAX_BITS - 4)];
        u8_tables((const uint8_t *)a->lut + (n << bits), bits, tabs);
        const __m256 lo = _mm256_set1_ps(a->lut_lo[n]), scale = _mm256_set1_ps(a->lut_scale[n]);
        for (int64_t w = 0; w < a->words; w++) {
            u8_widen(u8_lookup32(src, w, tabs, bits), v);
            for (int j = 0; j < 4; j++) v[j] = _mm256_add_ps(lo, _mm256_mul_ps(scale, v[j]));
            store32(out, 32 * w, K - 32 * w < 32 ? K - 32 * w : 32, v, a->out_bf16);
        }
    } else if (NIBBLE(bits, a)) {
        __m256i tabs[2 << (AP_MAX_BITS - 4)];
        nibble_tables((const uint16_t *)a->lut + (n << bits), bits >= 5 ? bits : 5, tabs);
        for (int64_t w = 0; w < a->words; w++) {
            nibble_lookup32(byte_codes32(src, w, bits), tabs, bits >= 5 ? bits : 5, v);
            store32(out, 32 * w, K - 32 * w < 32 ? K - 32 * w : 32, v, a->out_bf16);
        }
    } else {
        float lut[1 << AP_MAX_BITS] __attribute__((aligned(32)));
        f32_lut_row(a->lut, a->lut_f16, n, bits, lut);
        const __m256 lo = _mm256_load_ps(lut), hi = _mm256_load_ps(lut + 8);
        for (int64_t w = 0; w < a->words; w++) {
            f32_values32(byte_codes32(src, w, bits), lut, lo, hi, bits, v);
            store32(out, 32 * w, K - 32 * w < 32 ? K - 32 * w : 32, v, a->out_bf16);
        }
    }
}

/* bits as a constant, so the per-width lookups unroll */
#define DEQ_VARIANT(B)                                                                             \
    AVX2 static void deq_b##B(const ap_dequant_args *a, int64_t r0, int64_t r1, int64_t o) {      \
        const size_t esize = a->out_bf16 ? 2 : 4;                                                  \
        for (int64_t n = r0; n < r1; n++)                                                          \
            dequant_row(a, n, (char *)a->out + (size_t)((n - o) * a->in_features) * esize, B);     \
    }
DEQ_VARIANT(1) DEQ_VARIANT(2) DEQ_VARIANT(3) DEQ_VARIANT(4) DEQ_VARIANT(5) DEQ_VARIANT(6) DEQ_VARIANT(7) DEQ_VARIANT(8)

typedef void (*deq_fn)(const ap_dequant_args *, int64_t, int64_t, int64_t);
static const deq_fn DEQ_TABLE[AP_MAX_BITS] = {deq_b1, deq_b2, deq_b3, deq_b4, deq_b5, deq_b6, deq_b7, deq_b8};

void ap_dequant_rows_avx2(const ap_dequant_args *a, int64_t row0, int64_t row1, int64_t out_row0) {
    DEQ_TABLE[a->bits - 1](a, row0, row1, out_row0);
}

#endif /* __x86_64__ */
