"""The 7B-shape rehearsal: the model it writes, its RSS sampler, its extrapolation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from anyprec.rehearse import STAGES, extrapolate, write_llama
from tests.conftest import _TRAIN_TEXT


def test_written_llama_is_sharded_bf16_and_streamable(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from anyprec.streamed_sensitivity import WeightReader, streaming_unsupported

    out = write_llama(tmp_path / "m", layers=3, hidden=32, intermediate=48, heads=4, vocab=300, documents=_TRAIN_TEXT)
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert shards == [f"model-{k:05d}-of-00004.safetensors" for k in range(1, 5)]
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert model.config.num_hidden_layers == 3 and model.config.intermediate_size == 48
    assert model.dtype == torch.bfloat16
    weight_map = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(weight_map) == set(model.state_dict())
    assert weight_map["model.layers.2.mlp.down_proj.weight"] == shards[3]
    q = WeightReader(out).read(["model.layers.1.self_attn.q_proj.weight"])["model.layers.1.self_attn.q_proj.weight"]
    assert q.shape == (32, 32) and 0.01 < q.std() < 0.03
    assert len(AutoTokenizer.from_pretrained(out)) <= 300
    assert streaming_unsupported(out) is None


def test_rss_sampler_sees_an_allocation():
    # a fresh process: in a long test run the allocator may hand back pages already resident
    code = """
import time, torch
from anyprec.rehearse import RssSampler
sampler = RssSampler(interval=0.01).start()
before = sampler.rss()
block = torch.ones(64 * 2**20)  # 256 MiB of float32, every page touched
time.sleep(0.2)
sampler.stop()
assert block[-1] == 1
print(sampler.peak - before)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) > 200 * 2**20


def _run(layers: int, rss: float, per_stage: float) -> dict:
    return {"layers": layers, "peak_rss_gib": rss,
            "stages": {name: {"seconds": per_stage * layers + 1.0} for name in STAGES}}


def test_extrapolation_is_the_line_through_the_two_deepest_runs():
    ext = extrapolate([_run(1, 9.0, 5.0), _run(4, 3.0, 10.0), _run(2, 2.0, 10.0)], target=32)
    assert ext["from_layers"] == [2, 4]
    assert ext["peak_rss_gib_per_layer"] == pytest.approx(0.5)
    assert ext["peak_rss_gib"] == pytest.approx(3.0 + 28 * 0.5)
    assert ext["stages"]["seed"]["seconds"] == pytest.approx(321.0)
    assert ext["seconds_total"] == pytest.approx(321.0 * len(STAGES))


def test_machines_estimate_splits_only_the_mapped_clustering_stages():
    ext = extrapolate([_run(2, 2.0, 10.0), _run(4, 3.0, 10.0)], target=32, machines=(1, 4, 5))
    per_stage = 321.0  # 10 s per layer x 32 + 1 s
    serial = per_stage * (len(STAGES) - 2)
    assert ext["seconds_on_machines"]["1"] == pytest.approx(ext["seconds_total"])
    assert ext["seconds_on_machines"]["4"] == pytest.approx(serial + 2 * per_stage / 32 * 8, abs=0.1)
    assert ext["seconds_on_machines"]["5"] == pytest.approx(serial + 2 * per_stage / 32 * 7, abs=0.1)  # ceil(32 / 5)
