"""The thread runner's mapped tasks at once: bounded by a per-task memory estimate."""

from __future__ import annotations

import pytest

from anyprec import stages
from anyprec.archs import layer_groups
from anyprec.config import QuantizationConfig
from anyprec.streamed_sensitivity import whole_pass_bytes


def test_tasks_at_once_is_what_fits_between_one_and_the_cap():
    gib = 2**30
    assert stages.tasks_at_once(3 * gib, 18 * gib, cap=4) == 4
    assert stages.tasks_at_once(3 * gib, 10 * gib, cap=4) == 3
    assert stages.tasks_at_once(3 * gib, 2 * gib, cap=4) == 1  # one always runs: the stage must progress


def test_a_layer_task_is_its_largest_layer_at_the_measured_bytes_per_weight(tiny_llama, tiny_model_dir):
    model, _ = tiny_llama
    largest = max(sum(model.get_submodule(n).weight.numel() for n in group) for group in layer_groups(model))
    for name in (stages.SEED, stages.NESTED):
        assert stages.mapped_task_bytes(stages.stage(name), tiny_model_dir, {}) == \
            stages.LAYER_BYTES_PER_WEIGHT * largest


@pytest.mark.parametrize("mode", ["whole", "streamed"])
def test_a_shard_task_is_the_whole_pass_or_one_streamed_layer(tiny_model_dir, mode):
    settings = {"quantization": QuantizationConfig(sensitivity=mode)}
    got = stages.mapped_task_bytes(stages.stage(stages.SENSITIVITY), tiny_model_dir, settings)
    layer = stages.mapped_task_bytes(stages.stage(stages.SEED), tiny_model_dir, {})
    assert got == (whole_pass_bytes(tiny_model_dir) if mode == "whole" else layer)
