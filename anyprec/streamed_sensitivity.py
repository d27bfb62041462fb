"""Layer-streamed diagonal Fisher: one decoder layer's weights in memory at a time.

Same math as `anyprec.sensitivity.compute_sensitivity` (per-sequence squares of the
gradient of each sequence's mean NLL, accumulated in fp32), computed in two sweeps:

1. forward, bottom-up: layer l is read from the safetensors files, every calibration
   sequence's input h_l [L, H] goes through it, and each h_l is written to a scratch
   file on disk; then the layer is dropped;
2. backward, top-down: the loss gradient g_N = dL_i/dh_N comes from the model's own
   final norm + head; layer l is read again, its forward is recomputed from the saved
   h_l with grad on its quantized weights, g_{l+1} is pushed through it, the squared
   weight gradients go into fp32 accumulators and g_l is written for the layer below.
   Layer l's Fisher is written (`save_sensitivity` format) before moving down.

Resident: embeddings, final norm, head, one decoder layer (fp32) with its accumulators
and one sequence's activations. Disk: (N + 2) x n x L x H x 4 bytes of scratch, freed
as the backward sweep moves down.

Decoder layers are called as the model's own forward calls them: the model is built on
the meta device with each layer replaced by a stub that records the arguments the
model's forward passes (attention mask, rotary embeddings, position ids, ...), so masks
and positions are exactly those of the whole-model pass.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import nn
from tqdm.auto import tqdm

from anyprec.archs import arch_spec, is_conv1d
from anyprec.sensitivity import _square_into, save_sensitivity, sequence_nll

log = logging.getLogger(__name__)
# arch_spec keys whose streamed pass is tested equal to the whole-model pass: their
# model forward calls `hidden = layer(hidden, **same_kwargs_for_every_sequence)` in order.
STREAMED_ARCHS = frozenset({"llama", "mistral", "qwen2", "qwen3", "opt", "gpt2"})
MODES = ("auto", "streamed", "whole")


class WeightReader:
    """Reads named tensors lazily from a HF safetensors directory (sharded or not)."""

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        index = self.model_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            self.files = {name: self.model_dir / file for name, file in weight_map.items()}
        else:
            self.files = {}
            for path in sorted(self.model_dir.glob("*.safetensors")):
                with safe_open(str(path), framework="pt") as handle:
                    self.files.update({name: path for name in handle.keys()})
        if not self.files:
            raise FileNotFoundError(f"no *.safetensors weights in {self.model_dir}")

    def read(self, names: Sequence[str], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """{name: tensor cast to dtype}; each file is opened once and closed (no lasting mmap)."""
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        out: dict[str, torch.Tensor] = {}
        for path, wanted in by_file.items():
            with safe_open(str(path), framework="pt") as handle:
                out.update({n: handle.get_tensor(n).to(dtype) for n in wanted})
        return out


def streaming_unsupported(model_dir: str | Path) -> str | None:
    """Why the streamed pass cannot run on model_dir (None when it can)."""
    model_dir = Path(model_dir)
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        return f"{model_dir} is not a local Hugging Face directory (no config.json)"
    if not any(model_dir.glob("*.safetensors")):
        return f"{model_dir} has no *.safetensors weights"
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    try:
        key = arch_spec(str(model_type)).model_type
    except ValueError as err:
        return str(err)
    if key not in STREAMED_ARCHS:
        return f"model_type {model_type!r} has no tested streamed pass (tested: {', '.join(sorted(STREAMED_ARCHS))})"
    return None


def parameter_count(model_dir: str | Path) -> int:
    """Number of weights in model_dir's safetensors files (read from their headers)."""
    reader = WeightReader(model_dir)
    total = 0
    for path in sorted(set(reader.files.values())):
        with safe_open(str(path), framework="pt") as handle:
            total += sum(int(np.prod(handle.get_slice(n).get_shape())) for n in handle.keys())
    return total


def whole_pass_bytes(model_dir: str | Path) -> int:
    """About what the whole-model pass holds: fp32 weights + one fp32 accumulator each."""
    return 8 * parameter_count(model_dir)


def use_streamed(model_dir: str | Path, mode: str) -> bool:
    """Whether `mode` picks the streamed pass for model_dir.

    whole: never; streamed: always (ValueError naming why if it cannot run); auto: when
    it can run and the whole-model pass would take more than half the physical memory
    (the streamed pass recomputes each layer's forward, so it is slower when both fit).
    """
    if mode not in MODES:
        raise ValueError(f"sensitivity mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "whole":
        return False
    reason = streaming_unsupported(model_dir)
    if reason is not None and mode == "streamed":
        raise ValueError(f"quantization.sensitivity: streamed is impossible here: {reason}; use auto or whole")
    if mode == "streamed":
        return True
    if reason is not None:
        log.info("sensitivity: whole-model pass (no streamed pass: %s)", reason)
        return False
    need, have = whole_pass_bytes(model_dir), physical_memory()
    log.info("sensitivity: %s pass (the whole pass needs ~%.1f GiB of %.1f GiB RAM)",
             "streamed" if need > have // 2 else "whole-model", need / 2**30, have / 2**30)
    return need > have // 2


def physical_memory() -> int:
    """Bytes of physical memory of this machine."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class _LayerStub(nn.Module):
    """Stands in for decoder layer `index`: records its call, returns a chosen output."""

    def __init__(self, index: int, calls: dict[int, Any], replace: dict[int, torch.Tensor]):
        super().__init__()
        self.index, self.calls, self.replace = index, calls, replace

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.calls[self.index] = (hidden_states, args, kwargs)
        return self.replace.get(self.index, hidden_states)


class _Skeleton:
    """The model without its decoder layers: embeddings, final norm and head are real.

    `record(ids)` returns each layer's call arguments for one sequence; `nll(ids, h_top)`
    is the sequence's mean NLL with h_top as the last layer's output.
    """

    def __init__(self, model_dir: Path, reader: WeightReader):
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        self.spec = arch_spec(config.model_type)
        container = model.get_submodule(self.spec.layers)
        self.meta_layers = list(container)
        self.calls: dict[int, Any] = {}
        self.replace: dict[int, torch.Tensor] = {}
        for index in range(len(container)):
            container[index] = _LayerStub(index, self.calls, self.replace)
        model.to_empty(device="cpu")
        model.init_weights()  # non-persistent buffers (rotary inv_freq); weights are overwritten below
        self._load(model, reader)
        self.model = model.eval().requires_grad_(False)

    @staticmethod
    def _load(model: nn.Module, reader: WeightReader) -> None:
        state = model.state_dict()
        present = [name for name in state if name in reader.files]
        loaded = reader.read(present)
        missing = set(state) - set(loaded) - _tied_names(model)
        if missing:
            raise ValueError(f"{reader.model_dir}: tensors {sorted(missing)} are not in the safetensors files")
        model.load_state_dict(loaded, strict=False)
        model.tie_weights()

    @property
    def n_layers(self) -> int:
        return len(self.meta_layers)

    def record(self, ids: torch.Tensor) -> dict[int, Any]:
        """{layer: (hidden_in, args, kwargs)} of one sequence ids: int64[1, L]."""
        self.calls.clear()
        with torch.no_grad():
            self.model(input_ids=ids, use_cache=False)
        return dict(self.calls)

    def nll(self, ids: torch.Tensor, h_top: torch.Tensor) -> torch.Tensor:
        """Mean NLL of ids with h_top: [1, L, H] as the last decoder layer's output."""
        self.replace[self.n_layers - 1] = h_top
        try:
            return sequence_nll(self.model, ids)
        finally:
            self.replace.clear()

    def layer(self, index: int, reader: WeightReader) -> nn.Module:
        """Decoder layer `index` in fp32 on the CPU, weights read from the safetensors."""
        layer = copy.deepcopy(self.meta_layers[index])
        prefix = f"{self.spec.layers}.{index}."
        names = list(layer.state_dict())
        loaded = reader.read([prefix + n for n in names])
        layer.load_state_dict({n: loaded[prefix + n] for n in names}, assign=True)
        meta = [n for n, t in [*layer.named_parameters(), *layer.named_buffers()] if t.is_meta]
        if meta:
            raise ValueError(f"layer {index}: tensors {meta} are neither in the checkpoint nor computable")
        return layer.eval().requires_grad_(False)


def _tied_names(model: nn.Module) -> set[str]:
    """Parameter names tied to another (absent from checkpoints that tie embeddings)."""
    tied = getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or {}
    return set(tied) if getattr(model.config.get_text_config(), "tie_word_embeddings", False) else set()


class _RowFile:
    """float32 rows of one shape on disk: written in order, read back by index."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.path, self.shape = path, shape
        self.row_bytes = int(np.prod(shape)) * 4
        self._out = open(path, "wb")

    def append(self, row: torch.Tensor) -> None:
        self._out.write(row.detach().to(torch.float32).contiguous().numpy().tobytes())

    def close(self) -> None:
        self._out.close()

    def read(self, index: int) -> torch.Tensor:
        with open(self.path, "rb") as handle:
            handle.seek(index * self.row_bytes)
            data = np.frombuffer(handle.read(self.row_bytes), dtype=np.float32)
        return torch.from_numpy(data.copy()).reshape(self.shape)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _forward_sweep(skeleton: _Skeleton, reader: WeightReader, ids: torch.Tensor, scratch: Path, progress: bool):
    """Writes h_0..h_N for every sequence; returns (row files, per-layer call args)."""
    first = skeleton.record(ids[:1])
    shape = tuple(first[0][0].shape)
    extra = {index: (args, kwargs) for index, (_, args, kwargs) in first.items()}
    files = [_RowFile(scratch / f"h_{i:03d}.f32", shape) for i in range(skeleton.n_layers + 1)]
    for row in ids:
        files[0].append(skeleton.record(row[None])[0][0])
    files[0].close()
    for index in tqdm(range(skeleton.n_layers), desc="sensitivity forward", unit="layer", disable=not progress):
        layer, (args, kwargs) = skeleton.layer(index, reader), extra[index]
        with torch.no_grad():
            for seq in range(len(ids)):
                files[index + 1].append(layer(files[index].read(seq), *args, **kwargs))
        files[index + 1].close()
        del layer
    return files, extra


def _backward_layer(
    layer: nn.Module, names: dict[str, str], call: tuple, n_seq: int, h_in: _RowFile, g_out: _RowFile,
    g_in: _RowFile | None,
) -> dict[str, torch.Tensor]:
    """Fisher of one layer's quantized weights {full name: f32[out, in]}, writing g_in.

    Each weight's gradient is squared into its accumulator by a hook as soon as it is
    complete and then freed, so the layer's gradients are never all alive at once.
    """
    args, kwargs = call
    weights = {full: layer.get_submodule(local).weight for full, local in names.items()}
    accum = {full: torch.zeros(w.shape, dtype=torch.float32) for full, w in weights.items()}
    handles = [w.requires_grad_(True).register_post_accumulate_grad_hook(_square_into(accum[full]))
               for full, w in weights.items()]
    try:
        for seq in range(n_seq):
            h = h_in.read(seq).requires_grad_(g_in is not None)
            layer(h, *args, **kwargs).backward(g_out.read(seq))
            if g_in is not None:
                g_in.append(h.grad)
    finally:
        for handle in handles:
            handle.remove()
    return {
        full: (acc.t() if is_conv1d(layer.get_submodule(names[full])) else acc).contiguous()
        for full, acc in accum.items()
    }


def compute_streamed_sensitivity(
    model_dir: str | Path,
    calib_ids: torch.Tensor,
    out_dir: str | Path,
    scratch_parent: str | Path | None = None,
    progress: bool = True,
) -> list[str]:
    """Layer-streamed Fisher of every quantized weight of model_dir over calib_ids: int64[n, L].

    Writes out_dir/layer_NNN.safetensors (the `save_sensitivity` format) from the top
    layer down; scratch activations live in a temporary folder under scratch_parent
    (default: out_dir) that is removed at the end. Returns the module names, in layer order.
    """
    if calib_ids.ndim != 2 or calib_ids.dtype != torch.int64:
        raise ValueError(f"calib_ids must be int64[n, L], got {calib_ids.dtype}{list(calib_ids.shape)}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    reason = streaming_unsupported(model_dir)
    if reason is not None:
        raise ValueError(f"streamed sensitivity: {reason}")
    reader = WeightReader(model_dir)
    skeleton = _Skeleton(model_dir, reader)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="stream-scratch-", dir=scratch_parent or out_dir))
    try:
        return _sweeps(skeleton, reader, calib_ids, out_dir, scratch, progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _sweeps(skeleton: _Skeleton, reader: WeightReader, ids: torch.Tensor, out_dir: Path, scratch: Path, progress: bool):
    spec, top = skeleton.spec, skeleton.n_layers
    files, extra = _forward_sweep(skeleton, reader, ids, scratch, progress)
    grad = _RowFile(scratch / f"g_{top:03d}.f32", files[top].shape)
    for seq, row in enumerate(ids):
        h_top = files[top].read(seq).requires_grad_(True)
        grad.append(torch.autograd.grad(skeleton.nll(row[None], h_top), h_top)[0])
    grad.close()
    files[top].remove()
    names: list[list[str]] = []
    for index in tqdm(reversed(range(top)), total=top, desc="sensitivity backward", unit="layer", disable=not progress):
        local = {f"{spec.layers}.{index}.{s}": s for s in spec.modules}
        g_in = _RowFile(scratch / f"g_{index:03d}.f32", files[index].shape) if index > 0 else None
        layer = skeleton.layer(index, reader)
        fisher = _backward_layer(layer, local, extra[index], len(ids), files[index], grad, g_in)
        save_sensitivity(fisher, out_dir)
        names.insert(0, list(fisher))
        del layer, fisher
        files[index].remove()
        grad.remove()
        if g_in is not None:
            g_in.close()
            grad = g_in
    return [name for group in names for name in group]
