"""The pipeline as data: every evaluation stage's settings exist in Params and fit its task."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from anyprec import stages
from anyprec.config import BenchmarkConfig, ModelEntry, Params
from anyprec.tasks.pipeline import EVAL_STAGES, REPORT_NAMES, sections, stage_names

REPO = Path(__file__).resolve().parents[2]
PARAMS = Params(models={"m": ModelEntry(path="embedded")})


def _lookup(params: Params, dotted: str):
    value = params
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("spec", EVAL_STAGES, ids=lambda s: s.name)
def test_arguments_are_exactly_what_the_task_takes(spec):
    taken = set(inspect.signature(spec.task.fn).parameters) - {"base", "packed", "out"}
    assert set(spec.arguments(PARAMS)) == taken


@pytest.mark.parametrize("spec", EVAL_STAGES, ids=lambda s: s.name)
def test_declared_params_keys_and_code_paths_exist(spec):
    for key in spec.params:
        _lookup(PARAMS, key)  # AttributeError names a key Params does not have
    for path in spec.code:
        assert (REPO / path).exists(), path


def test_stage_names_run_quantization_then_evaluation_once_each():
    names = stage_names()
    assert names == [s.name for s in stages.STAGES] + list(REPORT_NAMES)
    assert len(set(names)) == len(names)


def test_bench_stage_is_skipped_without_bit_widths():
    bench = next(s for s in EVAL_STAGES if s.name == "bench")
    assert bench.enabled(PARAMS)
    assert not bench.enabled(PARAMS.model_copy(update={"benchmark": BenchmarkConfig(bits=[])}))


def test_sections_are_the_typed_sections_by_name():
    got = sections(PARAMS)
    assert set(got) == set(Params.model_fields) and got["calibration"] is PARAMS.calibration
