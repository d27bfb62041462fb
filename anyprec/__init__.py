"""anyprec: quantize a causal LM once, serve every bit-width from 3 to 8 from one artifact.

Kept import-light on purpose: `import anyprec` must not pull torch, transformers or the
pipeline packages; import the submodule you need (`anyprec.runtime`, `anyprec.quantize`, ...).
"""

__version__ = "0.1.0"

from anyprec.env import apply_offline_env as _apply_offline_env

# Once, before any submodule imports transformers, Prefect or MLflow (which read these at import).
_apply_offline_env()
