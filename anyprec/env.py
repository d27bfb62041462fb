"""Offline and telemetry settings, and the per-user cache directory.

Nothing in this project may reach a model hub or a telemetry endpoint: models and data
come from local paths or installed packages. `apply_offline_env` sets the variables the
libraries read (without overriding a value the user already chose).
"""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE_ENV: dict[str, str] = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_OFFLINE": "1",
    # Progress lines of the library (logger "anyprec") reach a Prefect run's logs; outside a
    # run (the DVC entry point) they stay local instead of warning about a missing run.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "anyprec",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    # Prefect's 20 s default start-up timeout is tight on a shared 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}


def apply_offline_env() -> dict[str, str]:
    """Set every offline/telemetry variable that is not already set.

    Returns the variables' effective values (user-set values win).
    """
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in OFFLINE_ENV}


def cache_dir() -> Path:
    """The anyprec cache directory: $ANYPREC_CACHE, else ~/.cache/anyprec (created)."""
    path = Path(os.environ.get("ANYPREC_CACHE") or Path.home() / ".cache" / "anyprec")
    path = path.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
