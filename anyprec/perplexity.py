"""Perplexity as the paper measures it: non-overlapping windows, exp(mean token NLL)."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm


def tokenize_text(tokenizer: Any, text: str) -> torch.Tensor:
    """The whole text as one int64[T] token stream (no special tokens added)."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.int64)


def heldout_streams(tokenizer: Any, corpora: list[str], eval_fraction: float, split_seed: int,
                    max_tokens: int | None = None) -> dict[str, torch.Tensor]:
    """{corpus: int64[T]} held-out token streams (the calibration split never enters), each cut
    to its first max_tokens tokens (None: all)."""
    from anyprec.calibration import heldout_text

    streams = {}
    for corpus in corpora:
        ids = tokenize_text(tokenizer, heldout_text(corpus, eval_fraction, split_seed))
        streams[corpus] = ids[:max_tokens] if max_tokens else ids
    return streams


def context_window(model: torch.nn.Module, requested: int) -> int:
    """min(requested, the model's context length)."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return min(requested, limit) if limit else requested


@torch.inference_mode()
def perplexity(model: torch.nn.Module, ids: torch.Tensor, window: int = 2048, progress: bool = True,
               desc: str = "perplexity") -> float:
    """exp(mean NLL) over non-overlapping windows of `ids` (int64[T]).

    Each window of length L scores its L-1 next-token predictions; a final window shorter
    than 2 tokens is dropped. The window is capped at the model's context length.
    """
    window = context_window(model, window)
    if ids.ndim != 1 or ids.numel() < 2:
        raise ValueError(f"need a 1-D token stream of at least 2 tokens, got shape {tuple(ids.shape)}")
    total_nll = 0.0
    total_tokens = 0
    starts = range(0, ids.numel(), window)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        chunk = ids[start : start + window]
        if chunk.numel() < 2:
            continue
        logits = model(chunk.unsqueeze(0)).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, chunk[1:], reduction="sum")
        total_nll += float(nll)
        total_tokens += chunk.numel() - 1
    return math.exp(total_nll / total_tokens)


def evaluate_perplexity(
    apm: Any,
    bits: Sequence[int] | Mapping[str, Any],
    texts: dict[str, str],
    window: int = 2048,
    progress: bool = True,
    max_tokens: int | None = None,
) -> dict[Any, dict[str, float]]:
    """Perplexity of an AnyPrecisionModel per precision and per named text: {bits: {name: ppl}}.

    max_tokens: score only the first max_tokens tokens of each text (None: all of it).
    """
    streams = {name: tokenize_text(apm.tokenizer, text)[:max_tokens] for name, text in texts.items()}
    return perplexity_per_bits(apm, bits, streams, window, progress)


def perplexity_per_bits(
    apm: Any,
    bits: Sequence[int] | Mapping[str, Any],
    streams: dict[str, torch.Tensor],
    window: int = 2048,
    progress: bool = True,
    on_result: Callable[[Any, str, float], None] | None = None,
) -> dict[Any, dict[str, float]]:
    """{key: {name: ppl}} of an AnyPrecisionModel over token streams int64[T]. bits: widths
    (each its own key) or {key: precision} (e.g. {"4.5": the Plan anyprec.precision resolved});
    `on_result(key, name, ppl)` is called as each figure is measured (progress reports)."""
    results: dict[Any, dict[str, float]] = {}
    for key, precision in (bits.items() if isinstance(bits, Mapping) else ((b, b) for b in bits)):
        with apm.precision(precision):
            results[key] = {}
            for name, ids in streams.items():
                results[key][name] = perplexity(apm.model, ids, window, progress, desc=f"ppl {name} @{key}-bit")
                if on_result is not None:
                    on_result(key, name, results[key][name])
    return results
