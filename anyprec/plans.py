"""Precision plans: one bit-width per quantized module, for any budget between the integer widths.

Every quantized module of an artifact can run at its own bit-width with no extra bytes (the
nested codes hold them all), so a fractional precision such as 4.5 is a *plan*: a map
module -> bits in [seed, parent] that minimises the estimated loss increase for the budget.
The estimate is the quantization objective sum_j f_j (w_j - c_j)^2 of each module at each
width (Fisher-weighted squared error: the second-order term of the loss change), summed over
modules. Choosing one width per module under a budget is a multiple-choice knapsack, solved
exactly here by dynamic programming over the budget grid (`solve_choice`).

Budgets: `avg_bits` is the mean code width per quantized weight (weighted by each module's
weight count, so uniform b bits is exactly b); `max_bytes` counts codes + LUTs of the
quantized modules. Plans are small JSON files (`plan-<target>.json`) stored in the artifact,
listed and hashed in its manifest, or passed at run time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from anyprec.fileio import sha256_file, write_json_atomic
from anyprec.packed import MANIFEST, ArtifactError, read_manifest
from anyprec.resident import DEFAULT_LUTS
from anyprec.resident import module_bytes as resident_module_bytes

PLAN_FORMAT = "anyprec-plan"
OBJECTIVE_FILE = "objective_modules.json"
_MAX_CELLS = 1 << 20
_MAX_ISSUED = 256


@dataclass(frozen=True)
class Plan:
    """A resolved plan. bits: {module: bit-width}; label: the precision it was asked for
    (e.g. 4.5); avg_bits: the weight-weighted mean width it reaches; quantized_bytes: codes +
    LUTs of every quantized module at its width; objective: the summed estimate (nan if unknown)."""

    bits: dict[str, int]
    label: float
    avg_bits: float
    quantized_bytes: int
    objective: float = math.nan

    def to_json(self, target: dict[str, Any]) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "format_version": 1, "target": target, "label": self.label,
                "avg_bits": self.avg_bits, "quantized_bytes": self.quantized_bytes,
                "objective": None if math.isnan(self.objective) else self.objective, "modules": self.bits}


def solve_choice(costs: np.ndarray, values: np.ndarray, capacity: int, max_cells: int = _MAX_CELLS) -> np.ndarray:
    """Multiple-choice knapsack: pick one column per row minimising sum values, sum costs <= capacity.

    costs: int64[M, J] (>= 0), values: float[M, J] (inf marks a forbidden choice); returns
    int64[M] column indices. Exact DP over the grid of the costs' gcd when that grid has at
    most `max_cells` cells; otherwise costs are rounded *up* to a coarser grid, so the plan
    still fits the budget and is optimal for the rounded costs. Raises ValueError if even the
    cheapest choice per row does not fit.
    """
    costs = np.asarray(costs, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    cheapest = np.where(np.isfinite(values), costs, np.iinfo(np.int64).max).min(axis=1)
    spare = capacity - int(cheapest.sum())
    if spare < 0:
        raise ValueError(f"budget infeasible: the cheapest plan needs {int(cheapest.sum())}, the budget is {capacity}")
    extra = costs - cheapest[:, None]
    grid = reduce(math.gcd, (int(e) for e in np.unique(extra) if e > 0), 0) or 1
    cells = min(spare // grid, int(np.where(np.isfinite(values), extra, 0).max(axis=1).sum()) // grid)
    if cells > max_cells:
        grid = -(-spare // max_cells)
        cells = spare // grid
    units = -(-extra // grid)  # exact when grid divides every extra cost; rounded up otherwise
    best = np.zeros(cells + 1)  # best[c]: least value of the rows so far with extra cost <= c
    choice = np.zeros((len(costs), cells + 1), dtype=np.uint8)
    for row in range(len(costs)):
        cand = np.full((costs.shape[1], cells + 1), np.inf)
        for j in range(costs.shape[1]):
            u = int(units[row, j])
            if np.isfinite(values[row, j]) and u <= cells:
                cand[j, u:] = best[: cells + 1 - u] + values[row, j]
        choice[row] = cand.argmin(axis=0)
        best = cand[choice[row], np.arange(cells + 1)]
    picks = np.zeros(len(costs), dtype=np.int64)
    c = cells
    for row in range(len(costs) - 1, -1, -1):
        picks[row] = choice[row, c]
        c -= int(units[row, picks[row]])
    return picks


def make_plan(
    objectives: Mapping[str, Mapping[int, float]],
    bytes_per_module_per_bit: Mapping[str, Mapping[int, int]],
    *,
    avg_bits: float | None = None,
    max_bytes: int | None = None,
    params: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """The plan {module: bits} minimising sum objectives[m][bits] under one budget.

    objectives: {module: {bits: estimate}}; bytes_per_module_per_bit: {module: {bits: bytes}}
    (codes + LUT); the widths offered are those in both. avg_bits needs params ({module:
    weights}) and bounds sum params*bits <= avg_bits * sum params; max_bytes bounds the bytes.
    """
    if (avg_bits is None) == (max_bytes is None):
        raise ValueError("give exactly one budget: avg_bits or max_bytes")
    names = list(objectives)
    offered = {int(b) for b in next(iter(bytes_per_module_per_bit.values()))}
    widths = sorted(offered & {int(b) for b in objectives[names[0]]})
    values = np.array([[objectives[n][b] for b in widths] for n in names], dtype=np.float64)
    if avg_bits is not None:
        if params is None:
            raise ValueError("avg_bits needs params: the weight count of every module")
        if not widths[0] <= avg_bits <= widths[-1]:
            raise ValueError(f"average {avg_bits} bits is outside the widths {widths[0]}..{widths[-1]} "
                             "this plan may use")
        costs = np.array([[params[n] * b for b in widths] for n in names], dtype=np.int64)
        capacity = math.floor(avg_bits * sum(params[n] for n in names) + 1e-6)
    else:
        costs = np.array([[bytes_per_module_per_bit[n][b] for b in widths] for n in names], dtype=np.int64)
        capacity = int(max_bytes)
    picks = solve_choice(costs, values, capacity)
    return {n: widths[int(j)] for n, j in zip(names, picks)}


def module_params(manifest: Mapping[str, Any]) -> dict[str, int]:
    """{module: out_features * in_features}."""
    return {n: m["out_features"] * m["in_features"] for n, m in manifest["modules"].items()}


def module_bytes(manifest: Mapping[str, Any], luts: str = DEFAULT_LUTS) -> dict[str, dict[int, int]]:
    """{module: {bits: bytes}} of b bitplanes (int32 words) + the LUT at b bits in the resident
    form `luts`, as `anyprec.packed.artifact_sizes` counts them (anyprec.resident)."""
    widths = range(manifest["seed_bits"], manifest["parent_bits"] + 1)
    return {n: {b: resident_module_bytes(m["out_features"], m["in_features"], b, luts) for b in widths}
            for n, m in manifest["modules"].items()}


def read_objectives(artifact_dir: str | Path, manifest: Mapping[str, Any],
                    work_dir: str | Path | None = None) -> dict[str, dict[int, float]]:
    """{module: {bits: objective}} from the artifact, or computed from the quantization work
    directory (artifacts quantized before the table was stored carry only the totals)."""
    path = Path(artifact_dir) / OBJECTIVE_FILE
    if OBJECTIVE_FILE in manifest["files"]:
        if sha256_file(path) != manifest["files"][OBJECTIVE_FILE]["sha256"]:
            raise ArtifactError(f"{path} does not match its sha256 in {MANIFEST}: "
                                "restore it or re-run `anyprec quantize`")
        table = json.loads(path.read_text(encoding="utf-8"))
    elif work_dir is not None:
        table = _objectives_from_work_dir(manifest, Path(work_dir))
    else:
        raise ArtifactError(
            f"{artifact_dir} has no per-module objective table ({OBJECTIVE_FILE}), needed to plan a fractional "
            "precision: run `anyprec plan DIR --avg-bits X --work-dir WORK` once with its quantization work directory")
    return {n: {int(b): float(v) for b, v in row.items()} for n, row in table.items()}


def _objectives_from_work_dir(manifest: Mapping[str, Any], work_dir: Path) -> dict[str, dict[str, float]]:
    from anyprec import stages
    from anyprec.config import QuantizationConfig
    from anyprec.quantize import module_objectives

    sens, nested = work_dir / stages.SENSITIVITY, work_dir / stages.NESTED
    if not (sens.is_dir() and nested.is_dir()):
        raise FileNotFoundError(f"--work-dir {work_dir} lacks sensitivity/ or nested/: give the directory "
                                "`anyprec quantize --work-dir` used (default: ~/.cache/anyprec/work/<hash>)")
    quant = QuantizationConfig.from_dump(manifest["inputs"]["quantization"])
    table = module_objectives(manifest["inputs"]["base_model_ref"], sens, nested, quant)
    if set(table) != set(manifest["modules"]):
        raise ValueError(f"--work-dir {work_dir} holds other modules than the artifact: "
                         "give the work directory it was quantized from")
    return table


def plan_for(manifest: Mapping[str, Any], objectives: Mapping[str, Mapping[int, float]], widths: list[int],
             avg_bits: float | None = None, max_bytes: int | None = None) -> Plan:
    """The optimal Plan over `widths` for one budget (max_bytes: codes + LUTs, dense excluded)."""
    nbytes = {n: {b: v for b, v in row.items() if b in widths} for n, row in module_bytes(manifest).items()}
    params = module_params(manifest)
    bits = make_plan(objectives, nbytes, avg_bits=avg_bits, max_bytes=max_bytes, params=params)
    return describe(manifest, bits, avg_bits if avg_bits is not None else plan_avg_bits(manifest, bits), objectives)


def ppl_slope(report: Mapping[str, Any], totals: Mapping[int, float]) -> float:
    """k of ln(ppl_b / ppl_base) ~= k * O_b (least squares through 0), from an `anyprec ppl --json`
    report holding the base model and integer widths; totals: {bits: summed objective}."""
    base = report.get("base") or {}
    pairs = [(totals[int(b)], math.log(row[c] / base[c]))
             for b, row in report.get("bits", {}).items() if b.isdigit() and int(b) in totals
             for c in row if c in base]
    if not pairs or not base:
        raise ValueError("--calibration needs an `anyprec ppl --json` report with the base model and integer widths "
                         "(run `anyprec ppl DIR --json FILE` without --no-base)")
    return sum(o * y for o, y in pairs) / sum(o * o for o, _ in pairs)


def plan_for_ppl(manifest: Mapping[str, Any], objectives: Mapping[str, Mapping[int, float]], widths: list[int],
                 max_increase_pct: float, slope: float, resolution: float = 0.01) -> Plan:
    """The smallest-average plan whose predicted perplexity increase, exp(slope * objective) - 1,
    is at most max_increase_pct %: bisection over the average (the optimal objective falls as
    the budget grows), to `resolution` bits."""
    limit = math.log1p(max_increase_pct / 100) / slope
    best = plan_for(manifest, objectives, widths, avg_bits=float(widths[-1]))
    if best.objective > limit:
        raise ValueError(f"--max-ppl-increase {max_increase_pct}% is below the predicted "
                         f"{math.expm1(slope * best.objective) * 100:.2f}% of {widths[-1]} bits: allow more")
    lo, hi = float(widths[0]), float(widths[-1])
    if plan_for(manifest, objectives, widths, avg_bits=lo).objective <= limit:
        hi = lo
    while hi - lo > resolution:
        mid = (lo + hi) / 2
        if plan_for(manifest, objectives, widths, avg_bits=mid).objective <= limit:
            hi = mid
        else:
            lo = mid
    return plan_for(manifest, objectives, widths, avg_bits=hi)


def plan_avg_bits(manifest: Mapping[str, Any], bits: Mapping[str, int]) -> float:
    params = module_params(manifest)
    return sum(params[n] * b for n, b in bits.items()) / sum(params.values())


def describe(manifest: Mapping[str, Any], bits: Mapping[str, int], label: float,
             objectives: Mapping[str, Mapping[int, float]] | None = None) -> Plan:
    """A Plan of `bits` with its weight-weighted average, bytes and (if known) objective."""
    nbytes = module_bytes(manifest)
    objective = sum(objectives[n][b] for n, b in bits.items()) if objectives else math.nan
    quantized_bytes = sum(nbytes[n][b] for n, b in bits.items())
    return Plan(dict(bits), float(label), plan_avg_bits(manifest, bits), quantized_bytes, objective)


def check_plan(bits: Mapping[str, Any], modules: Mapping[str, Any], available: list[int]) -> dict[str, int]:
    """{module: int bits} after checking every module is named once and every width is loaded."""
    unknown = sorted(set(bits) - set(modules))
    missing = sorted(set(modules) - set(bits))
    if unknown or missing:
        raise ValueError(f"plan does not match the model: unknown modules {unknown[:3]}, missing modules {missing[:3]} "
                         "(a plan names every quantized module of its artifact; make one with `anyprec plan`)")
    bad = {n: b for n, b in bits.items() if not (isinstance(b, int) and b in available)}
    if bad:
        name, b = next(iter(bad.items()))
        raise ValueError(f"plan gives {name} {b!r} bits; this model has bit-widths {available} loaded "
                         "(load the artifact with bits=None, or re-plan)")
    return dict(bits)


def load_plan_file(path: str | Path, manifest: Mapping[str, Any], available: list[int]) -> Plan:
    """Read and check a plan JSON file against a loaded model."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read plan {path}: {err}") from None
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        raise ValueError(f"{path} is not an anyprec plan (format {PLAN_FORMAT!r}); make one with `anyprec plan`")
    bits = check_plan(data["modules"], manifest["modules"], available)
    return describe(manifest, bits, data["label"])


def store_plan(artifact_dir: str | Path, plan: Plan, target: dict[str, Any]) -> str:
    """Add a plan file to the artifact and list it (name, sha256) in the manifest; manifest last."""
    name = "plan-" + "-".join(f"{k.replace('_', '-')}-{v}" for k, v in target.items()) + ".json"
    return add_json_file(artifact_dir, name, plan.to_json(target), {"plans": {name: target}})


def add_json_file(artifact_dir: str | Path, name: str, value: Any, merge: dict[str, dict] | None = None) -> str:
    """Write one flat JSON file into an artifact, then the manifest naming it with its hash.

    merge: {manifest key: dict} merged into that manifest entry. A crash between the two writes
    leaves an unlisted file, which loading ignores."""
    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    write_json_atomic(artifact_dir / name, value)
    path = artifact_dir / name
    manifest["files"][name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    for key, entries in (merge or {}).items():
        manifest[key] = {**manifest.get(key, {}), **entries}
    write_json_atomic(artifact_dir / MANIFEST, manifest)
    return name


class PlanResolver:
    """Resolves a precision that is not a loaded integer width to a Plan, for one loaded model.

    Accepts a Plan, a {module: bits} mapping, the path of a plan JSON file, or a fractional
    number (the artifact's stored plan for that average if its widths are loaded, else one
    computed from the artifact's objective table; either is cached)."""

    def __init__(self, artifact_dir: Path, manifest: dict[str, Any], available: list[int]) -> None:
        self.artifact_dir, self.manifest, self.available = artifact_dir, manifest, available
        self._cache: dict[float, Plan] = {}
        self._objectives: dict[str, dict[int, float]] | None = None
        self._issued: dict[int, Plan] = {}  # id -> every Plan returned (kept alive, so ids stay unique)

    def issued(self, plan: Plan) -> bool:
        """True if `plan` was returned by this resolver (checked then, trusted now)."""
        return self._issued.get(id(plan)) is plan

    def __call__(self, precision: Any) -> Plan:
        plan = self._resolve(precision)
        if len(self._issued) >= _MAX_ISSUED:  # a caller making plan after plan: forget, re-check later
            self._issued.clear()
        self._issued[id(plan)] = plan
        return plan

    def _resolve(self, precision: Any) -> Plan:
        if isinstance(precision, Plan):
            check_plan(precision.bits, self.manifest["modules"], self.available)
            return precision
        if isinstance(precision, Mapping):
            bits = check_plan(precision, self.manifest["modules"], self.available)
            return describe(self.manifest, bits, plan_avg_bits(self.manifest, bits))
        if isinstance(precision, (str, Path)) and Path(precision).is_file():
            return load_plan_file(precision, self.manifest, self.available)
        if isinstance(precision, bool) or not isinstance(precision, (int, float)):
            raise ValueError("give a number of bits (e.g. 4 or 4.5), a plan JSON file, a Plan or {module: bits}")
        key = float(precision)
        plan = self._cache.get(key)
        if plan is None:
            plan = self._cache[key] = self._stored(key) or self._computed(key)
        return plan

    def _stored(self, avg_bits: float) -> Plan | None:
        for name, target in self.manifest.get("plans", {}).items():
            if target.get("avg_bits") == avg_bits and name in self.manifest["files"]:
                path = self.artifact_dir / name
                if sha256_file(path) != self.manifest["files"][name]["sha256"]:
                    raise ArtifactError(f"{path} does not match its sha256 in {MANIFEST}: re-run `anyprec plan`")
                data = json.loads(path.read_text(encoding="utf-8"))
                if set(data["modules"].values()) <= set(self.available):
                    return load_plan_file(path, self.manifest, self.available)
        return None

    def _computed(self, avg_bits: float) -> Plan:
        lo, hi = self.available[0], self.available[-1]
        if not lo <= avg_bits <= hi:
            raise ValueError(f"{avg_bits} is outside the loaded bit-widths {lo}..{hi}")
        if self._objectives is None:
            self._objectives = read_objectives(self.artifact_dir, self.manifest)
        return plan_for(self.manifest, self._objectives, self.available, avg_bits=avg_bits)


def cmd_plan(args: Any) -> int:
    """`anyprec plan`: compute the optimal plan for a budget; store it in the artifact or --out."""
    from anyprec.packed import artifact_sizes

    manifest = read_manifest(args.dir)
    widths = list(range(manifest["seed_bits"], manifest["parent_bits"] + 1))
    objectives = read_objectives(args.dir, manifest, args.work_dir)
    if args.out is None and OBJECTIVE_FILE not in manifest["files"]:
        add_json_file(args.dir, OBJECTIVE_FILE, {n: {str(b): v for b, v in r.items()} for n, r in objectives.items()})
        print(f"added {OBJECTIVE_FILE} to {args.dir}: later fractional precisions plan from the artifact alone")
    dense = artifact_sizes(args.dir)["per_bits"][widths[0]]["dense"]
    if args.max_ppl_increase is not None:
        if args.calibration is None:
            raise ValueError("--max-ppl-increase needs --calibration PPL_JSON "
                             "(an `anyprec ppl DIR --json FILE` report)")
        report = json.loads(Path(args.calibration).read_text(encoding="utf-8"))
        totals = {b: sum(row[b] for row in objectives.values()) for b in widths}
        slope = ppl_slope(report, totals)
        plan = plan_for_ppl(manifest, objectives, widths, args.max_ppl_increase, slope)
        target: dict[str, Any] = {"max_ppl_increase": args.max_ppl_increase}
        print(f"calibration {args.calibration}: ln(ppl / base ppl) ~= {slope:.6g} x objective; this plan's "
              f"predicted increase {math.expm1(slope * plan.objective) * 100:.2f}%")
    elif args.max_bytes is not None:
        if args.max_bytes <= dense:
            raise ValueError(f"--max-bytes {args.max_bytes:,} does not even hold the dense tensors ({dense:,} bytes)")
        plan = plan_for(manifest, objectives, widths, max_bytes=args.max_bytes - dense)
        target = {"max_bytes": args.max_bytes}
    else:
        plan = plan_for(manifest, objectives, widths, avg_bits=args.avg_bits)
        target = {"avg_bits": args.avg_bits}
    counts = {b: sum(1 for v in plan.bits.values() if v == b) for b in widths}
    print(f"plan {target}: {plan.avg_bits:.3f} average bits, {plan.quantized_bytes + dense:,} bytes in memory "
          f"({plan.quantized_bytes:,} quantized + {dense:,} dense), objective {plan.objective:.6g}")
    print("modules per width: " + ", ".join(f"{b}-bit {c}" for b, c in counts.items() if c))
    nbytes = module_bytes(manifest)
    for b in widths:
        uniform = sum(objectives[n][b] for n in objectives)
        print(f"  uniform {b}-bit: objective {uniform:.6g}, {sum(r[b] for r in nbytes.values()) + dense:,} bytes")
    if args.out is not None:
        out = Path(args.out)
        if out.exists() and not _is_plan_file(out):
            raise ValueError(f"--out {out} exists and is not an anyprec plan: choose another path")
        write_json_atomic(out, plan.to_json(target))
        print(f"wrote {out}")
    else:
        print(f"stored {store_plan(args.dir, plan, target)} in {args.dir}")
    return 0


def _is_plan_file(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == PLAN_FORMAT
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def add_plan_parser(sub: Any) -> None:
    """Register `anyprec plan` on the CLI's subparsers."""
    p = sub.add_parser("plan", help="per-module bit-widths for a fractional precision or a byte budget")
    p.add_argument("dir", help="artifact directory")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--avg-bits", type=float, help="mean bits per quantized weight, e.g. 4.5")
    budget.add_argument("--max-bytes", type=int, help="bytes in memory (codes + LUTs + dense, as `anyprec info`)")
    budget.add_argument("--max-ppl-increase", type=float, metavar="PCT",
                        help="the fewest bits whose predicted perplexity increase over the base is <= PCT %%")
    p.add_argument("--calibration", default=None,
                   help="`anyprec ppl DIR --json` report (base + integer widths) that calibrates --max-ppl-increase")
    p.add_argument("--work-dir", default=None,
                   help="quantization work directory, for artifacts without the per-module objective table")
    p.add_argument("--out", default=None, help="write the plan to this JSON file instead of into the artifact")
    p.set_defaults(func=cmd_plan)
