"""Where every pipeline stage reads and writes, derived from params.yaml.

Paths in params.yaml are relative to the folder holding params.yaml (the repository root
for the checked-in file), so a flow run, a DVC stage and a test with its own params file in
a temporary folder all agree on the same layout (docs/DESIGN.md, "Artifact paths"):

    <artifacts_dir>/<model>/<stage>/     one folder per stage of anyprec.stages.STAGES
    <reports_dir>/<model>/<stage>.json   one report per evaluation stage (anyprec.tasks.pipeline)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from anyprec import stages
from anyprec.config import Params, load_params


@dataclass(frozen=True)
class Layout:
    """Resolved paths of one params file (root = the folder holding it)."""

    root: Path
    params: Params
    params_file: Path | None = None

    @classmethod
    def from_file(cls, params_file: str | Path) -> "Layout":
        """Load and validate params_file; relative paths resolve against its folder."""
        path = Path(params_file).expanduser().resolve()
        return cls(root=path.parent, params=load_params(path), params_file=path)

    def _under_root(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.root / path

    @property
    def artifacts_dir(self) -> Path:
        return self._under_root(self.params.pipeline.artifacts_dir)

    @property
    def reports_dir(self) -> Path:
        return self._under_root(self.params.pipeline.reports_dir)

    @property
    def results_dir(self) -> Path:
        """Prefect result storage + cache records (kept out of git)."""
        return self._under_root(self.params.pipeline.results_dir)

    @property
    def inbox_dir(self) -> Path:
        return self._under_root(self.params.pipeline.inbox_dir)

    @property
    def state_file(self) -> Path:
        """What `watch-base-models` last triggered, per model: {name: base model sha256}."""
        return self.results_dir / "watch-state.json"

    def stage_path(self, model: str, stage: str) -> Path:
        """Folder of a quantization stage, or JSON report of an evaluation stage, for one model."""
        if any(spec.name == stage for spec in stages.STAGES):
            return self.artifacts_dir / model / stage
        return self.reports_dir / model / f"{stage}.json"

    def dashboard_dir(self, model: str) -> Path:
        return self.reports_dir / model / "dashboard"

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI, a relative sqlite path made absolute under root."""
        uri = self.params.pipeline.mlflow_tracking_uri
        prefix = "sqlite:///"
        if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
            return prefix + str(self.root / uri[len(prefix):])
        return uri

    @property
    def mlflow_artifacts_dir(self) -> Path:
        """Artifact root of experiments this pipeline creates (next to the sqlite store)."""
        return self.root / "mlartifacts"

    def model_location(self, model: str) -> str:
        """The model reference of params.yaml `models.<model>` (relative paths under root)."""
        return self.params.model(model).location(self.root)


class ModelMissingError(FileNotFoundError):
    """A registered base model whose directory has not been filled in."""


def require_model(layout: Layout, model: str, model_path: str | None = None) -> str:
    """The model reference to quantize; fails at once, naming the params.yaml key to fill in.

    `model_path` (an inbox folder found by watch-base-models) overrides / stands in for a
    params.yaml entry. The embedded default needs no folder.
    """
    params_name = str(layout.params_file or "params.yaml")
    if model_path is not None:
        location, where = str(Path(model_path).expanduser()), f"model_path={model_path!r}"
    else:
        entry = layout.params.model(model)
        if entry.is_embedded:
            return entry.location(layout.root)
        location = entry.location(layout.root)
        where = f"{params_name} key models.{model}.path (= {entry.path!r})"
    if not (Path(location) / "config.json").is_file():
        raise ModelMissingError(
            f"base model {model!r} is missing: {where} points to {location}, which has no config.json. "
            f"Put the Hugging Face model there (config.json + *.safetensors + tokenizer files), "
            f"or set models.{model}.path in {params_name} to the folder that holds it."
        )
    if model_path is None:
        check_arch(layout.params.model(model).arch, Path(location), f"{params_name} key models.{model}.arch")
    return location


def check_arch(expected: str | None, model_dir: Path, key: str) -> None:
    """ValueError when config.json's model_type is not the architecture params.yaml declares."""
    import json

    if expected is None:
        return
    found = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("model_type")
    if found != expected:
        raise ValueError(f"{key} is {expected!r} but {model_dir / 'config.json'} says model_type {found!r}: "
                         f"fix the key or point the model's path at the right folder")
