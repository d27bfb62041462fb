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

import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from tqdm.auto import tqdm

from anyprec.archs import is_conv1d, quantizable_modules
from anyprec.fileio import save_tensors_atomic

# One file per decoder layer, the same name in every per-layer stage folder (sensitivity, seed, nested).
LAYER_FILE = "layer_{:03d}.safetensors"
LAYER_GLOB = "layer_*.safetensors"
# About this many progress lines per pass: tqdm's bar never reaches a Prefect or file log.
PROGRESS_LINES = 10

log = logging.getLogger(__name__)


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


class Checkpoint:
    """Partial Fisher sums saved atomically after every `chunk` calibration sequences, so a
    killed run resumes at the last whole chunk. `key` names the inputs (model + calibration
    set); a file written for other inputs is ignored and overwritten.

    The sums are restored exactly (fp32), so a resumed run gives the same bits as one that
    never stopped.
    """

    def __init__(self, path: str | Path, key: str, chunk: int = 16) -> None:
        if chunk < 1:
            raise ValueError(f"checkpoint chunk must be >= 1 sequence, got {chunk}")
        self.path, self.key, self.chunk = Path(path), key, chunk

    def restore(self, accum: dict[str, torch.Tensor]) -> int:
        """Load saved sums into `accum` (in place); returns the number of sequences they cover."""
        if not self.path.is_file():
            return 0
        try:
            with safe_open(str(self.path), framework="pt") as fh:
                meta = fh.metadata() or {}
                if meta.get("key") != self.key or set(fh.keys()) != set(accum):
                    return 0
                saved = {name: fh.get_tensor(name) for name in accum}
        except Exception:  # a torn or foreign file counts as no progress: it is rewritten
            return 0
        if any(saved[n].shape != acc.shape for n, acc in accum.items()):
            return 0
        for name, acc in accum.items():
            acc.copy_(saved[name])
        return int(meta.get("done", 0))

    def save(self, accum: dict[str, torch.Tensor], done: int) -> None:
        tensors = {name: acc.detach().cpu().contiguous() for name, acc in accum.items()}
        save_tensors_atomic(tensors, self.path, metadata={"key": self.key, "done": str(done)})

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def compute_sensitivity(
    model: nn.Module,
    calib_ids: torch.Tensor,
    modules: Sequence[str] | None = None,
    progress: bool = True,
    checkpoint: Checkpoint | None = None,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of each quantized weight over calib_ids: int64[n, L].

    modules: dotted module names (default: `quantizable_modules(model)`).
    checkpoint: resume from / save partial sums there after every chunk of sequences.
    Returns {name: float32[out_features, in_features]} on the CPU; GPT-2 Conv1D weights
    are transposed to [out, in] like `archs.get_weight`.
    """
    if calib_ids.ndim != 2 or calib_ids.dtype != torch.int64:
        raise ValueError(f"calib_ids must be int64[n, L], got {calib_ids.dtype}{list(calib_ids.shape)}")
    names = list(modules) if modules is not None else quantizable_modules(model)
    weights = {name: model.get_submodule(name).weight for name in names}
    accum = {name: torch.zeros(w.shape, dtype=torch.float32, device=w.device) for name, w in weights.items()}
    start = checkpoint.restore(accum) if checkpoint is not None else 0
    if start:
        log.info("sensitivity: resuming after %d of %d sequences", start, len(calib_ids))
    with _grad_only_on(model, weights):
        handles = [w.register_post_accumulate_grad_hook(_square_into(accum[n])) for n, w in weights.items()]
        try:
            _accumulate(model, calib_ids, start, accum, checkpoint, progress)
        finally:
            for handle in handles:
                handle.remove()
    return {
        name: (acc.t() if is_conv1d(model.get_submodule(name)) else acc).contiguous().cpu()
        for name, acc in accum.items()
    }


def _accumulate(
    model: nn.Module,
    calib_ids: torch.Tensor,
    start: int,
    accum: dict[str, torch.Tensor],
    checkpoint: Checkpoint | None,
    progress: bool,
) -> None:
    """Backward pass of sequences start..n-1 (the hooks fill `accum`), checkpointing each chunk
    and logging one line per ~1/PROGRESS_LINES of the pass."""
    total = len(calib_ids)
    every = max(1, -(-total // PROGRESS_LINES))
    device = next(model.parameters()).device
    began = time.monotonic()
    rows = tqdm(range(start, total), desc="sensitivity", unit="seq", disable=not progress, initial=start, total=total)
    for index in rows:
        sequence_nll(model, calib_ids[index][None].to(device)).backward()
        done = index + 1
        if checkpoint is not None and done % checkpoint.chunk == 0 and done < total:
            checkpoint.save(accum, done)
        if done % every == 0 or done == total:
            log.info("sensitivity: %d of %d sequences (%.0f s)", done, total, time.monotonic() - began)


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
        save_tensors_atomic(by_layer[index], path, metadata={"format": "anyprec-sensitivity", "layer": str(index)})
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
