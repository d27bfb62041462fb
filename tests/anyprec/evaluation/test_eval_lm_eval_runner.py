"""lm-eval on an in-memory tiny model, checked against log-likelihoods computed directly."""

from __future__ import annotations

import copy

import pytest
import torch

from anyprec.evaluation import bigbench as bb
from anyprec.evaluation import lm_eval_runner as runner


def _choice_logprob(model, tok, context: str, choice: str) -> float:
    """Sum log p(choice tokens | context), split the way lm-eval splits a pair."""
    stripped = context.rstrip()  # lm-eval moves trailing whitespace onto the continuation
    context, choice = stripped, context[len(stripped):] + choice
    whole = tok(context + choice, add_special_tokens=False)["input_ids"]
    n_ctx = len(tok(context, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    return float(sum(logp[pos - 1, whole[pos]] for pos in range(n_ctx, len(whole))))


def _expected_acc(model, tok, records: list[dict]) -> float:
    hits = 0
    for rec in records:
        scores = [_choice_logprob(model, tok, rec["query"], c) for c in rec["choices"]]
        hits += int(max(range(len(scores)), key=scores.__getitem__) == rec["gold"])
    return hits / len(records)


def test_split_specs():
    bb_specs, builtin = runner.split_task_specs(
        ["bb_step_inference", "social_iqa", "cause_and_effect:one_sentence", "bigbench:navigate", "arc_easy"])
    assert bb_specs == ["bb_step_inference", "social_iqa", "cause_and_effect:one_sentence", "navigate"]
    assert builtin == ["arc_easy"]


@pytest.mark.parametrize("style", list(bb.PromptStyle))
def test_suite_on_tiny_model_matches_direct_loglikelihood(tiny_llama, bb_sdist, tmp_path, bb_files, style):
    model, tok = tiny_llama
    suite = runner.build_suite(["bb_cause_and_effect", "social_iqa"], bb_sdist, tmp_path / "tasks", style)
    assert suite.names == {"bb_cause_and_effect": "cause_and_effect", "bb_social_iqa": "social_iqa"}
    lm = runner.make_lm(model, tok, batch_size=2)
    limit = 3
    results = runner.evaluate_suite(lm, suite, limit=limit)
    social = bb.task_to_records(bb_files["social_iqa/task.json"], style)[:limit]
    assert results["social_iqa"]["n"] == limit
    assert results["social_iqa"]["acc"] == pytest.approx(_expected_acc(model, tok, social))
    cause = [r for rel in ("one_sentence", "two_sentences")
             for r in bb.task_to_records(bb_files[f"cause_and_effect/{rel}/task.json"], style)][:limit]
    assert results["cause_and_effect"]["acc"] == pytest.approx(_expected_acc(model, tok, cause))
    again = runner.evaluate_suite(lm, suite, limit=limit)
    assert again == results  # the loaded suite is reusable (one run per bit-width)


def test_suite_follows_in_place_weight_changes(tiny_llama, bb_sdist, bb_files, tmp_path):
    """One HFLM serves every bit-width: it must see weights changed in place."""
    base, tok = tiny_llama
    model = copy.deepcopy(base)  # the session fixture must stay untouched
    suite = runner.build_suite(["social_iqa"], bigbench_source=bb_sdist, task_dir=tmp_path / "tasks")
    lm = runner.make_lm(model, tok, batch_size=4)
    records = bb.task_to_records(bb_files["social_iqa/task.json"])
    accs = []
    for seed in range(3):
        torch.manual_seed(seed)
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, 2.0)
        accs.append(runner.evaluate_suite(lm, suite)["social_iqa"]["acc"])
        assert accs[-1] == pytest.approx(_expected_acc(model, tok, records))
    assert len(set(accs)) > 1  # the changes did reach the scores
