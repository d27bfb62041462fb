"""Fractional precisions (plans) behind the server: `<model>:4.5bit`, stored or computed, and the
engine that runs plan rows on the transformers path next to native integer-width rows."""

from __future__ import annotations

import argparse

import pytest
import torch

from anyprec.engine import NativeEngine, TransformersEngine
from anyprec.runtime import load_anyprec
from anyprec.serving.engines import make_engine
from tests.anyprec.serving.conftest import MODEL, STORED_PLAN

N_TOKENS = 10
PROMPT = "A bitplane holds"


def _reference(apm, prompt: str, precision: float) -> str:
    ids = apm.tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = apm.generate(ids, precision=precision, max_new_tokens=N_TOKENS, do_sample=False,
                       pad_token_id=apm.tokenizer.eos_token_id)
    return apm.tokenizer.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True).rstrip("\ufffd")


@pytest.mark.parametrize("precision", [STORED_PLAN, 4.25])
def test_fractional_model_is_the_plans_greedy_output(client, server, precision):
    """4.5 is stored in the artifact, 4.25 is planned from its objective table on first use."""
    raw = client.completions.with_raw_response.create(model=f"{MODEL}:{precision}bit", prompt=PROMPT,
                                                      max_tokens=N_TOKENS, temperature=0)
    resp = raw.parse()
    assert raw.headers["x-anyprec-bits"] == f"{precision}" and resp.model == f"{MODEL}:{precision}bit"
    avg = float(raw.headers["x-anyprec-avg-bits"])
    assert min(server[1].bits) < avg <= precision + 1e-9
    assert resp.choices[0].text == _reference(server[1].apm, PROMPT, precision)


def test_a_stored_plan_for_a_memory_budget_is_served_by_name(client, server):
    """`anyprec plan --max-bytes N` stores plan-max-bytes-N.json: `<model>:plan-max-bytes-N`."""
    (stem, plan), = server[1].named.items()
    raw = client.completions.with_raw_response.create(model=f"{MODEL}:{stem}", prompt=PROMPT,
                                                      max_tokens=N_TOKENS, temperature=0)
    resp = raw.parse()
    assert resp.model == f"{MODEL}:{stem}"
    assert float(raw.headers["x-anyprec-avg-bits"]) == pytest.approx(plan.avg_bits, abs=5e-4)
    assert 4 < plan.avg_bits < 5 and len(set(plan.bits.values())) > 1  # a real mix of widths
    assert resp.choices[0].text == _reference(server[1].apm, PROMPT, plan)


def _alone(engine, prompt: list[int], bits, tokens: list[int]) -> torch.Tensor:
    """Logits [len(tokens) + 1, V] of one sequence on its own engine, fed `tokens` after the prompt."""
    slot, logits = engine.add(prompt, bits)
    rows = [logits] + [engine.step([slot], [t], [bits])[0] for t in tokens]
    engine.release(slot)
    return torch.stack(rows)


def test_plan_rows_and_native_rows_share_a_step(chat_artifact):
    """The native engine runs a batch mixing 4.5 (a plan) and integer widths in one step: each
    row gives what it gives alone, fed the same tokens; the plan alone is the transformers path's."""
    apm = load_anyprec(chat_artifact)
    engine = make_engine(apm, "auto", max_batch=4)
    assert isinstance(engine, NativeEngine)
    prompts, bits = [[5, 17, 42], [7, 8, 9, 10], [11, 3]], [STORED_PLAN, 3, 8]
    tokens = [[(7 * i + 3 * r) % 300 for i in range(N_TOKENS)] for r in range(3)]
    alone = [_alone(NativeEngine(apm, 1), p, b, t) for p, b, t in zip(prompts, bits, tokens)]
    # the plan on the native engine is the transformers path's plan (both read the load's int8 head)
    torch.testing.assert_close(_alone(NativeEngine(apm, 1), prompts[0], STORED_PLAN, tokens[0]),
                               _alone(TransformersEngine(apm, 1), prompts[0], STORED_PLAN, tokens[0]),
                               rtol=1e-4, atol=1e-4)
    slots, mixed = [], [[] for _ in prompts]
    for i, (p, b) in enumerate(zip(prompts, bits)):
        slot, logits = engine.add(p, b)
        slots.append(slot)
        mixed[i].append(logits)
    for step in range(N_TOKENS):
        for i, row in enumerate(engine.step(slots, [t[step] for t in tokens], bits)):
            mixed[i].append(row)
    for i in range(3):
        torch.testing.assert_close(torch.stack(mixed[i]), alone[i], rtol=1e-4, atol=1e-4)
    # The plan really is another precision than its neighbours.
    assert not torch.allclose(alone[0], _alone(NativeEngine(apm, 1), prompts[0], 4, tokens[0]))
    assert engine.length(slots[0]) == len(prompts[0]) + N_TOKENS
    for s in slots:
        engine.release(s)
    assert not engine._slots


def test_serving_acts_reach_the_native_engine(chat_artifact):
    """serving.acts (or `anyprec serve --acts`) picks the native engine's activations; int8 gives
    the same logits as an engine opened with acts='int8', and a bad value is refused by name."""
    from anyprec.config import ServingConfig
    from anyprec.engine.base import EngineError
    from anyprec.serving import create_app
    from anyprec.serving.cli import add_serve_parser

    apm = load_anyprec(chat_artifact)
    app = create_app(apm=apm, serving=ServingConfig(max_batch=2, acts="int8"))
    engine = app.state.anyprec.engine
    assert isinstance(engine, NativeEngine) and engine.acts == "int8"
    prompt, tokens = [5, 17, 42], [9, 33]
    torch.testing.assert_close(_alone(engine, prompt, 4, tokens),
                               _alone(NativeEngine(apm, 1, acts="int8"), prompt, 4, tokens), rtol=0, atol=0)
    assert make_engine(apm, "auto", 2).acts == "fp32"  # the default stays exact
    with pytest.raises(EngineError, match="acts 'int4'"):
        create_app(apm=apm, serving=ServingConfig(acts="int4"))
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    assert parser.parse_args(["serve", "D", "--acts", "int8"]).acts == "int8"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "D", "--acts", "int4"])
