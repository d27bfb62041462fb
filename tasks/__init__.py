"""anyprec.tasks: Prefect tasks over the core (see docs/DESIGN.md). Offline settings are applied by
`import anyprec` (anyprec/__init__.py), before any submodule imports Prefect or MLflow."""

import logging

# The library's progress lines (per layer, per stage) are INFO: let them through to Prefect.
logging.getLogger("anyprec").setLevel(logging.INFO)
