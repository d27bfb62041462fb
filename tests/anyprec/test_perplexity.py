"""Perplexity: exp(mean NLL) over non-overlapping windows, and the held-out streams it reads."""

from __future__ import annotations

import math

import pytest
import torch

from anyprec.perplexity import heldout_streams, perplexity


def test_equals_exp_mean_nll_over_non_overlapping_windows(tiny_llama):
    model, _ = tiny_llama
    ids = torch.randint(0, model.config.vocab_size, (50,), generator=torch.Generator().manual_seed(0))
    nll, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, 50, 16):
            chunk = ids[start:start + 16]
            if chunk.numel() < 2:
                continue
            logits = model(chunk.unsqueeze(0)).logits[0, :-1].float()
            nll += float(torch.nn.functional.cross_entropy(logits, chunk[1:], reduction="sum"))
            count += chunk.numel() - 1
    assert perplexity(model, ids, window=16, progress=False) == pytest.approx(math.exp(nll / count), rel=1e-6)


def test_heldout_streams_are_cut_and_differ_per_corpus(tiny_llama):
    _, tokenizer = tiny_llama
    streams = heldout_streams(tokenizer, ["wiki", "news"], eval_fraction=0.2, split_seed=0, max_tokens=64)
    assert {k: v.shape for k, v in streams.items()} == {"wiki": (64,), "news": (64,)}
    assert streams["wiki"].dtype == torch.int64 and not torch.equal(streams["wiki"], streams["news"])
    other_split = heldout_streams(tokenizer, ["news"], eval_fraction=0.2, split_seed=1, max_tokens=64)
    assert not torch.equal(other_split["news"], streams["news"])
