"""Per-layer read access to a base model's weights, for the stages after sensitivity.

The seed, upscaling, objective and packing stages need one decoder layer's quantized weights
at a time (float32 [out_features, in_features]) and, for packing, the model's other tensors,
config and tokenizer. `ModelWeights` builds the model on the meta device (names, shapes,
Conv1D flags, tied parameters; no memory) and reads tensors lazily from the model's
safetensors files (`WeightReader`: one file opened per read, nothing mapped afterwards), so
the resident set does not grow with depth. A folder without safetensors, or whose tensor
names are not the model's, is loaded whole once instead (logged), as every stage did before.

Values are those `anyprec.models.load_model` gives: checkpoint tensors cast to float32.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anyprec import archs

log = logging.getLogger(__name__)


class ModelWeights:
    """One base model's weights, read a decoder layer at a time.

    `groups[i]` are the quantized module names of decoder layer i (`archs.layer_groups`).
    """

    def __init__(self, model_ref: str | Path):
        from transformers import AutoConfig, AutoModelForCausalLM

        from anyprec.models import resolve_model_dir

        self.model_dir = resolve_model_dir(model_ref)
        config = AutoConfig.from_pretrained(self.model_dir, local_files_only=True)
        with torch.device("meta"):
            self.meta = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        self.groups = archs.layer_groups(self.meta)
        self.reader = self._lazy_reader()
        self._whole: nn.Module | None = None

    def _lazy_reader(self) -> Any:
        """A WeightReader over the model's safetensors, or None when they cannot serve every weight."""
        from anyprec.streamed_sensitivity import WeightReader

        if not any(self.model_dir.glob("*.safetensors")):
            log.info("%s has no safetensors: the model is loaded whole", self.model_dir)
            return None
        reader = WeightReader(self.model_dir)
        missing = [n for n in self.dense_names() + self.weight_names() if n not in reader.files]
        if missing:
            log.info("%s: %d tensors (e.g. %s) are not stored under the model's names: loaded whole",
                     self.model_dir, len(missing), missing[0])
            return None
        return reader

    def weight_names(self) -> list[str]:
        """`<module>.weight` of every quantized module, in layer order."""
        return [f"{name}.weight" for group in self.groups for name in group]

    def _tied(self) -> dict[str, str]:
        """{alias: source} of parameters the model shares (tied embeddings): same Parameter object."""
        first: dict[int, str] = {}
        tied: dict[str, str] = {}
        for name, tensor in self.meta.state_dict(keep_vars=True).items():
            if id(tensor) in first:
                tied[name] = first[id(tensor)]
            else:
                first[id(tensor)] = name
        return tied

    def dense_names(self) -> list[str]:
        """State-dict names of every tensor that is neither quantized nor a tied alias."""
        skip = set(self.weight_names()) | set(self._tied())
        return [name for name in self.meta.state_dict() if name not in skip]

    def whole(self) -> nn.Module:
        """The whole fp32 model (loaded once; only where lazy reads are impossible)."""
        if self._whole is None:
            from anyprec.models import load_model

            self._whole, _ = load_model(self.model_dir)
        return self._whole

    def conv1d(self, name: str) -> bool:
        return archs.is_conv1d(self.meta.get_submodule(name))

    def weights(self, names: list[str]) -> dict[str, torch.Tensor]:
        """{module name: float32 [out_features, in_features]} of the quantized modules `names`."""
        if self.reader is None:
            return {name: archs.get_weight(self.whole().get_submodule(name)) for name in names}
        read = self.reader.read([f"{name}.weight" for name in names])
        return {name: (read[f"{name}.weight"].t() if self.conv1d(name) else read[f"{name}.weight"]).contiguous()
                for name in names}

    def dense_state(self) -> dict[str, torch.Tensor]:
        """Every unquantized tensor by state-dict name (float32); tied aliases share their source's
        tensor object, as in a loaded model's state_dict."""
        if self.reader is None:
            quantized = set(self.weight_names())
            return {k: v for k, v in self.whole().state_dict().items() if k not in quantized}
        state = self.reader.read(self.dense_names())
        for alias, source in self._tied().items():
            if source in state:
                state[alias] = state[source]
        return {name: state[name] for name in self.meta.state_dict() if name in state}

    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)

    def generation_config(self) -> Any:
        """The folder's generation_config.json, else the one derived from config (as from_pretrained does)."""
        from transformers import GenerationConfig

        if (self.model_dir / "generation_config.json").is_file():
            return GenerationConfig.from_pretrained(self.model_dir, local_files_only=True)
        return GenerationConfig.from_model_config(self.meta.config)
