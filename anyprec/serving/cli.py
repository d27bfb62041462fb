"""`anyprec serve DIR`: the command line and the blocking `serve()` entry point."""

from __future__ import annotations

import argparse
from pathlib import Path

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
          log_level: str = "info") -> None:
    """Load the artifact and serve it until interrupted (binds loopback unless `host` says otherwise)."""
    import uvicorn

    from anyprec.serving.app import create_app

    cfg = serving_config(params)
    if max_batch is not None:
        cfg = cfg.model_copy(update={"max_batch": max_batch})
    app = create_app(artifact_dir, serving=cfg, engine=engine, name=name)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"--port {text}: give 1..65535")
    return port


def cmd_serve(args: argparse.Namespace) -> int:
    serve(args.dir, args.host, args.port, args.engine, args.params, args.name, args.max_batch)
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
    p.set_defaults(func=cmd_serve)
    return p
