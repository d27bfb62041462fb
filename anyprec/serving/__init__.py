"""`anyprec serve`: one artifact behind an OpenAI-compatible server, a precision per request.

Library entry points: `create_app(artifact_dir)` (a FastAPI app) and
`serve(artifact_dir, host, port)` (runs it under uvicorn). Imports stay lazy so the CLI's
`--help` does not load torch or FastAPI.
"""

from __future__ import annotations

from typing import Any


def create_app(*args: Any, **kwargs: Any):
    """See `anyprec.serving.app.create_app`."""
    from anyprec.serving.app import create_app as _create_app

    return _create_app(*args, **kwargs)


def serve(*args: Any, **kwargs: Any) -> None:
    """See `anyprec.serving.cli.serve`."""
    from anyprec.serving.cli import serve as _serve

    _serve(*args, **kwargs)


__all__ = ["create_app", "serve"]
