"""anyprec.flows: Prefect flows and deployments (see docs/DESIGN.md).

Offline/telemetry settings are applied here, before any submodule imports prefect or
mlflow: both read some settings at import time."""

from anyprec.env import apply_offline_env

apply_offline_env()
