"""Typed configuration: the one model of params.yaml.

Every consumer (CLI, Prefect flows, DVC stages, MLflow logging) reads its settings through
these pydantic models, so a typo in params.yaml fails loudly at load time instead of being
silently ignored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

DEFAULT_MODEL = "smollm2-135m"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CalibrationConfig(_Strict):
    """How the calibration set is drawn (docs/ALGORITHM.md section 1)."""

    corpus: Literal["wiki", "news"] = "wiki"
    n_samples: int = Field(100, ge=1, le=100_000)
    seq_len: int = Field(512, ge=8, le=65_536)
    seed: int = 0
    eval_fraction: float = Field(0.2, gt=0.0, lt=1.0)


class QuantizationConfig(_Strict):
    """Seed/parent bit-widths and the clustering algorithm (docs/ALGORITHM.md sections 3-4)."""

    # codes are uint8 (parent <= 8); a 1-bit seed keeps two values per row, too few to start from
    seed_bits: int = Field(3, ge=2, le=7)
    parent_bits: int = Field(8, ge=3, le=8)
    method: Literal["optimal", "lloyd"] = "optimal"
    # Joint seed (optimal method only; docs/QUALITY.md): None keeps the seed width exactly
    # optimal (the paper); w >= 0 picks seed clusters minimising w * objective(seed) +
    # objective(seed + 1), lowering the gap to a dedicated seed + 1 (w = 0: none left).
    joint_weight: float | None = Field(None, ge=0.0)
    # Look-ahead upscaling (optimal method only; docs/QUALITY.md): v >= 0 picks each seed
    # cluster's split minimising v * objective(seed + 1) + objective(seed + 2): the seed stays,
    # seed + 2 and wider gain. None splits every cluster best for its own width (the paper).
    # 0.25 (measured: every width 4..8 within 0.6% of dedicated) unless the method is lloyd.
    lookahead_weight: float | None = Field(0.25, ge=0.0)
    # How the Fisher is computed, not what: both passes give the same numbers, so the
    # choice is left out of dumps and hashes (cache keys, manifests stay as they were).
    sensitivity: Literal["auto", "streamed", "whole"] = Field(
        "auto", exclude=True, description="streamed: one decoder layer resident (docs/SCALE.md); auto: when needed"
    )

    # Calibration shards of the sensitivity pass (docs/SCALE.md): a flow maps them over its task
    # runner's workers. More than 1 changes the Fisher's fp32 summation order, so its bits.
    sensitivity_shards: int = Field(1, ge=1, le=4096)

    @model_validator(mode="before")
    @classmethod
    def _plain_splits_for_lloyd(cls, data: Any) -> Any:
        # the look-ahead default applies to the optimal method only; an explicit weight is checked below
        if isinstance(data, dict) and data.get("method") == "lloyd" and "lookahead_weight" not in data:
            return {**data, "lookahead_weight": None}
        return data

    @classmethod
    def from_dump(cls, data: dict[str, Any]) -> "QuantizationConfig":
        """The config a stored dump (manifest, cache) was made with: an option the dump omits
        is off, as `_omit_plain_seed` writes it (dumps from before an option was a default)."""
        return cls(**{"joint_weight": None, "lookahead_weight": None, **data})

    @model_validator(mode="after")
    def _seed_below_parent(self) -> "QuantizationConfig":
        if self.seed_bits >= self.parent_bits:
            raise ValueError(
                f"seed_bits={self.seed_bits} must be below parent_bits={self.parent_bits}: the seed model "
                "is upscaled to the parent, and an artifact holds at least two bit-widths (e.g. 3 and 8)"
            )
        if self.joint_weight is not None and self.method != "optimal":
            raise ValueError(
                f"joint_weight={self.joint_weight} needs method=optimal (the Lloyd seed is the reference's); "
                "set quantization.joint_weight: null to use method=lloyd"
            )
        if self.lookahead_weight is not None and self.method != "optimal":
            raise ValueError(
                f"lookahead_weight={self.lookahead_weight} needs method=optimal (the Lloyd split is the "
                "reference's); set quantization.lookahead_weight: null to use method=lloyd"
            )
        return self

    @model_serializer(mode="wrap")
    def _omit_plain_seed(self, handler: Any) -> dict[str, Any]:
        # Without a joint seed, dumps (cache keys, manifests) stay byte-identical to earlier ones.
        data = handler(self)
        if self.joint_weight is None:
            data.pop("joint_weight", None)
        if self.lookahead_weight is None:
            data.pop("lookahead_weight", None)
        if self.sensitivity_shards == 1:  # likewise for the unsharded pass
            data.pop("sensitivity_shards", None)
        return data

    @property
    def bit_widths(self) -> list[int]:
        return list(range(self.seed_bits, self.parent_bits + 1))


# A precision in params.yaml: an integer width or a fractional average (4.5 runs a precision
# plan, anyprec.plans); checked against the artifact by anyprec.precision where it is used.
PrecisionValue = Annotated[int, Field(ge=1, le=8)] | Annotated[float, Field(ge=1, le=8)]


class EvaluationConfig(_Strict):
    """Perplexity corpora, lm-eval tasks and baselines (`anyprec eval`, the flow's ppl/eval stages)."""

    bits: list[PrecisionValue] = Field(default_factory=lambda: [3, 4, 5, 6, 7, 8])
    ppl_corpora: list[Literal["wiki", "news"]] = Field(default_factory=lambda: ["wiki", "news"])
    ppl_window: int = Field(2048, ge=16)
    tasks: list[str] = Field(
        default_factory=lambda: ["bb_step_inference", "bb_social_iqa", "bb_winowhy", "bb_cause_and_effect"]
    )
    limit: int | None = Field(50, ge=1)
    ppl_max_tokens: int | None = Field(None, ge=2, description="truncate each held-out stream (None: all)")
    batch_size: int = Field(8, ge=1, description="lm-eval batch size")
    prompt_style: Literal["completion", "bigbench"] = Field(
        "completion", description="BIG-bench prompts: choices scored as continuations, or BIG-bench's own format")
    bigbench_source: str | None = Field(None, description="bigbench-1.0.0.tar.gz or its tree (None: cache, else pip)")

    @field_validator("bits")
    @classmethod
    def _integer_widths_as_int(cls, bits: list[float]) -> list[float]:
        return [int(b) if float(b).is_integer() else b for b in bits]  # 5.0 is the width 5


class GenerationConfig(_Strict):
    """`anyprec generate`."""

    max_new_tokens: int = Field(32, ge=1)


class BenchmarkConfig(_Strict):
    """GEMV and decode benchmark settings."""

    gemv_shape: tuple[int, int] = (4096, 4096)
    bits: list[int] = Field(default_factory=lambda: [3, 4, 5, 6, 7, 8])
    decode_tokens: int = Field(32, ge=1)
    threads: int | None = None
    repeats: int = Field(30, ge=1, description="GEMV timing repeats (median reported)")
    rotate_mib: int = Field(384, ge=1, description="GEMV weights rotated over this many MiB (DRAM, not cache)")
    bandwidth_mib: int = Field(512, ge=1, description="buffer of the read-bandwidth measurement")
    decode_repeats: int = Field(3, ge=1, description="decode timing repeats (median reported)")
    publish_under_load: bool = Field(False, description="log benchmark figures taken on a loaded machine to MLflow")


class ModelEntry(_Strict):
    """One base model of the registry: a local HF directory or the embedded default."""

    path: str = Field(description="local HF model directory, or 'embedded' for the packaged default")
    arch: str | None = Field(None, description="HF model_type; a folder whose config.json differs is refused")
    description: str = ""

    @property
    def is_embedded(self) -> bool:
        return self.path == "embedded"

    @property
    def ref(self) -> str:
        """The string `anyprec.models.resolve_model_dir` accepts."""
        return DEFAULT_MODEL if self.is_embedded else self.path

    def location(self, root: str | Path = ".") -> str:
        """The model reference with a relative `path` taken relative to `root` (params.yaml's folder)."""
        if self.is_embedded:
            return DEFAULT_MODEL
        path = Path(self.path).expanduser()
        return str(path if path.is_absolute() else Path(root) / path)


class PipelineConfig(_Strict):
    """Where the pipeline writes and tracks (pipeline issue)."""

    artifacts_dir: str = "artifacts"
    reports_dir: str = "reports"
    mlflow_tracking_uri: str = "sqlite:///mlflow.db"
    mlflow_experiment: str = "anyprec"
    task_runner: Literal["thread", "dask", "ray"] = "thread"
    task_runner_address: str | None = Field(
        None, description="existing Dask scheduler / Ray cluster address; None starts a local one"
    )
    task_runner_workers: int | None = Field(
        None, ge=1, description="worker processes of the local Dask cluster (None: Dask's default)"
    )
    thread_tasks: int | None = Field(
        None, ge=1, le=4, description="thread runner: mapped tasks (layers, shards) at once; None: as many as "
        "fit in the available memory (at most 4)"
    )
    inbox_dir: str = "inbox"
    schedule_cron: str = "0 3 * * *"
    results_dir: str = Field(".prefect-results", description="Prefect task results + cache records")
    registered_model_prefix: str = Field("anyprec-", description="MLflow registry name = prefix + model name")
    dvc_models: list[str] = Field(
        default_factory=lambda: ["smollm2-135m"], description="models whose stages dvc.yaml reproduces"
    )
    dvc_commit: bool = Field(False, description="record flow outputs in dvc.lock (dvc commit) when DVC is set up")


class RouterConfig(_Strict):
    """How `:auto` picks a bit-width: prompt difficulty, then load, then the client's limits."""

    min_bits: int = Field(3, ge=1, le=8, description="the easiest prompt gets this many bits")
    max_bits: int = Field(8, ge=1, le=8, description="the hardest prompt gets this many bits")
    long_prompt_tokens: int = Field(256, ge=1, description="prompt length at which the length score saturates")
    length_weight: float = Field(0.4, ge=0.0, le=1.0, description="share of the score from prompt length")
    cue_weight: float = Field(0.6, ge=0.0, le=1.0, description="share of the score from task cues")
    cues: dict[str, list[str]] = Field(
        default_factory=lambda: {
            "reasoning": ["why", "explain", "reason", "because", "step by step", "prove", "therefore", "cause"],
            "code": ["def ", "class ", "function", "code", "python", "```", "return ", "import "],
            "math": ["calculate", "solve", "equation", "sum", "integral", "how many", "+", "="],
        },
        description="cue words per task family (matched lower-case); each family found adds 1/len(cues)",
    )
    queue_per_bit: int = Field(4, ge=1, description="drop one bit per this many requests waiting for a slot")
    p95_ms: float = Field(20_000.0, gt=0, description="latency target: drop one bit while the recent p95 is above it")
    latency_window: int = Field(32, ge=1, description="finished requests the recent p95 is taken over")

    @model_validator(mode="after")
    def _min_le_max(self) -> "RouterConfig":
        if self.min_bits > self.max_bits:
            raise ValueError(f"serving.auto.min_bits={self.min_bits} > max_bits={self.max_bits}")
        return self


class ServingConfig(_Strict):
    """`anyprec serve`: batch size, request limits and the `:auto` routing policy."""

    max_batch: int = Field(8, ge=1, le=256, description="sequences decoded together (engine slots)")
    max_queue: int = Field(256, ge=1, description="requests waiting for a slot before new ones get 429")
    default_max_tokens: int = Field(128, ge=1, description="max_tokens when the request gives none")
    max_tokens_limit: int = Field(2048, ge=1, description="largest max_tokens a request may ask for")
    acts: str | None = Field(None, description="native engine activations on uint8 LUTs, fp32 | int8 "
                             "(anyprec.engine.native.ACT_MODES; None: the engine's default, fp32)")
    auto: RouterConfig = RouterConfig()


class Params(_Strict):
    """The whole of params.yaml."""

    models: dict[str, ModelEntry]
    calibration: CalibrationConfig = CalibrationConfig()
    quantization: QuantizationConfig = QuantizationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    generation: GenerationConfig = GenerationConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    pipeline: PipelineConfig = PipelineConfig()
    serving: ServingConfig = ServingConfig()

    def model(self, name: str) -> ModelEntry:
        if name not in self.models:
            raise KeyError(f"model {name!r} is not in params.yaml 'models' (known: {sorted(self.models)})")
        return self.models[name]


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; errors name the file and every bad key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run from the repository root or pass --params PATH")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ValueError(f"{path} is invalid:\n{err}") from None


def validation_message(err: ValidationError, names: dict[str, str]) -> str:
    """One line per problem of a ValidationError, each field named as the user wrote it.

    names: field -> how the user spells it (a CLI flag such as "--seq-len"); a problem of
    the whole model (two fields disagree) keeps its own message, which names both fields.
    """
    lines = []
    for problem in err.errors():
        field = str(problem["loc"][-1]) if problem["loc"] else ""
        message = problem["msg"].removeprefix("Value error, ")
        if field:
            given = problem.get("input")
            lines.append(f"{names.get(field, field)} {given!r}: {message.lower()}")
        else:
            for name, flag in names.items():
                message = message.replace(f"{name}=", f"{flag} ")
            lines.append(message)
    return "\n".join(lines)


def config_hash(*configs: BaseModel) -> str:
    """sha256 of the canonical JSON of the given configs (for cache keys and manifests)."""
    payload = json.dumps([c.model_dump(mode="json") for c in configs], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def flatten(prefix: str, data: Any) -> dict[str, Any]:
    """Flatten nested dicts/lists to dotted keys (MLflow params)."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), value))
        return out
    if isinstance(data, (list, tuple)):
        return {prefix: ",".join(str(v) for v in data)}
    return {prefix: data}
