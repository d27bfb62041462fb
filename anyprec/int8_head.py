"""The token embedding and output head held as per-row int8 (the lean load, luts="u8").

The artifact stores them dense in fp16; loaded as fp32 they were the largest tensors of a
small model (SmolLM2-135M: 113 MB fp32 + a 57 MB fp16 decode copy). Here one int8 table
q [V, E] with a float32 scale [V] (`anyprec.engine.head.quantize_head_int8`, the one
definition: w ~= scale * q) is all that stays resident: the embedding widens the rows it
looks up, the head multiplies through the native int8 kernel for decode calls and through
bounded fp32 chunks otherwise. A tied model shares one table between both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from anyprec.kernels import Backend, int8_decode_plan, resolve_backend

HEAD_CHUNK_ROWS = 4096  # vocab rows widened at a time: 9.4 MB of fp32 for a 576-wide head


class Int8Table(nn.Module):
    """Owns q int8 [V, E] and scale float32 [V] (buffers); the embedding and head read them."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("q", q.contiguous())
        self.register_buffer("scale", scale.float().contiguous())

    def rows(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Widened rows [*ids.shape, E] in `dtype` (computed in fp32: scale * q)."""
        return (self.q[ids].float() * self.scale[ids].unsqueeze(-1)).to(dtype)


class Int8Embedding(nn.Module):
    """nn.Embedding's forward over an Int8Table: ids int64 [...] -> [..., E] in `dtype`."""

    def __init__(self, table: Int8Table, dtype: torch.dtype, padding_idx: int | None = None) -> None:
        super().__init__()
        self.table = table
        self.dtype = dtype
        self.padding_idx = padding_idx
        self.num_embeddings, self.embedding_dim = table.q.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table.rows(ids, self.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows widened to {self.dtype}"


class Int8Head(nn.Module):
    """The output head (lm_head, no bias) over an Int8Table: y = x @ (scale * q).T.

    Decode calls (fp32, contiguous, <= 8 rows on the native CPU backend) run the native
    int8 kernel with fp32 activations; anything else widens HEAD_CHUNK_ROWS rows at a time,
    so no full fp32 copy of the head ever exists.
    """

    def __init__(self, table: Int8Table) -> None:
        super().__init__()
        self.table = table
        self.out_features, self.in_features = table.q.shape
        self.bias = None
        self._resolve()

    def _resolve(self) -> None:
        """The native decode plan for the table's device, at load and after `.to()`."""
        q = self.table.q
        self.backend: Backend = resolve_backend(q.device)
        self._plan: Any = int8_decode_plan(q, self.table.scale, self.backend) if q.device.type == "cpu" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self._plan
        if plan is not None and plan.accepts(x):
            return plan(x)
        q, scale = self.table.q, self.table.scale
        y = torch.empty(*x.shape[:-1], self.out_features, dtype=x.dtype, device=x.device)
        for r0 in range(0, self.out_features, HEAD_CHUNK_ROWS):
            r1 = min(self.out_features, r0 + HEAD_CHUNK_ROWS)
            w = (q[r0:r1].float() * scale[r0:r1, None]).to(x.dtype)
            y[..., r0:r1] = x @ w.T
        return y

    def _apply(self, fn: Any, recurse: bool = True) -> "Int8Head":
        super()._apply(fn, recurse)
        self._resolve()
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight int8 per row"


def install_int8_head(model: nn.Module, dtype: torch.dtype) -> None:
    """Replace the output head (and a tied input embedding) with int8 modules in place.

    The head's weight is quantized once (`quantize_head_int8` of the weight as loaded, which
    widened the artifact's fp16 values exactly); a tied embedding shares the same table, an
    untied one stays as loaded. The float weights are dropped with the modules they belonged to.
    """
    from anyprec.engine.head import quantize_head_int8  # anyprec.engine imports the runtime

    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if not isinstance(head, nn.Linear) or head.bias is not None:
        return
    tied = isinstance(embed, nn.Embedding) and embed.weight is head.weight
    table = Int8Table(*quantize_head_int8(head.weight))
    model.set_output_embeddings(Int8Head(table))
    if tied:
        model.set_input_embeddings(Int8Embedding(table, dtype, embed.padding_idx))
