"""`anyprec bench route DIR`: `:auto` against fixed precisions on the held-out evaluation prompts.

For every prompt (the BIG-bench multiple-choice tasks of `evaluation.tasks`, first `--limit`
of each) and every policy (auto, and each fixed bit-width asked for), the policy's bit-width
serves the prompt twice, one request after the other (no load, so `:auto` decides from the
prompt alone):
  - accuracy: the choice with the highest summed log-likelihood as continuation is the answer;
  - cost: prefill + `--max-tokens` greedy tokens through the serving engine; wall seconds and
    process CPU-seconds (time.process_time, every thread: the energy proxy) per request.
A (prompt, bit-width) pair is measured once and shared by the policies that pick it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch

from anyprec.fileio import write_json_atomic, write_text_atomic


def load_prompts(tasks: list[str], limit: int, prompts_file: str | None) -> list[dict]:
    """Records {task, query, choices, gold}: from a JSONL file, else the converted BIG-bench tasks."""
    if prompts_file:
        rows = [json.loads(line) for line in Path(prompts_file).read_text(encoding="utf-8").splitlines() if line]
        return [{"task": r.get("task", Path(prompts_file).stem), **r} for r in rows][:limit * max(1, len(tasks))]
    from anyprec.evaluation.bigbench import ensure_tasks

    task_dir, keys = ensure_tasks(tasks)
    records = []
    for key in keys:
        lines = (task_dir / f"{key.name}.jsonl").read_text(encoding="utf-8").splitlines()
        records += [{"task": key.lm_eval_name, **json.loads(line)} for line in lines[:limit]]
    return records


def choice_scores(apm, ctx_ids: list[int], choices: list[str], bits: int) -> list[float]:
    """Summed log-probability of each choice's tokens after the context, at `bits`."""
    tok, scores = apm.tokenizer, []
    for choice in choices:
        cont = list(tok(choice, add_special_tokens=False)["input_ids"])
        ids = torch.tensor([ctx_ids + cont])
        with torch.inference_mode():
            logp = torch.log_softmax(apm(input_ids=ids, precision=bits).logits[0, :-1].float(), dim=-1)
        targets = torch.tensor(cont)
        scores.append(float(logp[len(ctx_ids) - 1:].gather(1, targets[:, None]).sum()))
    return scores


def decode_cost(engine, ids: list[int], bits: int, max_tokens: int) -> dict:
    """Prefill + greedy decode of up to `max_tokens` tokens: wall s, CPU s, tokens."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    slot, logits = engine.add(ids, bits)
    tokens = 1
    try:
        while tokens < max_tokens and engine.length(slot) < engine.context_length:
            logits = engine.step([slot], [int(torch.argmax(logits))], [bits])[0]
            tokens += 1
    finally:
        engine.release(slot)
    return {"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0, "tokens": tokens}


def evaluate(apm, engine, router, records: list[dict], policies: list[str], max_tokens: int) -> dict:
    """Per policy: accuracy, tokens/s, CPU-seconds per request, bit-width histogram; plus per-prompt rows."""
    tok = apm.tokenizer
    warm_ids = list(tok(records[0]["query"])["input_ids"])[:32]
    for bits in apm.bits_available:  # first-call costs (plans, allocations) are not a request's cost
        decode_cost(engine, warm_ids, bits, 2)
    measured: dict[tuple[int, int], dict] = {}
    rows = []
    for i, rec in enumerate(records):
        ids = list(tok(rec["query"])["input_ids"])[-(engine.context_length - max_tokens - 8):]
        row = {"task": rec["task"], "tokens": len(ids), "policies": {}}
        for policy in policies:
            choice = router.choose(rec["query"], len(ids), waiting=0) if policy == "auto" else None
            bits = choice.bits if choice else int(policy)
            if (i, bits) not in measured:
                scores = choice_scores(apm, ids, rec["choices"], bits)
                correct = max(range(len(scores)), key=scores.__getitem__) == rec["gold"]
                measured[(i, bits)] = {"correct": correct, **decode_cost(engine, ids, bits, max_tokens)}
            row["policies"][policy] = {"bits": bits, **measured[(i, bits)],
                                       **({"score": choice.score, "cues": list(choice.cues)} if choice else {})}
        rows.append(row)
    return {"policies": {p: _summary([r["policies"][p] for r in rows]) for p in policies}, "prompts": rows}


def _summary(items: list[dict]) -> dict:
    n = len(items)
    wall, tokens = sum(x["wall_s"] for x in items), sum(x["tokens"] for x in items)
    return {"requests": n, "accuracy": sum(x["correct"] for x in items) / n, "tokens_per_s": tokens / wall,
            "cpu_s_per_request": sum(x["cpu_s"] for x in items) / n, "wall_s_per_request": wall / n,
            "mean_bits": sum(x["bits"] for x in items) / n,
            "bits_histogram": {str(b): c for b, c in sorted(Counter(x["bits"] for x in items).items())}}


def markdown_table(result: dict) -> str:
    lines = ["| policy | requests | accuracy | tok/s | CPU-s / request | mean bits | bit-widths chosen |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for policy, s in result["policies"].items():
        name = ":auto" if policy == "auto" else f"always {policy}-bit"
        hist = ", ".join(f"{b}: {c}" for b, c in s["bits_histogram"].items())
        lines.append(f"| {name} | {s['requests']} | {s['accuracy']:.3f} | {s['tokens_per_s']:.1f} | "
                     f"{s['cpu_s_per_request']:.3f} | {s['mean_bits']:.2f} | {hist} |")
    return "\n".join(lines)


def run_bench_route(args: argparse.Namespace) -> int:
    from anyprec.runtime import load_anyprec
    from anyprec.serving.engines import make_engine
    from anyprec.serving.cli import serving_config
    from anyprec.serving.router import Router

    tasks = args.tasks or _default_tasks(args.params)
    records = load_prompts(tasks, args.limit, args.prompts)
    if not records:
        raise ValueError("no prompts to evaluate: check --tasks / --prompts and --limit")
    apm = load_anyprec(args.dir)
    bad = [p for p in args.policies if p != "auto" and (not p.isdigit() or int(p) not in apm.bits_available)]
    if bad:
        raise ValueError(f"--policies {bad}: give auto or bit-widths the artifact holds ({apm.bits_available})")
    cfg = serving_config(args.params)
    router = Router(cfg.auto, apm.bits_available)
    result = evaluate(apm, make_engine(apm, args.engine, 1), router, records, args.policies, args.max_tokens)
    result["settings"] = {"artifact": str(args.dir), "tasks": tasks, "limit": args.limit, "max_tokens": args.max_tokens,
                          "policies": args.policies, "engine": args.engine, "prompts": len(records),
                          "router": cfg.auto.model_dump(), "torch_threads": torch.get_num_threads()}
    table = markdown_table(result)
    print(table)
    if args.json:
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")
    if args.markdown:
        write_text_atomic(args.markdown, table + "\n")
        print(f"wrote {args.markdown}")
    if args.mlflow:
        # MLflow is a pipeline dependency: its logging lives in anyprec.tasks, imported on demand.
        from anyprec.tasks.route_tracking import log_route_eval

        run_id = log_route_eval(result, table, args.mlflow, args.mlflow_experiment)
        print(f"logged MLflow run {run_id} in experiment {args.mlflow_experiment!r} at {args.mlflow}")
    return 0


def _default_tasks(params: str | None) -> list[str]:
    from anyprec.config import EvaluationConfig, load_params

    path = Path(params or "params.yaml")
    return list(load_params(path).evaluation.tasks if path.is_file() else EvaluationConfig().tasks)

