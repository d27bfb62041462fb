"""The single dispatch point: pick a backend and run matmul / dequantize with it.

Rule: explicit `backend` argument > env `ANYPREC_BACKEND` > the tensor's device
(cuda -> triton, cpu -> native cpu if the extension is built, else reference).
`backend=None` applies the rule (and reads the environment) at every call; a caller that
runs one layer many times resolves once with `resolve_backend` and passes the Backend, as
the runtime does per layer and device (at load and on `.to()`).
The Triton backend is imported lazily and the native one tolerates a missing build, so
`anyprec.kernels` imports without triton installed and without the native library built.
"""

from __future__ import annotations

import os
from enum import Enum

import torch

from anyprec.kernels import cpu
from anyprec.kernels.reference import Lut, dequantize_reference, matmul_reference

ENV_BACKEND = "ANYPREC_BACKEND"


class Backend(str, Enum):
    """Kernel implementations of the bitplane matmul."""

    REFERENCE = "reference"
    CPU = "cpu"
    TRITON = "triton"


def _parse_backend(value: str | Backend, source: str) -> Backend:
    try:
        return Backend(value)
    except ValueError:
        names = ", ".join(b.value for b in Backend)
        raise ValueError(f"unknown kernel backend {value!r} from {source}; use one of: {names}") from None


def native_available() -> bool:
    """True if the native CPU library is built and loads on this machine."""
    return cpu.is_available()


def resolve_backend(device: torch.device, backend: str | Backend | None = None) -> Backend:
    """Backend for tensors on `device`: explicit argument > env ANYPREC_BACKEND > device."""
    if backend is not None:
        return backend if isinstance(backend, Backend) else _parse_backend(backend, "the backend argument")
    env = os.environ.get(ENV_BACKEND)
    if env:
        return _parse_backend(env.strip().lower(), f"env {ENV_BACKEND}")
    if device.type == "cuda":
        return Backend.TRITON
    if device.type == "cpu" and native_available():
        return Backend.CPU
    return Backend.REFERENCE


def matmul(
    x: torch.Tensor,
    planes: torch.Tensor,
    lut: Lut,
    bits: int,
    in_features: int,
    bias: torch.Tensor | None = None,
    backend: str | Backend | None = None,
) -> torch.Tensor:
    """y[..., N] = x[..., K] @ W_b.T + bias, W_b[n, k] = lut[n, code_b(n, k)].

    planes: int32[P >= bits, N, ceil(K/32)] (format v1); lut: float[N, 2**bits] or a
    QuantizedLut (uint8 codes + per-row lo, scale: W[n, k] = lo[n] + scale[n] * q[n, code]).
    The result has x's dtype.
    """
    chosen = resolve_backend(x.device, backend)
    if chosen is Backend.REFERENCE:
        return matmul_reference(x, planes, lut, bits, in_features, bias)
    if chosen is Backend.CPU:
        return cpu.matmul_cpu(x, planes, lut, bits, in_features, bias)
    from anyprec.kernels import triton_kernels

    return triton_kernels.matmul_triton(x, planes, lut, bits, in_features, bias)


def decode_plan(
    planes: torch.Tensor,
    lut: Lut,
    bits: int,
    in_features: int,
    backend: str | Backend | None = None,
) -> cpu.DecodePlan | None:
    """A checked-once native decode call for this layer and bit-width when the chosen
    backend is the native CPU one, else None (then call `matmul`). See cpu.DecodePlan."""
    if resolve_backend(planes.device, backend) is not Backend.CPU:
        return None
    return cpu.DecodePlan(planes, lut, bits, in_features)


def half_decode_plan(weight: torch.Tensor, backend: str | Backend | None = None) -> cpu.HalfDecodePlan | None:
    """A native decode call for a dense float16-stored weight [N, K] when the chosen backend
    is the native CPU one, else None (then use the fp32 weight). See cpu.HalfDecodePlan."""
    if resolve_backend(weight.device, backend) is not Backend.CPU:
        return None
    return cpu.HalfDecodePlan(weight)


def int8_decode_plan(q: torch.Tensor, scale: torch.Tensor,
                     backend: str | Backend | None = None) -> cpu.Int8DecodePlan | None:
    """A native decode call for a per-row int8 weight (q [N, K], scale [N]) when the chosen
    backend is the native CPU one, else None. See cpu.Int8DecodePlan."""
    if resolve_backend(q.device, backend) is not Backend.CPU:
        return None
    return cpu.Int8DecodePlan(q, scale)


def dequantize(
    planes: torch.Tensor,
    lut: Lut,
    bits: int,
    in_features: int,
    dtype: torch.dtype = torch.float32,
    backend: str | Backend | None = None,
) -> torch.Tensor:
    """Dense weight [N, K] in `dtype` from the first `bits` planes and lut (as in `matmul`)."""
    chosen = resolve_backend(planes.device, backend)
    if chosen is Backend.REFERENCE:
        return dequantize_reference(planes, lut, bits, in_features, dtype)
    if chosen is Backend.CPU:
        return cpu.dequantize_cpu(planes, lut, bits, in_features, dtype)
    from anyprec.kernels import triton_kernels

    return triton_kernels.dequantize_triton(planes, lut, bits, in_features, dtype)
