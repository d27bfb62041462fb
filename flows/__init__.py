"""anyprec.flows: Prefect flows and deployments (see docs/DESIGN.md). Offline settings are applied by
`import anyprec` (anyprec/__init__.py), before any submodule imports Prefect or MLflow."""

