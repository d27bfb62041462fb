"""Shared fixtures: tiny models built from configs and a tokenizer trained offline.

Nothing here downloads: the tokenizer is a byte-level BPE trained on a few paragraphs
with the `tokenizers` package, the models are random-initialised from small configs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

TINY_VOCAB = 384

_TRAIN_TEXT = [
    "Anarchism is a political philosophy and movement that is sceptical of authority.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.",
    "Quantization maps real numbers to a small set of values called centroids.",
    "A bitplane holds one bit of every code; the most significant plane comes first.",
    "News: the council met on Tuesday to discuss the budget for the coming year.",
    "Numbers like 3, 4, 5, 6, 7 and 8 bits are the precisions we serve from one file.",
] * 20


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_TRAIN_TEXT, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer with TINY_VOCAB entries, trained offline."""
    return _train_tokenizer()


def make_tiny_llama(vocab_size: int = TINY_VOCAB, seed: int = 0):
    """A 2-layer Llama with hidden 64 (K values not multiples of 32 live in the MLP: 88)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=88,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def make_tiny_gpt2(vocab_size: int = TINY_VOCAB, seed: int = 0):
    """A 2-layer GPT-2 (Conv1D weights, fused qkv) with n_embd 48."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size, n_embd=48, n_layer=2, n_head=4, n_positions=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="session")
def tiny_llama(tiny_tokenizer):
    """(model, tokenizer): a tiny random Llama. Session-scoped: do not modify in place."""
    return make_tiny_llama(), tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_tokenizer):
    """(model, tokenizer): a tiny random GPT-2. Session-scoped: do not modify in place."""
    return make_tiny_gpt2(), tiny_tokenizer


def save_model_dir(model, tokenizer, path: Path) -> Path:
    """Save a model + tokenizer as a local HF directory (safetensors)."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_llama) -> Path:
    """A local HF directory holding the tiny Llama and its tokenizer (read-only: copy to modify)."""
    model, tok = tiny_llama
    return save_model_dir(model, tok, tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, tiny_gpt2) -> Path:
    """A local HF directory holding the tiny GPT-2 and its tokenizer."""
    model, tok = tiny_gpt2
    return save_model_dir(model, tok, tmp_path_factory.mktemp("tiny_gpt2"))


TINY_CALIB = {"n_samples": 4, "seq_len": 32}


def quantize_tiny(model_dir: Path, root: Path, **quantization) -> Path:
    """`model_dir` quantized 3..8 bits with the 4 x 32 calibration set and QuantizationConfig(**quantization):
    the artifact in root/packed, work files in root/work."""
    from anyprec.config import CalibrationConfig, QuantizationConfig
    from anyprec.quantize import quantize_model

    return quantize_model(str(model_dir), root / "packed", CalibrationConfig(**TINY_CALIB),
                          QuantizationConfig(**quantization), work_dir=root / "work", progress=False)


@pytest.fixture(scope="session")
def tiny_quantized(tmp_path_factory, tiny_model_dir):
    """(artifact_dir, work_dir): the tiny Llama quantized 3..8 bits with a 4 x 32 calibration set."""
    root = tmp_path_factory.mktemp("tiny_quantized")
    return quantize_tiny(tiny_model_dir, root), root / "work"


@pytest.fixture(scope="session")
def tiny_artifact(tiny_quantized) -> Path:
    """A packed 3..8-bit artifact of the tiny Llama (read-only: copy it to modify)."""
    return tiny_quantized[0]
