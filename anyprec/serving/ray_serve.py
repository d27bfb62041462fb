"""The same server on Ray Serve: N replicas, each loading (mapping) the artifact once.

Ray is optional (`pip install anyprec[ray-serve]`) and imported only when a deployment is
built. Each replica builds the full app from `create_app` (its own engine, scheduler and
`/metrics`); Ray's HTTP proxy spreads requests over the replicas.

    from ray import serve
    from anyprec.serving.ray_serve import deployment
    serve.run(deployment("artifacts/smollm2-135m/packed", replicas=2))

or, from the shell, `serve run anyprec.serving.ray_serve:app_builder dir=artifacts/smollm2-135m/packed replicas=2`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anyprec.config import ServingConfig


def _builder(artifact_dir: str, engine: str, serving: ServingConfig, name: str | None):
    """The app factory a replica calls once, at start: it loads the artifact in that process."""

    def build():
        from anyprec.serving.app import create_app

        return create_app(artifact_dir, serving=serving, engine=engine, name=name)

    return build


def deployment(artifact_dir: str | Path, *, replicas: int = 2, engine: str = "auto", params: str | None = None,
               serving: ServingConfig | None = None, name: str | None = None, cpus_per_replica: float = 2.0,
               autoscaling: dict[str, Any] | None = None) -> Any:
    """A bound Ray Serve application serving `artifact_dir` (pass it to `serve.run`).

    replicas: fixed replica count, unless `autoscaling` (Ray's autoscaling_config, e.g.
    {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}) is given.
    serving: the serving settings, else the `serving:` section of `params` (or ./params.yaml),
    read here: a replica's working directory is Ray's, not the caller's.
    cpus_per_replica: Ray CPUs reserved per replica (the decode threads it runs)."""
    try:
        from ray import serve
    except ImportError:
        raise ImportError("Ray Serve is not installed: pip install -e '.[ray-serve]' (or ray[serve])") from None
    if not Path(artifact_dir, "manifest.json").is_file():
        raise FileNotFoundError(f"{artifact_dir} is not an anyprec artifact (no manifest.json); "
                                "give the packed directory `anyprec quantize` wrote")
    if serving is None:
        from anyprec.serving.cli import serving_config

        serving = serving_config(params)
    scale = {"autoscaling_config": autoscaling} if autoscaling else {"num_replicas": int(replicas)}
    # Concurrent requests per replica beyond the engine's slots queue in the replica's scheduler.
    options = {"ray_actor_options": {"num_cpus": cpus_per_replica}, "max_ongoing_requests": 64, **scale}

    @serve.deployment(name="anyprec", **options)
    @serve.ingress(_builder(str(Path(artifact_dir).resolve()), engine, serving, name))
    class AnyprecReplica:
        """One replica: the OpenAI-compatible app over its own copy of the engine."""

    return AnyprecReplica.bind()


def app_builder(args: dict[str, str]) -> Any:
    """`serve run anyprec.serving.ray_serve:app_builder dir=DIR [replicas=2] [engine=auto] [params=...]`."""
    if "dir" not in args:
        raise ValueError("give dir=<packed artifact directory>, e.g. serve run "
                         "anyprec.serving.ray_serve:app_builder dir=artifacts/smollm2-135m/packed")
    return deployment(args["dir"], replicas=int(args.get("replicas", 2)), engine=args.get("engine", "auto"),
                      params=args.get("params"), name=args.get("name"),
                      cpus_per_replica=float(args.get("cpus_per_replica", 2.0)))
