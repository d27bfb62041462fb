"""Triton GPU kernels: decode GEMV reading b bitplanes, and a dequantize kernel for prefill.

Follows the reference design (docs/ALGORITHM.md section 6): the decode kernel rebuilds b-bit
codes from the first b planes with bit operations, looks centroids up in the row's LUT
and accumulates; prefill dequantizes the layer at b bits and calls a dense matmul. A uint8
LUT (anyprec.lutq) is widened in the kernel, lo + scale * q per entry read (U8=True).
Without a GPU the kernels run only under TRITON_INTERPRET=1 (set before triton is
imported), which the tests use on small shapes. Importing this module needs triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from anyprec.kernels.bitplanes import words_per_row
from anyprec.kernels.reference import Lut, check_lut
from anyprec.lutq import QuantizedLut

DECODE_MAX_TOKENS = 8
BLOCK_N = 16
BLOCK_K = 64


@triton.jit
def _codes(planes_ptr, plane_stride, words, rows, cols, row_mask, col_mask, BITS: tl.constexpr):
    """b-bit codes [BLOCK_N, BLOCK_K] of `rows` x `cols` from the first BITS planes."""
    word = cols // 32
    shift = cols % 32
    mask = row_mask[:, None] & col_mask[None, :]
    code = tl.zeros((rows.shape[0], cols.shape[0]), dtype=tl.int32)
    for p in tl.static_range(BITS):
        ptrs = planes_ptr + p * plane_stride + rows[:, None] * words + word[None, :]
        w = tl.load(ptrs, mask=mask, other=0)
        code = code | (((w >> shift[None, :]) & 1) << (BITS - 1 - p))
    return code


@triton.jit
def _lut_load(lut_ptr, lo_ptr, scale_ptr, rows, code, mask, BITS: tl.constexpr, U8: tl.constexpr):
    """fp32 LUT entries [BLOCK_N, BLOCK_K] of `rows` at `code` (U8: lo + scale * q)."""
    w = tl.load(lut_ptr + rows[:, None] * (1 << BITS) + code, mask=mask, other=0).to(tl.float32)
    if U8:
        row_mask = tl.max(mask.to(tl.int32), axis=1) > 0
        lo = tl.load(lo_ptr + rows, mask=row_mask, other=0.0)
        scale = tl.load(scale_ptr + rows, mask=row_mask, other=0.0)
        w = lo[:, None] + scale[:, None] * w
    return w


@triton.jit
def gemv_kernel(x_ptr, planes_ptr, lut_ptr, lo_ptr, scale_ptr, y_ptr, n_rows, in_features, words, plane_stride,
                x_stride, y_stride, BITS: tl.constexpr, U8: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr):
    """y[t, n] = sum_k x[t, k] * lut[n, code_b(n, k)]; program (row block, token)."""
    pid_n = tl.program_id(0)
    t = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, in_features, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        col_mask = cols < in_features
        code = _codes(planes_ptr, plane_stride, words, rows, cols, row_mask, col_mask, BITS)
        w = _lut_load(lut_ptr, lo_ptr, scale_ptr, rows, code, row_mask[:, None] & col_mask[None, :], BITS, U8)
        x = tl.load(x_ptr + t * x_stride + cols, mask=col_mask, other=0.0).to(tl.float32)
        acc += tl.sum(w * x[None, :], axis=1)
    tl.store(y_ptr + t * y_stride + rows, acc, mask=row_mask)


@triton.jit
def dequant_kernel(planes_ptr, lut_ptr, lo_ptr, scale_ptr, out_ptr, n_rows, in_features, words, plane_stride,
                   BITS: tl.constexpr, U8: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[n, k] = lut[n, code_b(n, k)] for one [BLOCK_N, BLOCK_K] tile."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_mask = rows < n_rows
    col_mask = cols < in_features
    mask = row_mask[:, None] & col_mask[None, :]
    code = _codes(planes_ptr, plane_stride, words, rows, cols, row_mask, col_mask, BITS)
    w = _lut_load(lut_ptr, lo_ptr, scale_ptr, rows, code, mask, BITS, U8)
    out_ptrs = out_ptr + rows[:, None] * in_features + cols[None, :]
    tl.store(out_ptrs, w.to(out_ptr.dtype.element_ty), mask=mask)


def _check(planes: torch.Tensor, lut: Lut, bits: int, in_features: int) -> Lut:
    if planes.dtype != torch.int32 or planes.dim() != 3 or planes.shape[0] < bits:
        raise ValueError(f"planes must be int32[P >= {bits}, N, W], got {planes.dtype}{list(planes.shape)}")
    if planes.shape[2] != words_per_row(in_features):
        raise ValueError(f"planes have {planes.shape[2]} words per row; in_features={in_features} needs {words_per_row(in_features)}")
    if planes.stride(2) != 1 or planes.stride(1) != planes.shape[2]:
        raise ValueError("each plane must be row-contiguous; pass planes.contiguous()")
    check_lut(lut, bits, planes.shape[1])
    if isinstance(lut, QuantizedLut):
        return QuantizedLut(*(t.contiguous() for t in lut))
    return lut.contiguous()


def _lut_args(lut: Lut, dtype: torch.dtype | None = None) -> dict:
    """Kernel arguments of a checked LUT: a float one (cast to `dtype` when given) or uint8
    codes with lo and scale (the float path passes its table again as unused lo / scale)."""
    if isinstance(lut, QuantizedLut):
        return {"lut_ptr": lut.q, "lo_ptr": lut.lo, "scale_ptr": lut.scale, "U8": True}
    table = lut if dtype is None else lut.to(dtype)
    return {"lut_ptr": table, "lo_ptr": table, "scale_ptr": table, "U8": False}


def dequantize_triton(planes: torch.Tensor, lut: Lut, bits: int, in_features: int,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense weight [N, K] in `dtype` (float LUT values cast once to `dtype`; uint8 ones
    widened to fp32 in the kernel, then cast)."""
    lut = _check(planes, lut, bits, in_features)
    n = planes.shape[1]
    out = torch.empty((n, in_features), dtype=dtype, device=planes.device)
    grid = (triton.cdiv(n, BLOCK_N), triton.cdiv(in_features, BLOCK_K))
    dequant_kernel[grid](planes_ptr=planes, out_ptr=out, n_rows=n, in_features=in_features, words=planes.shape[2],
                         plane_stride=planes.stride(0), BITS=bits, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
                         **_lut_args(lut, dtype))
    return out


def gemv_triton(x2: torch.Tensor, planes: torch.Tensor, lut: Lut, bits: int, in_features: int) -> torch.Tensor:
    """y f32[T, N] for x2 [T <= 8, K] contiguous."""
    n = planes.shape[1]
    y = torch.empty((x2.shape[0], n), dtype=torch.float32, device=x2.device)
    grid = (triton.cdiv(n, BLOCK_N), x2.shape[0])
    gemv_kernel[grid](x_ptr=x2, planes_ptr=planes, y_ptr=y, n_rows=n, in_features=in_features,
                      words=planes.shape[2], plane_stride=planes.stride(0), x_stride=x2.stride(0),
                      y_stride=y.stride(0), BITS=bits, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, **_lut_args(lut))
    return y


def matmul_triton(x: torch.Tensor, planes: torch.Tensor, lut: Lut, bits: int, in_features: int,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """y[..., N] = x[..., K] @ W_b.T + bias; decode kernel for <= 8 rows, else dequant + matmul."""
    if x.shape[-1] != in_features:
        raise ValueError(f"x has {x.shape[-1]} features in its last dim but the layer takes {in_features}")
    lut = _check(planes, lut, bits, in_features)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_features).contiguous()
    if 0 < x2.shape[0] <= DECODE_MAX_TOKENS:
        y = gemv_triton(x2, planes, lut, bits, in_features).to(x.dtype)
    else:
        y = x2 @ dequantize_triton(planes, lut, bits, in_features, x.dtype).T
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.reshape(*lead, planes.shape[1])
