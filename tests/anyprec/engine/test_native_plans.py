"""Plans (a bit-width per module) in the native engine: a plan row against the transformers
engine running the same plan, a uniform plan against the plain width, plan rows mixed with
integer rows in one step, and a plan asking for a width that is not loaded."""

from __future__ import annotations

import random

import pytest
import torch

from anyprec.archs import quantizable_modules
from anyprec.engine import EngineError, NativeEngine, TransformersEngine
from anyprec.kernels import cpu
from anyprec.plans import Plan, PlanResolver
from tests.anyprec.engine.engine_testlib import BITS, build_apm, tiny_config

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="native CPU kernels not built")

TOL = dict(rtol=1e-4, atol=1e-5)
PROMPT = [5, 17, 42, 9, 33, 2, 100]


@pytest.fixture(scope="module")
def apm(tmp_path_factory):
    """The tiny model with what load_anyprec gives a real artifact for plans: module names
    (the keys of a plan), their shapes in the manifest, and the artifact's plan resolver."""
    apm = build_apm(tiny_config("llama", num_hidden_layers=3))
    modules = {}
    for name in quantizable_modules(apm.model):
        mod = apm.model.get_submodule(name)
        mod.name = name
        modules[name] = {"out_features": mod.out_features, "in_features": mod.in_features}
    apm.manifest["modules"] = modules
    apm._state.resolve = PlanResolver(tmp_path_factory.mktemp("plans"), apm.manifest, list(BITS))
    return apm


def _random_plan(apm, seed: int) -> Plan:
    rng = random.Random(seed)
    return apm.resolve_precision({n: rng.choice(BITS) for n in apm.manifest["modules"]})


@pytest.mark.parametrize("tile_rows", [0, 2])  # 2: the prompt's modules run by the tile GEMM
def test_plan_rows_match_the_transformers_engine(apm, tile_rows):
    plan = _random_plan(apm, 1)
    assert len(set(plan.bits.values())) > 3  # the plan really mixes widths
    engine, oracle = NativeEngine(apm, head="fp16"), TransformersEngine(apm)
    engine.tile_rows = tile_rows
    slot, logits = engine.add(PROMPT, plan)
    ref_slot, ref = oracle.add(PROMPT, plan)
    torch.testing.assert_close(logits, ref, **TOL)
    for token in (3, 99, 250):
        torch.testing.assert_close(engine.step([slot], [token], [plan]), oracle.step([ref_slot], [token], [plan]),
                                   **TOL)


def test_uniform_plan_equals_the_plain_width(apm):
    plan = apm.resolve_precision({n: 5 for n in apm.manifest["modules"]})
    engine = NativeEngine(apm, max_batch=2, head="fp16")
    slot_plan, by_plan = engine.add(PROMPT, plan)
    slot_bits, by_bits = engine.add(PROMPT, 5)
    assert torch.equal(by_plan, by_bits)
    out = engine.step([slot_plan, slot_bits], [11, 11], [plan, 5])
    assert torch.equal(out[0], out[1])


def test_plan_and_integer_rows_share_a_step(apm):
    plans = [_random_plan(apm, 2), _random_plan(apm, 3)]
    widths = [plans[0], 3, plans[1], 8, plans[0], 4]
    engine = NativeEngine(apm, max_batch=len(widths), head="fp16")
    oracle = TransformersEngine(apm, max_batch=len(widths))
    prompts = [PROMPT[: 2 + i] for i in range(len(widths))]
    slots = [engine.add(p, w)[0] for p, w in zip(prompts, widths)]
    ref_slots = [oracle.add(p, w)[0] for p, w in zip(prompts, widths)]
    for step in range(2):
        tokens = [(13 * step + 5 * i) % 300 for i in range(len(widths))]
        torch.testing.assert_close(engine.step(slots, tokens, widths), oracle.step(ref_slots, tokens, widths), **TOL)


def test_plan_with_a_width_not_loaded_is_refused(apm):
    engine = NativeEngine(apm, head="fp16")
    names = list(apm.manifest["modules"])
    bad = Plan({n: 2 if i == 0 else 4 for i, n in enumerate(names)}, 3.9, 3.9, 0)
    with pytest.raises(EngineError, match="precision 2 is not loaded"):
        engine.add(PROMPT, bad)
    with pytest.raises(EngineError, match="no width for module"):
        engine.add(PROMPT, Plan({n: 4 for n in names[1:]}, 4.0, 4.0, 0))
