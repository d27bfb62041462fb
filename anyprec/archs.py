"""Which weights of a causal LM we quantize, read from `archs.yaml` (data, not code).

Module names are full dotted names from the CausalLM root (e.g.
`model.layers.0.self_attn.q_proj`), in decoder-layer order, then in the yaml's order
within a layer. Weights are always handled as float32 `[out_features, in_features]`;
GPT-2's Conv1D stores `[in, out]` and is transposed on the way in and out.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import yaml
from torch import nn

ARCHS_FILE = Path(__file__).with_name("archs.yaml")


@dataclass(frozen=True)
class ArchSpec:
    """One architecture's entry: layer container path, module suffixes, Conv1D flag."""

    model_type: str
    layers: str
    modules: tuple[str, ...]
    conv1d: bool


@lru_cache(maxsize=1)
def _load_table() -> tuple[dict, dict]:
    """Parse archs.yaml once: (architectures, aliases)."""
    data = yaml.safe_load(ARCHS_FILE.read_text())
    return data["architectures"], data.get("aliases", {})


def supported_model_types() -> list[str]:
    """Every model_type archs.yaml knows, aliases included, sorted."""
    archs, aliases = _load_table()
    return sorted([*archs, *aliases])


def arch_spec(model_type: str) -> ArchSpec:
    """The ArchSpec for a HF `config.model_type`; ValueError naming the yaml if unknown."""
    archs, aliases = _load_table()
    key = aliases.get(model_type, model_type)
    if key not in archs:
        raise ValueError(
            f"unsupported model_type {model_type!r}: no entry in {ARCHS_FILE}. "
            f"Supported: {', '.join(supported_model_types())}. "
            "Add an entry (layers path + module suffixes) to that file to support it."
        )
    entry = archs[key]
    return ArchSpec(key, entry["layers"], tuple(entry["modules"]), bool(entry.get("conv1d", False)))


def _model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    if config is None or not getattr(config, "model_type", None):
        raise ValueError(f"{type(model).__name__} has no config.model_type; pass a HF causal LM")
    return config.model_type


def _decoder_layers(model: nn.Module, spec: ArchSpec) -> nn.ModuleList:
    """The decoder-layer container at spec.layers; ValueError if the path is absent."""
    try:
        layers = model.get_submodule(spec.layers)
    except AttributeError as err:
        raise ValueError(
            f"model_type {spec.model_type!r}: layer container {spec.layers!r} (from {ARCHS_FILE}) "
            f"not found in {type(model).__name__}"
        ) from err
    return layers


def layer_groups(model: nn.Module) -> list[list[str]]:
    """Quantizable module names grouped per decoder layer, in layer order.

    Raises ValueError if the architecture is unsupported or a listed module is missing.
    """
    spec = arch_spec(_model_type(model))
    layers = _decoder_layers(model, spec)
    groups: list[list[str]] = []
    for index in range(len(layers)):
        names = [f"{spec.layers}.{index}.{suffix}" for suffix in spec.modules]
        for name in names:
            try:
                model.get_submodule(name)
            except AttributeError as err:
                raise ValueError(
                    f"module {name!r} listed for model_type {spec.model_type!r} in {ARCHS_FILE} "
                    f"does not exist in {type(model).__name__}"
                ) from err
        groups.append(names)
    return groups


def quantizable_modules(model: nn.Module) -> list[str]:
    """Full dotted names of every quantized weight's module, in decoder-layer order."""
    return [name for group in layer_groups(model) for name in group]


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' Conv1D (GPT-2 style), whose weight is stored [in, out]."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def get_weight(module: nn.Module) -> torch.Tensor:
    """A detached float32 copy of the module's weight as [out_features, in_features]."""
    weight = module.weight.detach()
    if is_conv1d(module):
        weight = weight.t()
    return weight.to(torch.float32).contiguous().clone()


def set_weight(module: nn.Module, w: torch.Tensor) -> None:
    """Write w: [out_features, in_features] into the module (cast to its dtype, Conv1D transposed)."""
    target = module.weight
    if is_conv1d(module):
        w = w.t()
    if tuple(w.shape) != tuple(target.shape):
        raise ValueError(
            f"weight shape {tuple(w.shape)} does not fit {type(module).__name__} weight "
            f"{tuple(target.shape)} (pass [out_features, in_features])"
        )
    with torch.no_grad():
        target.copy_(w.to(dtype=target.dtype, device=target.device))
