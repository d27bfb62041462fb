"""`anyprec serve DIR`: the command line and the blocking `serve()` entry point."""

from __future__ import annotations

import argparse
from pathlib import Path

from anyprec.engine.native import ACT_MODES

LOOPBACK = "127.0.0.1"


def serving_config(params: str | Path | None):
    """The `serving:` section of params.yaml (`params` or ./params.yaml when present), else defaults."""
    from anyprec.config import ServingConfig, load_params

    path = Path(params) if params else Path("params.yaml")
    if params is None and not path.is_file():
        return ServingConfig()
    return load_params(path).serving


def serve(artifact_dir: str | Path, host: str = LOOPBACK, port: int = 8000, engine: str = "auto",
          params: str | Path | None = None, name: str | None = None, max_batch: int | None = None,
          log_level: str = "info", acts: str | None = None) -> None:
    """Load the artifact and serve it until interrupted (binds loopback unless `host` says otherwise)."""
    import uvicorn

    from anyprec.serving.app import create_app

    cfg = serving_config(params)
    if max_batch is not None:
        cfg = cfg.model_copy(update={"max_batch": max_batch})
    if acts is not None:
        cfg = cfg.model_copy(update={"acts": acts})
    app = create_app(artifact_dir, serving=cfg, engine=engine, name=name)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"--port {text}: give 1..65535")
    return port


def cmd_serve(args: argparse.Namespace) -> int:
    serve(args.dir, args.host, args.port, args.engine, args.params, args.name, args.max_batch, acts=args.acts)
    return 0


def add_serve_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `serve DIR` to a CLI's subparsers."""
    p = subparsers.add_parser("serve", help="OpenAI-compatible server: one artifact, a precision per request")
    p.add_argument("dir", help="packed artifact directory")
    p.add_argument("--host", default=LOOPBACK, help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--engine", choices=["auto", "native", "transformers"], default="auto",
                   help="decode engine (default auto: the fastest this artifact supports)")
    p.add_argument("--params", default=None, help="params.yaml with a serving: section (default ./params.yaml)")
    p.add_argument("--name", default=None, help="served model name (default: the base model's name)")
    p.add_argument("--max-batch", type=int, default=None, help="sequences decoded together (default serving.max_batch)")
    p.add_argument("--acts", choices=ACT_MODES, default=None,
                   help="native engine activations: fp32 (exact) or int8 (faster, see docs/ENGINE.md; "
                        "default serving.acts, else fp32)")
    p.set_defaults(func=cmd_serve)
    return p


MAX_CLIENTS, MAX_SECONDS = 64, 3600


def _bench_serve(args: argparse.Namespace) -> int:
    from anyprec.serving.loadtest import run_bench_serve

    return run_bench_serve(args)


def _bench_route(args: argparse.Namespace) -> int:
    from anyprec.serving.route_eval import run_bench_route

    return run_bench_route(args)


def _add_bench_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="load test of `anyprec serve` on 127.0.0.1: req/s, tok/s, latency, TTFT, RSS")
    p.add_argument("dir", help="packed artifact directory (the server is started in this process)")
    p.add_argument("--url", default=None, help="use a running server on 127.0.0.1 instead, e.g. http://127.0.0.1:8000")
    p.add_argument("--clients", type=int, default=8, help=f"concurrent clients (1..{MAX_CLIENTS}, default 8)")
    p.add_argument("--seconds", type=float, default=60.0, help=f"length of the run (max {MAX_SECONDS}; default 60)")
    p.add_argument("--max-tokens", type=int, default=32, help="completion tokens per request (default 32)")
    p.add_argument("--models", nargs="+", default=["auto"],
                   help="precisions the clients cycle through: auto, 3bit..8bit (default: auto)")
    p.add_argument("--chat", action="store_true", help="send chat completions (the prompt as a user message)")
    p.add_argument("--stop-at-eos", action="store_true",
                   help="let requests end at end-of-sequence (default: ignore_eos, exactly --max-tokens each)")
    p.add_argument("--engine", choices=["auto", "native", "transformers"], default="auto")
    p.add_argument("--params", default=None, help="params.yaml with a serving: section (default ./params.yaml)")
    p.add_argument("--json", default=None, help="write the summary to this JSON file")
    p.set_defaults(func=_bench_serve)


def _add_bench_route(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("route", help=":auto vs fixed precisions on held-out task prompts: accuracy, tok/s, CPU-s")
    p.add_argument("dir", help="packed artifact directory")
    p.add_argument("--tasks", nargs="+", default=None, help="BIG-bench task specs (default: evaluation.tasks)")
    p.add_argument("--prompts", default=None, help="JSONL of {query, choices, gold[, task]} instead of --tasks")
    p.add_argument("--limit", type=int, default=10, help="prompts per task (default 10)")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens generated per request (default 16)")
    p.add_argument("--policies", nargs="+", default=["auto", "8", "3"], help="auto and/or bit-widths (default auto 8 3)")
    p.add_argument("--engine", choices=["auto", "native", "transformers"], default="auto")
    p.add_argument("--params", default=None, help="params.yaml (serving.auto policy; default ./params.yaml)")
    p.add_argument("--json", default=None, help="write per-policy summaries and per-prompt rows here")
    p.add_argument("--markdown", default=None, help="write the markdown table here")
    p.add_argument("--mlflow", default=None, metavar="TRACKING_URI",
                   help="also log the evaluation as an MLflow run there (e.g. sqlite:///mlflow.db; needs the "
                        "pipeline extra)")
    p.add_argument("--mlflow-experiment", default="anyprec-route", help="MLflow experiment (default anyprec-route)")
    p.set_defaults(func=_bench_route)


def add_serving_benches(sub: argparse._SubParsersAction) -> None:
    """Register `bench serve` (load test) and `bench route` (:auto evaluation) under `bench`."""
    _add_bench_serve(sub)
    _add_bench_route(sub)
