"""Sensitivity of each quantized weight: diagonal Fisher information (docs/ALGORITHM.md section 2).

For every quantized weight W, F = sum over calibration sequences i of (dL_i/dW)**2, where
L_i is the mean next-token NLL of sequence i alone (batch size 1, so each square is per
sequence). Squares are accumulated in float32 whatever the model dtype.

Memory: only the quantized weights require grad, and a post-accumulate-grad hook squares
each weight's gradient into its fp32 accumulator and drops the gradient at once, so at most
a few gradients are alive at any time and the full set of gradients is never held. Peak is
about model + one fp32 accumulator per quantized weight + activations of one sequence.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from anyprec.archs import is_conv1d, quantizable_modules

LAYER_FILE = "layer_{:03d}.safetensors"


def sequence_nll(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token negative log-likelihood (nats) of ids: int64[1, L], as a scalar."""
    logits = model(input_ids=ids, use_cache=False).logits
    return F.cross_entropy(logits[0, :-1].float(), ids[0, 1:])


@contextmanager
def _grad_only_on(model: nn.Module, weights: dict[str, nn.Parameter]) -> Iterator[None]:
    """Within the block, only `weights` require grad and the model is in eval mode."""
    saved = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    try:
        for param in model.parameters():
            param.requires_grad_(False)
        for param in weights.values():
            param.requires_grad_(True)
        model.eval()
        yield
    finally:
        for param, flag in saved.items():
            param.requires_grad_(flag)
            param.grad = None
        model.train(was_training)


def _square_into(accumulator: torch.Tensor) -> Callable[[torch.Tensor], None]:
    """A post-accumulate-grad hook: accumulator += grad**2 (fp32), then free the grad."""

    def hook(param: torch.Tensor) -> None:
        grad = param.grad.to(torch.float32)
        accumulator.addcmul_(grad, grad)
        param.grad = None

    return hook


def compute_sensitivity(
    model: nn.Module,
    calib_ids: torch.Tensor,
    modules: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of each quantized weight over calib_ids: int64[n, L].

    modules: dotted module names (default: `quantizable_modules(model)`).
    Returns {name: float32[out_features, in_features]} on the CPU; GPT-2 Conv1D weights
    are transposed to [out, in] like `archs.get_weight`.
    """
    if calib_ids.ndim != 2 or calib_ids.dtype != torch.int64:
        raise ValueError(f"calib_ids must be int64[n, L], got {calib_ids.dtype}{list(calib_ids.shape)}")
    names = list(modules) if modules is not None else quantizable_modules(model)
    weights = {name: model.get_submodule(name).weight for name in names}
    accum = {name: torch.zeros(w.shape, dtype=torch.float32, device=w.device) for name, w in weights.items()}
    device = next(model.parameters()).device
    with _grad_only_on(model, weights):
        handles = [w.register_post_accumulate_grad_hook(_square_into(accum[n])) for n, w in weights.items()]
        try:
            for row in tqdm(calib_ids, desc="sensitivity", unit="seq", disable=not progress):
                sequence_nll(model, row[None].to(device)).backward()
        finally:
            for handle in handles:
                handle.remove()
    return {
        name: (acc.t() if is_conv1d(model.get_submodule(name)) else acc).contiguous().cpu()
        for name, acc in accum.items()
    }


def layer_of(name: str) -> int:
    """Decoder-layer index of a module name: its first all-digit dotted component.

    model.layers.3.mlp.up_proj -> 3; transformer.h.0.attn.c_attn -> 0.
    """
    match = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
    if match is None:
        raise ValueError(f"module name {name!r} has no decoder-layer index")
    return int(match.group(1))


def save_sensitivity(fisher: dict[str, torch.Tensor], out_dir: str | Path) -> list[Path]:
    """Write one `layer_NNN.safetensors` per decoder layer into out_dir (each atomically).

    Tensors are keyed by full module name. Returns the written paths in layer order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_layer: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in fisher.items():
        by_layer.setdefault(layer_of(name), {})[name] = tensor.detach().to(torch.float32).contiguous().cpu()
    paths = []
    for index in sorted(by_layer):
        path = out / LAYER_FILE.format(index)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        save_file(by_layer[index], str(tmp), metadata={"format": "anyprec-sensitivity", "layer": str(index)})
        os.replace(tmp, path)
        paths.append(path)
    return paths


def load_sensitivity(in_dir: str | Path, modules: Sequence[str]) -> dict[str, torch.Tensor]:
    """Read {name: float32[out, in]} for `modules` from the files `save_sensitivity` wrote."""
    src = Path(in_dir)
    wanted: dict[int, list[str]] = {}
    for name in modules:
        wanted.setdefault(layer_of(name), []).append(name)
    result: dict[str, torch.Tensor] = {}
    for index, names in sorted(wanted.items()):
        path = src / LAYER_FILE.format(index)
        if not path.is_file():
            raise FileNotFoundError(f"sensitivity file {path} is missing; rerun compute_sensitivity + save_sensitivity")
        with safe_open(str(path), framework="pt") as handle:
            missing = [n for n in names if n not in handle.keys()]
            if missing:
                raise KeyError(f"{path} has no sensitivity for {missing}; it was computed for other modules")
            result.update({n: handle.get_tensor(n) for n in names})
    return {name: result[name] for name in modules}
