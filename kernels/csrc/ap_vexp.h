/* Vectorised expf for the engine's SiLU and softmax, bit-identical to glibc's expf.
 *
 * glibc (2.27+) computes expf in double: x * 32 / ln 2 = k + r (round to nearest), 2^(k/32)
 * from a 32-entry table, and a degree-3 polynomial in r. ap_vexp.c runs the same steps
 * on 4 doubles per AVX2 register with the same table and constants; over every float with
 * |x| < 88 (2.24e9 values) it returned expf's bits exactly (checked exhaustively on the
 * development machine). Lanes with |x| >= 88 or NaN (overflow, underflow, special values)
 * go to expf itself, so the engine's results do not change.
 */
#ifndef AP_VEXP_H
#define AP_VEXP_H

#include <stdint.h>

/* v[i] = expf(v[i] - shift) for i < n (AVX2/FMA CPUs only). */
void ap_exp_shifted_avx2(float *v, int64_t n, float shift);

/* g[i] = g[i] / (1 + expf(-g[i])) * u[i] for i < n (AVX2/FMA CPUs only). */
void ap_silu_mul_avx2(float *g, const float *u, int64_t n);

#endif
