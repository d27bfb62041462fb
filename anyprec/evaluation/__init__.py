"""Evaluation like the paper: perplexity, lm-eval zero-shot tasks and baselines per bit-width.

bigbench: BIG-bench tasks -> local jsonl + lm-eval YAML; lm_eval_runner: lm-eval on an
in-memory model; baselines: RTN / dedicated / reference / ours quantization and weight
swapping; runner: everything at every bit-width; table: markdown, JSON, MLflow rows, plots.
Import-light: submodules import torch / lm-eval only when used.
"""
