"""The output head as the native engine reads it: fp16 (exact) or a per-row int8 copy.

`quantize_head_int8` is the one function that makes the int8 copy (deterministic: per-row
symmetric, scale = max|w| / 127, round half to even). `head_logits` runs the native head
kernel on fp32 hidden states [T, E] for any T (8 tokens per call), so perplexity can be
measured with exactly the numbers the engine produces.
"""

from __future__ import annotations

import torch

from anyprec.kernels import cpu

HEAD_MODES = ("fp16", "int8w", "int8")  # index = the C enum AP_HEAD_* (ap_engine.h)
# fp16: the stored head, exact. int8w: int8 weights x fp32 activations.
# int8: int8 weights x int8 activations (per token, symmetric), int32 sums.
DEFAULT_HEAD = "int8w"  # chosen by `anyprec bench head`: +0.02..0.26% perplexity, half the head bytes (docs/ENGINE.md)


def quantize_head_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 [V, E], float32 scale [V]) with weight[n] ~= scale[n] * q[n]; weight [V, E] any
    float dtype (the fp16 head is widened exactly). Rows of zeros get scale 0."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / safe[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def check_mode(mode: str) -> str:
    if mode not in HEAD_MODES:
        raise ValueError(f"head mode {mode!r} is not one of {', '.join(HEAD_MODES)}")
    return mode


@torch.inference_mode()
def head_logits(hidden: torch.Tensor, mode: str, weight_f16: torch.Tensor | None = None,
                q: torch.Tensor | None = None, scale: torch.Tensor | None = None, threads: int = 0) -> torch.Tensor:
    """Logits float32 [T, V] of hidden float32 [T, E] through the native head kernel of `mode`
    (fp16 needs weight_f16; int8w / int8 need q, scale)."""
    lib = cpu._lib()
    x = hidden.detach().float().contiguous()
    T, E = x.shape
    threads = threads or torch.get_num_threads()
    V = weight_f16.shape[0] if check_mode(mode) == "fp16" else q.shape[0]
    out = torch.empty(T, V, dtype=torch.float32)
    for t0 in range(0, T, 8):
        t = min(8, T - t0)
        xp, yp = x[t0].data_ptr(), out[t0].data_ptr()
        if mode == "fp16":
            lib.half_gemv(weight_f16.data_ptr(), V, E, xp, t, E, yp, V, threads)
        else:
            lib.int8_gemv(q.data_ptr(), scale.data_ptr(), V, E, xp, t, E, yp, V, int(mode == "int8"), threads)
    return out


@torch.inference_mode()
def head_perplexity(apm, bits: int, ids: torch.Tensor, window: int = 2048,
                    modes: tuple[str, ...] = HEAD_MODES, threads: int = 0) -> dict[str, float]:
    """{mode: perplexity} of `ids` (int64[T]) at `bits`, the layers run once per window (the
    transformers forward) and every head mode applied to the same final hidden states
    (windows as in anyprec.perplexity: non-overlapping, exp(mean NLL))."""
    from anyprec.perplexity import context_window

    model = apm.model
    weight = getattr(model.lm_head, "weight_f16", None)  # a luts="fp16" load's exact head
    if weight is None and "fp16" in modes:
        raise ValueError("head mode fp16 needs the model loaded with luts='fp16' (this load holds the head in int8)")
    table = getattr(model.lm_head, "table", None)  # a luts="u8" load's int8 head: used as is
    if table is not None:
        q, scale = table.q, table.scale
    else:
        q, scale = quantize_head_int8(weight) if set(modes) - {"fp16"} else (None, None)
    window = context_window(model, window)
    nll = {m: 0.0 for m in modes}
    count = 0
    with apm.precision(bits):
        for start in range(0, ids.numel(), window):
            chunk = ids[start:start + window]
            if chunk.numel() < 2:
                continue
            hidden = model.model(chunk.unsqueeze(0)).last_hidden_state[0, :-1]
            for m in modes:
                logits = head_logits(hidden, m, weight, q, scale, threads)
                nll[m] += float(torch.nn.functional.cross_entropy(logits, chunk[1:], reduction="sum"))
            count += chunk.numel() - 1
    return {m: float(torch.tensor(v / count).exp()) for m, v in nll.items()}
