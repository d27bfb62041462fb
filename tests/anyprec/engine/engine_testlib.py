"""Tiny any-precision models built in memory for engine tests (no calibration run).

Each quantized Linear gets random nested codes (parent 8 bits; code_b = code_8 >> (8 - b))
and a random fp16 LUT per bit-width, through the runtime's own AnyPrecisionLinear; the head
is rounded to fp16 and wrapped as the runtime does. The engines only need *some* nested
artifact to compare against each other, so this tests every shape without a quantization.
"""

from __future__ import annotations

import torch
from anyprec.archs import quantizable_modules
from anyprec.int8_head import install_int8_head
from anyprec.kernels import pack_bitplanes
from anyprec.packed import QuantizedModule
from anyprec.runtime import AnyPrecisionLinear, AnyPrecisionModel, HalfStoredHead, PrecisionState, _set_submodule

BITS = [3, 4, 5, 6, 7, 8]


def tiny_config(model_type: str, **extra):
    """A 2-layer config: 5 query heads over 1 kv head (odd, GQA) unless `extra` says otherwise."""
    from transformers import AutoConfig

    base = dict(vocab_size=300, hidden_size=80, intermediate_size=72, num_hidden_layers=2,
                num_attention_heads=5, num_key_value_heads=1, max_position_embeddings=128,
                tie_word_embeddings=False, rms_norm_eps=1e-5)
    base.update(extra)
    return AutoConfig.for_model(model_type, **base)


def build_apm(config, seed: int = 0, luts: str = "fp16") -> AnyPrecisionModel:
    """An AnyPrecisionModel over a random `config` model with random nested codes, its LUTs,
    head and (tied) embedding in the resident form `luts` as `load_anyprec` makes them."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():  # the artifact stores dense tensors in fp16: make them fp16-exact
        for p in model.parameters():
            p.copy_(p.half().float())
    state = PrecisionState(default=max(BITS), available=list(BITS))
    gen = torch.Generator().manual_seed(seed + 1)
    for name in quantizable_modules(model):
        lin = model.get_submodule(name)
        n, k = lin.weight.shape
        codes = torch.randint(0, 256, (n, k), dtype=torch.uint8, generator=gen)
        planes = pack_bitplanes(codes, 8)
        scale = k ** -0.5
        tables = {b: (torch.randn(n, 2 ** b, generator=gen) * scale).sort(dim=1).values.half() for b in BITS}
        bias = None if lin.bias is None else (torch.randn(n, generator=gen) * 0.1).half().float()
        _set_submodule(model, name, AnyPrecisionLinear(QuantizedModule(planes, tables, k, bias), state, luts=luts))
    head = model.get_output_embeddings()
    if luts == "u8":
        install_int8_head(model, torch.float32)
    else:
        model.lm_head = HalfStoredHead(head, head.weight.detach().half())
    manifest = {"model_type": config.model_type, "seed_bits": 3, "parent_bits": 8}
    return AnyPrecisionModel(model, None, manifest, state, luts)


def full_logits(apm: AnyPrecisionModel, ids: list[int], bits: int) -> torch.Tensor:
    """Last-position logits of one transformers forward over `ids` (no cache) at `bits`."""
    with torch.inference_mode():
        return apm(input_ids=torch.tensor([ids]), precision=bits).logits[0, -1].float()


def greedy_reference(apm: AnyPrecisionModel, ids: list[int], bits: int, new_tokens: int) -> list[int]:
    """transformers' greedy `generate` at `bits`: the new token ids."""
    out = apm.generate(torch.tensor([ids]), precision=bits, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


def assert_same_greedy(apm: AnyPrecisionModel, ids: list[int], bits: int, ours: list[int], ref: list[int],
                       tie: float = 1e-4) -> None:
    """Token-for-token equal, except from a position where transformers' top two logits are
    within `tie` (fp32 rounding: either choice is right, and the continuations part)."""
    for i, (a, b) in enumerate(zip(ours, ref)):
        if a != b:
            top2 = full_logits(apm, ids + ref[:i], bits).topk(2).values
            assert float(top2[0] - top2[1]) < tie, f"token {i} differs: {a} vs {b} at {bits} bits"
            return
    assert len(ours) == len(ref)
