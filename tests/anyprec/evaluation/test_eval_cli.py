"""`anyprec eval` end to end on the tiny packed artifact, and the runner's two paths for "ours"."""

from __future__ import annotations

import argparse
import copy
import json

import pytest

from anyprec.config import EvaluationConfig
from anyprec.eval_cli import add_eval_parser
from anyprec.evaluation import runner
from anyprec.runtime import load_anyprec

BITS = [3, 8]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="anyprec")
    add_eval_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_parser_defaults():
    args = _parse(["eval", "some/dir"])
    assert args.bits == [3, 4, 5, 6, 7, 8]
    assert args.methods == ["base", "rtn", "dedicated", "reference", "ours"]
    assert args.func.__name__ == "run_eval"


def test_eval_command_end_to_end(tiny_quantized, bb_sdist, tmp_path, monkeypatch, capsys):
    artifact, work = tiny_quantized
    monkeypatch.setenv("ANYPREC_CACHE", str(tmp_path / "cache"))  # converted tasks go here
    out = tmp_path / "eval.json"
    args = _parse(["eval", str(artifact), "--bits", "3", "4.5", "8", "--tasks", "social_iqa",
                   "--limit", "2", "--bigbench-source", str(bb_sdist), "--corpus", "news",
                   "--ppl-max-tokens", "300", "--window", "64", "--batch-size", "2",
                   "--work-dir", str(work), "--json", str(out), "--markdown", str(tmp_path / "eval.md"),
                   "--plots", str(tmp_path / "plots"), "--no-progress"])
    assert args.func(args) == 0
    report = json.loads(out.read_text())
    assert set(report["methods"]) == {"rtn", "dedicated", "reference", "ours"}
    for method, per_bits in report["methods"].items():
        # a fractional precision is a plan of the packed artifact: ours only
        assert set(per_bits) == {"3", "8"} | ({"4.5"} if method == "ours" else set())
        for metrics in per_bits.values():
            assert set(metrics) >= {"ppl_news", "acc_social_iqa", "acc_mean"}
    base = report["base"]["ppl_news"]
    assert report["methods"]["ours"]["8"]["ppl_news"] == pytest.approx(base, rel=0.02)
    assert report["methods"]["rtn"]["3"]["ppl_news"] != pytest.approx(base, rel=1e-3)
    # The artifact was built from the same Fisher: our in-process objective is its objective.
    manifest = json.loads((artifact / "manifest.json").read_text())
    for b in BITS:
        assert report["objective"]["ours"][str(b)]["total"] == pytest.approx(
            float(manifest["objective"][str(b)]), rel=1e-6)
    plan = load_anyprec(artifact).resolve_precision(4.5)
    ours = report["objective"]["ours"]
    assert ours["4.5"]["total"] == pytest.approx(plan.objective, rel=1e-6)
    assert ours["8"]["total"] < ours["4.5"]["total"] < ours["3"]["total"]
    out_text = capsys.readouterr().out
    assert "dedicated" in report["deltas"] and "### ppl_news" in out_text and "| 4.5 |" in out_text
    assert (tmp_path / "plots" / "ppl_news.png").is_file()


def test_ours_in_process_matches_artifact(tiny_quantized, tiny_llama):
    from anyprec.eval_cli import load_fisher
    from anyprec.packed import read_manifest

    artifact, work = tiny_quantized
    manifest = read_manifest(artifact)
    fisher, _ = load_fisher(manifest, work, progress=False)
    model, tok = copy.deepcopy(tiny_llama[0]), tiny_llama[1]
    config = EvaluationConfig(bits=BITS, tasks=[], ppl_corpora=["news"], ppl_window=64, ppl_max_tokens=300)
    in_process = runner.run_evaluation(model, tok, fisher, config, manifest, ["ours"], progress=False)
    packed = runner.run_evaluation(model, tok, fisher, config, manifest, ["ours"],
                                   load_anyprec(artifact, bits=BITS), progress=False)
    for b in map(str, BITS):
        # fp16 LUTs in the artifact against float32 in process: close, not bit-equal.
        assert packed["methods"]["ours"][b]["ppl_news"] == pytest.approx(
            in_process["methods"]["ours"][b]["ppl_news"], rel=2e-3)


def test_cli_defaults_are_the_typed_params_defaults():
    from anyprec.config import EvaluationConfig

    args, cfg = _parse(["eval", "some/dir"]), EvaluationConfig()
    assert (args.bits, args.tasks, args.limit) == (cfg.bits, cfg.tasks, cfg.limit)
    assert (args.corpus, args.window, args.ppl_max_tokens) == (cfg.ppl_corpora, cfg.ppl_window, cfg.ppl_max_tokens)
