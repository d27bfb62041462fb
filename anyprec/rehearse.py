"""`anyprec rehearse`: quantize a Llama with Llama-2-7B's layer shapes and N layers.

No 7B checkpoint can be downloaded here, so the rehearsal writes one: random bf16 weights
(std 0.02, norms 1) with hidden 4096, MLP 11008, 32 heads by default, as a sharded
safetensors HF directory (one shard per decoder layer) with a byte-level BPE tokenizer
trained offline on the calibration corpus. The vocabulary is small (default 8192, not
32000) so training it takes seconds; embeddings and head are a fixed cost, not per layer.

Each N runs in its own process (so its peak RSS is its own) through the quantize stages
one by one; the parent reports seconds and peak RSS per stage, and extrapolates to
`--target-layers` from the two largest N (a straight line through them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

GIB = 2**30
STAGES = ("calibration", "sensitivity", "seed", "upscaling", "packing")
MAPPED = ("seed", "upscaling")  # the flow maps these over decoder layers (task runs on the workers)


class RssSampler:
    """Samples this process's resident set size every `interval` s in a daemon thread."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        """Current RSS in bytes (from /proc/self/statm)."""
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.rss())

    def start(self) -> "RssSampler":
        self.peak = self.rss()
        self._thread.start()
        return self

    def reset(self) -> None:
        self.peak = self.rss()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _train_tokenizer(vocab_size: int, out_dir: Path, documents: Sequence[str] | None = None) -> None:
    """A byte-level BPE trained on documents (default: the wiki corpus), saved as HF tokenizer files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from anyprec.calibration import load_documents

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(load_documents("wiki") if documents is None else documents, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")
    fast.save_pretrained(out_dir)


def _random(shape: Sequence[int], generator: Any) -> Any:
    import torch

    return (torch.randn(*shape, generator=generator) * 0.02).to(torch.bfloat16)


def write_llama(out_dir: Path, layers: int, hidden: int, intermediate: int, heads: int, vocab: int,
                seed: int = 0, documents: Sequence[str] | None = None) -> Path:
    """A Llama HF directory with random bf16 weights, one safetensors shard per decoder layer.

    documents: text the tokenizer is trained on (default: the wiki calibration corpus)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    _train_tokenizer(vocab, out_dir, documents)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=4096, tie_word_embeddings=False, dtype="bfloat16",
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    config.save_pretrained(out_dir)
    gen = torch.Generator().manual_seed(seed)
    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (hidden, hidden),
              "self_attn.v_proj": (hidden, hidden), "self_attn.o_proj": (hidden, hidden),
              "mlp.gate_proj": (intermediate, hidden), "mlp.up_proj": (intermediate, hidden),
              "mlp.down_proj": (hidden, intermediate)}

    def ones() -> torch.Tensor:
        return torch.ones(hidden, dtype=torch.bfloat16)

    def shard(k: int) -> dict[str, Any]:
        """Shard k: 0 holds embeddings, final norm and head; k >= 1 holds decoder layer k - 1."""
        if k == 0:
            return {"model.embed_tokens.weight": _random((vocab, hidden), gen), "model.norm.weight": ones(),
                    "lm_head.weight": _random((vocab, hidden), gen)}
        prefix = f"model.layers.{k - 1}."
        out = {f"{prefix}{name}.weight": _random(shape, gen) for name, shape in shapes.items()}
        out.update({f"{prefix}input_layernorm.weight": ones(), f"{prefix}post_attention_layernorm.weight": ones()})
        return out

    weight_map, total = {}, 0
    for k in range(layers + 1):  # one shard in memory at a time: the writer stays small
        tensors, name = shard(k), f"model-{k + 1:05d}-of-{layers + 1:05d}.safetensors"
        save_file(tensors, str(out_dir / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in tensors})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return out_dir


@contextmanager
def _stage(name: str, sampler: RssSampler, report: dict[str, Any], layers: int) -> Iterator[None]:
    sampler.reset()
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    report[name] = {"seconds": round(seconds, 2), "seconds_per_layer": round(seconds / layers, 2),
                    "peak_rss_gib": round(sampler.peak / GIB, 3)}
    print(f"  {name:<12} {seconds:8.1f} s  ({seconds / layers:7.1f} s/layer)  peak RSS {sampler.peak / GIB:6.2f} GiB",
          flush=True)


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """Write the N-layer model under args.work_dir and quantize it stage by stage, measured."""
    from anyprec import quantize as q
    from anyprec.config import CalibrationConfig, QuantizationConfig

    work = Path(args.work_dir) / f"layers-{args.layers[0]}"
    os.environ["ANYPREC_CACHE"] = str(work / "cache")  # the rehearsal's hashes and shared results stay in it
    layers = args.layers[0]
    calib = CalibrationConfig(n_samples=args.samples, seq_len=args.seq_len)
    quant = QuantizationConfig(method=args.method, sensitivity=args.sensitivity)
    sampler = RssSampler().start()
    stages: dict[str, Any] = {}
    start = time.perf_counter()
    with _stage("write model", sampler, stages, layers):
        model = write_llama(work / "model", layers, args.hidden, args.intermediate, args.heads, args.vocab)
    ref = str(model)
    with _stage("calibration", sampler, stages, layers):
        calib_dir = q.prepare_calibration(ref, calib, work / "calib")
    with _stage("sensitivity", sampler, stages, layers):
        sens = q.run_sensitivity(ref, calib_dir, work / "sensitivity", False, quant.sensitivity)
    with _stage("seed", sampler, stages, layers):
        seed = q.run_seed_quantization(ref, sens, quant, work / "seed", False)
    with _stage("upscaling", sampler, stages, layers):
        nested = q.run_upscaling(ref, sens, seed, quant, work / "nested", False)
    with _stage("packing", sampler, stages, layers):
        packed = q.run_packing(ref, nested, quant, work / "packed", {"rehearsal": True})
    sampler.stop()
    return {
        "layers": layers, "hidden": args.hidden, "intermediate": args.intermediate, "heads": args.heads,
        "vocab": args.vocab, "samples": args.samples, "seq_len": args.seq_len, "method": args.method,
        "sensitivity": args.sensitivity, "stages": stages,
        "seconds_total": round(time.perf_counter() - start, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3),
        "artifact_bytes": sum(p.stat().st_size for p in Path(packed).iterdir() if p.is_file()),
        "model_bytes": sum(p.stat().st_size for p in Path(model).glob("*.safetensors")),
    }


def extrapolate(runs: list[dict[str, Any]], target: int, machines: Sequence[int] = (1, 2, 4, 8)) -> dict[str, Any]:
    """Straight line through the two largest runs: peak RSS, seconds, per stage, at `target` layers."""
    small, large = sorted(runs, key=lambda r: r["layers"])[-2:]
    span = large["layers"] - small["layers"]

    def line(a: float, b: float) -> tuple[float, float]:
        slope = (b - a) / span
        return slope, b + slope * (target - large["layers"])

    rss_slope, rss_target = line(small["peak_rss_gib"], large["peak_rss_gib"])
    out = {"target_layers": target, "from_layers": [small["layers"], large["layers"]],
           "peak_rss_gib_per_layer": round(rss_slope, 3), "peak_rss_gib": round(rss_target, 2), "stages": {}}
    for name in STAGES:  # quantization only: writing the random model is not part of it
        slope, value = line(small["stages"][name]["seconds"], large["stages"][name]["seconds"])
        out["stages"][name] = {"seconds_per_added_layer": round(slope, 1), "seconds": round(value, 1)}
    out["seconds_total"] = round(sum(s["seconds"] for s in out["stages"].values()), 1)
    out["seconds_on_machines"] = {str(n): round(machines_estimate(out, n), 1) for n in machines}
    return out


def machines_estimate(ext: dict[str, Any], machines: int) -> float:
    """Seconds at ext's depth on `machines` such machines (Dask, one worker each): the clustering
    stages (seed, upscaling) are mapped over layers, so each machine takes ceil(layers / machines)
    of them; calibration, sensitivity and packing stay on one. The objective pass (inside
    upscaling here) runs in the flow's process, so this is an optimistic bound."""
    layers = ext["target_layers"]
    per_layer = sum(ext["stages"][name]["seconds"] for name in MAPPED) / layers
    serial = sum(v["seconds"] for name, v in ext["stages"].items() if name not in MAPPED)
    return serial + per_layer * -(-layers // machines)


def _child(args: argparse.Namespace, layers: int, json_path: Path) -> dict[str, Any]:
    """Run one N in a fresh process (its own peak RSS) and read back its JSON."""
    cmd = [sys.executable, "-m", "anyprec.rehearse", "--one", "--layers", str(layers), "--json", str(json_path)]
    for flag in ("hidden", "intermediate", "heads", "vocab", "samples", "seq_len", "method", "sensitivity", "work_dir"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    subprocess.run(cmd, check=True)
    return json.loads(json_path.read_text(encoding="utf-8"))


def run_rehearsal(args: argparse.Namespace) -> int:
    from anyprec.fileio import write_json_atomic

    if args.one:
        write_json_atomic(args.json, run_one(args))
        return 0
    if any(n < 1 for n in args.layers):
        raise ValueError(f"--layers {args.layers}: every layer count must be >= 1")
    if args.work_dir is None:
        args.work_dir = tempfile.mkdtemp(prefix="anyprec-rehearsal-")
    runs = []
    for layers in args.layers:
        print(f"rehearsal: {layers} layers of {args.hidden}/{args.intermediate}/{args.heads} heads in {args.work_dir}",
              flush=True)
        runs.append(_child(args, layers, Path(args.work_dir) / f"layers-{layers}.json"))
        print(f"  total {runs[-1]['seconds_total']:.1f} s, peak RSS {runs[-1]['peak_rss_gib']:.2f} GiB", flush=True)
    result: dict[str, Any] = {"runs": runs}
    if len(runs) >= 2:
        result["extrapolation"] = ext = extrapolate(runs, args.target_layers)
        print(f"extrapolated to {ext['target_layers']} layers from {ext['from_layers']}: peak RSS "
              f"{ext['peak_rss_gib']:.1f} GiB (+{ext['peak_rss_gib_per_layer']:.2f} GiB/layer), "
              f"{ext['seconds_total'] / 3600:.1f} h")
        print("  on N such machines (Dask, clustering mapped over layers): "
              + ", ".join(f"N={n}: {sec / 3600:.1f} h" for n, sec in ext["seconds_on_machines"].items()))
    if args.json:
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")
    return 0


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", type=int, nargs="+", required=True, help="decoder-layer counts, e.g. 2 4")
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=11008)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--vocab", type=int, default=8192, help="tokenizer/embedding size (Llama-2: 32000)")
    p.add_argument("--samples", type=int, default=4, help="calibration sequences")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per calibration sequence")
    p.add_argument("--method", choices=["optimal", "lloyd"], default="optimal")
    p.add_argument("--sensitivity", choices=["auto", "streamed", "whole"], default="streamed")
    p.add_argument("--target-layers", type=int, default=32, help="extrapolate to this depth (Llama-2-7B: 32)")
    p.add_argument("--work-dir", default=None, help="where models and stage outputs go (default: a new temp dir)")
    p.add_argument("--json", default=None, help="write every run and the extrapolation here")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run_rehearsal)


def add_rehearse_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("rehearse", help="quantize a 7B-shaped Llama with N layers; peak RSS, time per layer")
    _configure(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anyprec rehearse", description=__doc__.splitlines()[0])
    _configure(parser)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
