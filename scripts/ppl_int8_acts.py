"""Perplexity of a packed artifact with every quantized Linear run through the AVX2 uint8-LUT
kernel (kernels/csrc/ap_lut8_avx2.c), fp32 against int8 activations.

usage: python scripts/ppl_int8_acts.py ARTIFACT [--bits 3 4 8] [--corpus wiki news]
           [--max-tokens 4096] [--acts ref fp32 int8] [--act-group 32] [--via kernel|dense]
           [--window 2048] [--out result.json]

Each LUT is quantized to uint8 codes once (anyprec/lutq.py, the runtime's in-memory form).
--via kernel: each Linear call runs `gemv_u8` over its tokens in calls of 8 (decode-sized),
the kernel's own arithmetic, int8 activation rounding included (slow: ~15 ms a token on
SmolLM2-135M at 8 bits). --via dense: the same quantization in dense torch ops (weights
lo + scale * q[code] in fp32, activations rounded per group exactly as the C quantizer
does), equal to the kernel up to fp32 summation order (tests/kernels/test_lut8_avx2.py
pins the kernel to this model); fast enough for the 4096-token table. `ref` is the
runtime's own path (fp16 LUT). Results are written after every figure.
"""

import argparse
import time
from pathlib import Path

import torch

from anyprec.calibration import heldout_split
from anyprec.fileio import write_json_atomic
from anyprec.kernels import cpu
from anyprec.kernels.bitplanes import unpack_bitplanes
from anyprec.lutq import dequantize_lut, quantize_lut
from anyprec.perplexity import heldout_streams, perplexity
from anyprec.runtime import AnyPrecisionLinear, load_anyprec


def quantize_acts(x: torch.Tensor, group: int) -> torch.Tensor:
    """x f32[M, K] rounded as ap_quantize_acts_int8_groups does (per `group` columns, zero
    padded to a multiple of 32): symmetric, sx = max|x| / 127 in fp32, rint(x / sx) half to even."""
    m, k = x.shape
    kpad = -(-k // 32) * 32
    g = min(group, kpad) if group < k else kpad
    xp = torch.nn.functional.pad(x, (0, -(-kpad // g) * g - k)).reshape(m, -1, g)
    sx = xp.abs().amax(dim=2, keepdim=True) / 127.0
    xq = torch.where(sx > 0, torch.round(xp / torch.where(sx > 0, sx, 1.0)), 0.0)
    return (xq * sx).reshape(m, -1)[:, :k]


def route(model: torch.nn.Module, bits: list[int], acts: str, group: int, via: str) -> list:
    """Points each AnyPrecisionLinear's forward at the uint8-LUT arithmetic; returns the modules."""
    patched = []
    for module in model.modules():
        if not isinstance(module, AnyPrecisionLinear):
            continue
        luts = {b: quantize_lut(module._buffers[f"lut{b}"]) for b in bits}
        dense: dict[int, torch.Tensor] = {}  # fp32 weights of one width at a time (--via dense)

        def forward(x: torch.Tensor, m: AnyPrecisionLinear = module, luts: dict = luts, dense: dict = dense):
            b = m.state.current
            q, x2 = luts[b], x.reshape(-1, m.in_features).float()
            if via == "kernel":
                y = cpu.gemv_u8(m.planes, q.q, q.lo, q.scale, x2, b, acts, group)
            else:
                if b not in dense:
                    dense.clear()
                    codes = unpack_bitplanes(m.planes, b, m.in_features).long()
                    dense[b] = torch.gather(dequantize_lut(q), 1, codes)
                y = (quantize_acts(x2, group) if acts == "int8" else x2) @ dense[b].T
            if m.bias is not None:
                y += m.bias
            return y.reshape(*x.shape[:-1], m.out_features).to(x.dtype)

        module.forward = forward
        patched.append(module)
    return patched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--bits", type=int, nargs="+", default=[3, 4, 8])
    parser.add_argument("--corpus", nargs="+", default=["wiki", "news"])
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--acts", nargs="+", default=["ref", "fp32", "int8"], choices=["ref", "fp32", "int8"])
    parser.add_argument("--act-group", type=int, default=cpu.ACT_GROUP,
                        help="columns per int8 activation scale (a multiple of 32; >= K: one per token)")
    parser.add_argument("--via", choices=["kernel", "dense"], default="kernel")
    parser.add_argument("--window", type=int, default=2048)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not (args.artifact / "manifest.json").is_file():
        parser.error(f"{args.artifact} has no manifest.json; pass a packed artifact directory")
    apm = load_anyprec(args.artifact, sorted(set(args.bits)))
    frac, seed = heldout_split(apm.manifest["inputs"])
    streams = heldout_streams(apm.tokenizer, args.corpus, frac, seed, args.max_tokens)
    result = {"artifact": str(args.artifact), "max_tokens": args.max_tokens, "act_group": args.act_group,
              "via": args.via, "window": args.window, "ppl": {}}
    for b in args.bits:  # widths outermost: a partial run still pairs fp32 with int8
        for acts in args.acts:
            patched = [] if acts == "ref" else route(apm.model, [b], acts, args.act_group, args.via)
            with apm.precision(b):
                for corpus, ids in streams.items():
                    start = time.time()
                    ppl = perplexity(apm.model, ids, args.window, progress=False)
                    result["ppl"].setdefault(acts, {}).setdefault(str(b), {})[corpus] = ppl
                    print(f"acts={acts} bits={b} {corpus}: ppl {ppl:.4f} ({time.time() - start:.0f} s)", flush=True)
                    if args.out:
                        write_json_atomic(args.out, result)
            for module in patched:
                del module.forward  # back to the class's forward
    if "fp32" in result["ppl"] and "int8" in result["ppl"]:
        for b, per in result["ppl"]["int8"].items():
            for corpus, ppl in per.items():
                base = result["ppl"]["fp32"][b][corpus]
                print(f"int8 vs fp32 activations, {b}-bit {corpus}: {100 * (ppl / base - 1):+.3f}%")


if __name__ == "__main__":
    main()
