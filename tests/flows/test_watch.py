"""watch-base-models: a model folder dropped into the inbox gets a quantize-eval run, once."""

from __future__ import annotations

import shutil

from anyprec.flows.watch import Dispatch, watch_base_models
from anyprec.tasks.layout import Layout


def by_name(candidates):
    return {c.name: c for c in candidates}


def test_inbox_model_is_quantized_once(prefect_harness, pipeline_root, tiny_model_dir):
    import mlflow

    params_file = str(pipeline_root / "params.yaml")
    layout = Layout.from_file(params_file)
    before = by_name(watch_base_models(params_file=params_file, dispatch=Dispatch.SUBFLOW))
    assert "llama2-7b" not in before  # registered but its folder is missing: skipped, not failed
    assert "dropped" not in before

    shutil.copytree(tiny_model_dir, layout.inbox_dir / "dropped")
    seen = by_name(watch_base_models(params_file=params_file, dispatch=Dispatch.SUBFLOW))
    assert seen["dropped"].due and seen["dropped"].from_inbox
    assert (layout.stage_path("dropped", "packed") / "manifest.json").is_file()
    mlflow.set_tracking_uri(layout.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["anyprec"], filter_string="tags.model = 'dropped'")
    assert len(runs) == 1 + len(layout.params.evaluation.bits)  # parent + one child per bit-width

    again = by_name(watch_base_models(params_file=params_file, dispatch=Dispatch.SUBFLOW))
    assert not again["dropped"].due and again["dropped"].reason == "quantized at this sha256"
    assert not again["tiny"].due
