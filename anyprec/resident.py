"""Bytes in memory of a loaded artifact, in the form `load_anyprec(luts=...)` holds it.

The one place that counts them (`anyprec info`, plans' byte budgets and the frontier use it):
- "u8" (the default load): per quantized module and width b, the b bitplanes (int32 words),
  the LUT as uint8 codes [N, 2**b] and a float32 lo and scale per row (8 B); the output head
  (and, tied, the embedding) as int8 [V, E] + a float32 scale per row; every other dense
  tensor as the fp32 load holds it (4 B per element; norms and biases, < 1% of a model).
- "fp16": the bitplanes, the fp16 LUTs [N, 2**b] and the dense tensors as the artifact
  stores them (fp16), the figures published before the uint8 form existed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LUT_FORMS = ("u8", "fp16")
DEFAULT_LUTS = "u8"
HEAD_KEY = "lm_head.weight"  # the output head of every causal LM transformers builds for us
_DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I8": 1, "U8": 1, "I32": 4, "I64": 8}


def check_form(luts: str) -> str:
    """`luts` if it names a resident form, else a one-line error naming the choices."""
    if luts not in LUT_FORMS:
        raise ValueError(f"luts={luts!r} is not one of {', '.join(LUT_FORMS)} "
                         "(u8: uint8 LUTs + int8 head, the default; fp16: the artifact's exact tables)")
    return luts


def lut_bytes(rows: int, bits: int, luts: str) -> int:
    """Bytes of one module's LUT at `bits` for `rows` output rows."""
    return rows * ((1 << bits) + 8) if check_form(luts) == "u8" else rows * (1 << bits) * 2


def module_bytes(out_features: int, in_features: int, bits: int, luts: str) -> int:
    """Bytes of one quantized module at `bits`: b planes of int32 words + its LUT."""
    return out_features * ((in_features + 31) // 32) * 4 * bits + lut_bytes(out_features, bits, luts)


def dense_bytes(header: Mapping[str, Mapping[str, Any]], manifest: Mapping[str, Any], luts: str) -> int:
    """Bytes of the dense tensors (`header`: the dense file's safetensors header) in form `luts`.

    u8: the head's stored tensor (the tied source, or HEAD_KEY itself) as int8 + 4 B per row,
    the rest at 4 B per element; biases of quantized modules count here too (they are stored
    dense). fp16: every tensor as stored.
    """
    def stored(entry: Mapping[str, Any]) -> int:
        start, end = entry["data_offsets"]
        return end - start

    if check_form(luts) == "fp16":
        return sum(stored(e) for e in header.values())
    head = manifest.get("tied", {}).get(HEAD_KEY, HEAD_KEY)
    total = 0
    for name, entry in header.items():
        count = stored(entry) // _DTYPE_BYTES[entry["dtype"]]
        if name == head and len(entry["shape"]) == 2:
            total += count + 4 * entry["shape"][0]
        else:
            total += 4 * count
    return total
