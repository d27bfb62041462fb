"""Native CPU backend: wraps the C extension `anyprec.kernels._cpu` (built by setup.py).

Decode (up to FUSED_MAX_TOKENS rows of x): the fused bitplane-LUT kernel, reading only
the first `bits` planes, 8 tokens per call. Prefill (more rows): the layer is dequantized
in row tiles by the native kernel and multiplied with torch's dense matmul (fp32, or bf16
for bf16 x). LUTs are read as fp16 (the artifact's dtype: half the bytes, and the 6..8-bit
kernel needs it), fp32, or uint8 codes with a per-row lo and scale (anyprec.lutq: the
runtime's default form); pass them as held.
"""

from __future__ import annotations

import torch

from anyprec.kernels.bitplanes import words_per_row
from anyprec.kernels.reference import Lut, check_lut
from anyprec.lutq import QuantizedLut

try:
    from anyprec.kernels import _cpu
except ImportError as err:  # not built: the dispatcher falls back to the reference
    _cpu = None
    IMPORT_ERROR: ImportError | None = err
else:
    IMPORT_ERROR = None

DECODE_MAX_TOKENS = 8  # tokens per native gemv call
# Up to this many tokens the fused kernel (in calls of 8) beats dequantize + dense matmul
# (measured on 4096x4096: crossover ~32 tokens at 3 bits, ~12 at 8 bits).
FUSED_MAX_TOKENS = {bits: 32 if bits <= 5 else 8 for bits in range(1, 9)}
TILE_ELEMENTS = 1 << 21  # dequantized tile size for prefill (elements); measured best of 2^17..2^21
SMALL_LAYER_BYTES = 1 << 14  # layers below this many plane bytes run on one thread (64 KiB measured slower on SmolLM2)


def is_available() -> bool:
    """True if the native CPU library is built and loads."""
    return _cpu is not None


def _lib():
    if _cpu is None:
        raise RuntimeError(
            f"the native CPU kernels are not built ({IMPORT_ERROR}); reinstall the package "
            "(pip install -e .) with gcc available, or use backend='reference'"
        )
    return _cpu


def isa() -> str:
    """Kernel family in use: 'avx512', 'avx2' or 'portable'."""
    return _lib().isa()


def best_isa() -> str:
    """Best kernel family this CPU supports."""
    return _lib().best_isa()


def set_isa(name: str) -> None:
    """Force a kernel family ('avx512', 'avx2', 'portable') no better than the CPU's."""
    _lib().set_isa(name)


def read_bytes(buf: torch.Tensor, threads: int) -> int:
    """Stream-read a contiguous tensor (memory-bandwidth probe); returns a checksum."""
    return _lib().read_bytes(buf.data_ptr(), buf.numel() * buf.element_size(), threads)


def _check_planes(planes: torch.Tensor, bits: int, in_features: int) -> None:
    shape = planes.shape
    if planes.dtype != torch.int32 or len(shape) != 3 or planes.device.type != "cpu":
        raise ValueError(
            f"cpu backend needs int32[P, N, W] planes on the cpu, got {planes.dtype}"
            f"{list(shape)} on {planes.device}"
        )
    if not 1 <= bits <= min(8, shape[0]):
        raise ValueError(f"bits={bits} must be in 1..{min(8, shape[0])} for these planes")
    if shape[2] != (in_features + 31) // 32:
        raise ValueError(
            f"planes have {shape[2]} words per row but in_features={in_features} "
            f"needs {words_per_row(in_features)}"
        )
    if not planes.is_contiguous() and (planes.stride(2) != 1 or planes.stride(1) != shape[2]):
        raise ValueError("each plane must be row-contiguous; pass planes.contiguous()")


def _prepared_lut(lut: Lut, bits: int, n: int) -> Lut:
    """fp32 or fp16 contiguous lut (fp16 is read as is: half the bytes, exact widening), or a
    QuantizedLut with contiguous parts."""
    check_lut(lut, bits, n)
    if isinstance(lut, QuantizedLut):
        return QuantizedLut(*(t.contiguous() for t in lut))
    if lut.dtype not in (torch.float32, torch.float16):
        lut = lut.float()
    return lut.contiguous()


def _lut_args(lut: Lut) -> tuple[int, int, int, int]:
    """(table pointer, is fp16, lo pointer, scale pointer) of a prepared LUT, as the C calls take
    them (lo = scale = 0: a float LUT)."""
    if isinstance(lut, QuantizedLut):
        return lut.q.data_ptr(), 0, lut.lo.data_ptr(), lut.scale.data_ptr()
    return lut.data_ptr(), int(lut.dtype == torch.float16), 0, 0


def _threads(planes_bytes: int) -> int:
    return 1 if planes_bytes < SMALL_LAYER_BYTES else torch.get_num_threads()


class _Plan:
    """What decode plans share: the inputs one native call takes."""

    __slots__ = ()
    in_features: int
    max_inputs: int

    def accepts(self, x: torch.Tensor) -> bool:
        """True if `plan(x)` is valid: fp32, on the cpu, contiguous, K features, 1..8 rows."""
        return (
            x.dtype == torch.float32
            and x.is_cpu
            and x.is_contiguous()
            and x.shape[-1] == self.in_features
            and 0 < x.numel() <= self.max_inputs
        )


class DecodePlan(_Plan):
    """One layer at one bit-width, checked once, for repeated decode calls.

    `plan(x)` computes y f32[..., N] = x @ W_b.T for x f32[..., K] contiguous with 1..8
    rows, with no per-call shape checks: the runtime calls it for every decode step of every
    layer, where a few microseconds of Python per call add up (210 calls per token on
    SmolLM2). It holds `planes` and `lut`, so the raw pointers it passes stay valid; a
    caller whose tensors are replaced (`module.to(...)`) makes a new plan.
    """

    __slots__ = ("planes", "lut", "out_features", "in_features", "max_inputs", "_lut", "_head", "_tail",
                 "_plane_bytes")

    def __init__(self, planes: torch.Tensor, lut: Lut, bits: int, in_features: int) -> None:
        _check_planes(planes, bits, in_features)
        self.planes, self.lut = planes, lut
        self._lut = _prepared_lut(lut, bits, planes.shape[1])  # lut itself unless converted
        n, w = planes.shape[1], planes.shape[2]
        self.out_features, self.in_features = n, in_features
        self.max_inputs = DECODE_MAX_TOKENS * in_features  # largest x.numel() one call takes
        table, f16, lo, scale = _lut_args(self._lut)
        self._head = (planes.data_ptr(), planes.stride(0), n, w, in_features, table, f16, bits)
        self._tail = (lo, scale)
        self._plane_bytes = bits * n * w * 4

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """y f32[..., N] for x f32[..., K] contiguous with at most DECODE_MAX_TOKENS rows."""
        y = torch.empty(*x.shape[:-1], self.out_features, dtype=torch.float32)
        _cpu.gemv(*self._head, x.data_ptr(), x.numel() // self.in_features, self.in_features,
                  y.data_ptr(), self.out_features, _threads(self._plane_bytes), *self._tail)
        return y


class HalfDecodePlan(_Plan):
    """A dense layer whose weight is stored in float16, for decode calls.

    `plan(x)` computes y f32[..., N] = x @ float(W).T for x f32[..., K] contiguous with
    1..8 rows: weights are widened exactly and accumulated in fp32, so the result is the
    fp32 layer's (up to summation order) for half the bytes read. Used for the tied
    embedding / lm_head, which the artifact keeps dense in fp16.
    """

    __slots__ = ("weight", "out_features", "in_features", "max_inputs")

    def __init__(self, weight: torch.Tensor) -> None:
        if weight.dtype != torch.float16 or weight.dim() != 2 or weight.device.type != "cpu":
            raise ValueError(f"needs a float16[N, K] weight on the cpu, got {weight.dtype}{list(weight.shape)} "
                             f"on {weight.device}")
        self.weight = weight.contiguous()
        self.out_features, self.in_features = weight.shape
        self.max_inputs = DECODE_MAX_TOKENS * self.in_features

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, k = self.out_features, self.in_features
        y = torch.empty(*x.shape[:-1], n, dtype=torch.float32)
        _cpu.half_gemv(self.weight.data_ptr(), n, k, x.data_ptr(), x.numel() // k, k, y.data_ptr(), n,
                       _threads(n * k * 2))
        return y


class Int8DecodePlan(_Plan):
    """A dense layer held as per-row int8 (q int8 [N, K], scale float32 [N]), for decode calls.

    `plan(x)` computes y f32[..., N] = x @ (scale * q).T for x f32[..., K] contiguous with
    1..8 rows on the native int8 kernel with fp32 activations (the engine's "int8w" head).
    """

    __slots__ = ("q", "scale", "out_features", "in_features", "max_inputs")

    def __init__(self, q: torch.Tensor, scale: torch.Tensor) -> None:
        if q.dtype != torch.int8 or q.dim() != 2 or q.device.type != "cpu" or scale.shape != q.shape[:1]:
            raise ValueError(f"needs int8[N, K] codes and float32[N] scales on the cpu, got {q.dtype}{list(q.shape)}"
                             f" and {list(scale.shape)}")
        self.q, self.scale = q.contiguous(), scale.float().contiguous()
        self.out_features, self.in_features = q.shape
        self.max_inputs = DECODE_MAX_TOKENS * self.in_features

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, k = self.out_features, self.in_features
        y = torch.empty(*x.shape[:-1], n, dtype=torch.float32)
        _cpu.int8_gemv(self.q.data_ptr(), self.scale.data_ptr(), n, k, x.data_ptr(), x.numel() // k, k,
                       y.data_ptr(), n, 0, _threads(n * k))
        return y


def _dequant_rows(planes, lut, bits, in_features, row0, row1, out: torch.Tensor) -> None:
    n, w = planes.shape[1], planes.shape[2]
    table, f16, lo, scale = _lut_args(lut)
    _lib().dequant(
        planes.data_ptr(), planes.stride(0), n, w, in_features, table, f16, bits,
        row0, row1, out.data_ptr(), int(out.dtype == torch.bfloat16),
        _threads(bits * (row1 - row0) * w * 4), lo, scale,
    )


def dequantize_cpu(
    planes: torch.Tensor, lut: Lut, bits: int, in_features: int, dtype: torch.dtype
) -> torch.Tensor:
    """Dense weight [N, K] in `dtype` (computed in fp32 or bf16, then cast)."""
    _check_planes(planes, bits, in_features)
    lut = _prepared_lut(lut, bits, planes.shape[1])
    kernel_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
    out = torch.empty((planes.shape[1], in_features), dtype=kernel_dtype)
    _dequant_rows(planes, lut, bits, in_features, 0, planes.shape[1], out)
    return out.to(dtype)


def _prefill(x2: torch.Tensor, planes, lut, bits: int, in_features: int) -> torch.Tensor:
    """y[T, N] = x2 @ W.T through dequantized row tiles and torch's dense matmul."""
    n = planes.shape[1]
    tile_rows = max(16, TILE_ELEMENTS // max(in_features, 1))
    tile = torch.empty((min(tile_rows, n), in_features), dtype=x2.dtype)
    y = torch.empty((x2.shape[0], n), dtype=x2.dtype)
    for row0 in range(0, n, tile_rows):
        row1 = min(n, row0 + tile_rows)
        part = tile[: row1 - row0]
        _dequant_rows(planes, lut, bits, in_features, row0, row1, part)
        torch.matmul(x2, part.T, out=y[:, row0:row1])
    return y


def matmul_cpu(
    x: torch.Tensor,
    planes: torch.Tensor,
    lut: Lut,
    bits: int,
    in_features: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y[..., N] = x[..., K] @ W_b.T + bias on the native kernels; result in x's dtype."""
    if x.shape[-1] != in_features:
        raise ValueError(f"x has {x.shape[-1]} features in its last dim but the layer takes {in_features}")
    _check_planes(planes, bits, in_features)
    lut = _prepared_lut(lut, bits, planes.shape[1])
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_features)
    tokens = x2.shape[0]
    if 0 < tokens <= FUSED_MAX_TOKENS[bits]:
        xf = x2.float().contiguous()
        plan = DecodePlan(planes, lut, bits, in_features)
        parts = [plan(xf[t : t + DECODE_MAX_TOKENS]) for t in range(0, tokens, DECODE_MAX_TOKENS)]
        y = parts[0] if len(parts) == 1 else torch.cat(parts)
    else:
        work = torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32
        y = _prefill(x2.to(work).contiguous(), planes, lut, bits, in_features)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.to(x.dtype).reshape(*lead, planes.shape[1])


ACT_GROUP = 32  # columns per int8 activation scale in `gemv_u8` (llama.cpp's Q8 block)


def gemv_u8(
    planes: torch.Tensor,
    q: torch.Tensor,
    lo: torch.Tensor,
    scale: torch.Tensor,
    x: torch.Tensor,
    bits: int,
    acts: str = "fp32",
    act_group: int = ACT_GROUP,
) -> torch.Tensor:
    """y f32[T, N] = x @ (lo + scale * q[code]).T on the AVX2 uint8-LUT kernel.

    planes int32[P, N, W]; q uint8[N, 2**bits], lo and scale f32[N] (anyprec/lutq.py);
    x f32[T, K]. acts="int8" quantizes x per `act_group` columns (a multiple of 32, or >= K
    for one scale per token) to symmetric int8 and sums q * x8 in int32 (ap_lut8_avx2.c).
    """
    if acts not in ("fp32", "int8"):
        raise ValueError(f"acts={acts!r} must be 'fp32' or 'int8'")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [tokens, in_features], got shape {tuple(x.shape)}")
    k = x.shape[1]
    _check_planes(planes, bits, k)
    n = planes.shape[1]
    if q.dtype != torch.uint8 or tuple(q.shape) != (n, 1 << bits):
        raise ValueError(f"q must be uint8[{n}, {1 << bits}] for bits={bits}, got {q.dtype}{list(q.shape)}")
    for name, t in (("lo", lo), ("scale", scale)):
        if t.dtype != torch.float32 or tuple(t.shape) != (n,):
            raise ValueError(f"{name} must be float32[{n}], got {t.dtype}{list(t.shape)}")
    q, lo, scale = q.contiguous(), lo.contiguous(), scale.contiguous()
    x = x.float().contiguous()
    y = torch.empty((x.shape[0], n), dtype=torch.float32)
    group = act_group if acts == "int8" else 0
    threads = _threads(bits * n * planes.shape[2] * 4)
    for t0 in range(0, x.shape[0], DECODE_MAX_TOKENS):
        t = min(DECODE_MAX_TOKENS, x.shape[0] - t0)
        _lib().gemv_u8(planes.data_ptr(), planes.stride(0), n, planes.shape[2], k, q.data_ptr(), lo.data_ptr(),
                       scale.data_ptr(), bits, x[t0].data_ptr(), t, k, y[t0].data_ptr(), n, group, threads)
    return y
