"""The one boundary where a precision enters: what a user gave becomes an int or a Plan here.

Every entry point passes what it was given through `resolve_precision`: the CLI's `--bits`
(generate, ppl, eval, bench, info), the Python API (`set_precision`, `precision`, `generate`)
and the server's `<name>:4.5bit`. Accepted: an integer width (3, "3", 4.0), a fractional
average (4.5, "4.5": the artifact's stored plan for it, or one computed and cached), a stored
plan's name ("plan-avg-bits-4.5", as `anyprec info` lists them), a plan JSON file, a Plan or
{module: bits}. Anything else is one PrecisionError naming the flag, the value, the bit-widths
loaded and the stored plans. Below this boundary nothing checks a precision again: the runtime,
the engines and the kernels trust an int or a Plan that came out of it.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Mapping, Sequence

from anyprec.errors import PrecisionError
from anyprec.manifest import ArtifactError
from anyprec.plans import Plan, PlanResolver

Precision = int | Plan


def parse_precision(value: Any) -> Any:
    """A precision as typed: "4" and 4.0 -> 4 (an integer width), "4.5" -> 4.5 (a plan's
    average); other strings (plan names, files) and objects are returned as they are."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value.strip()
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    return value


def loadable_bits(values: Sequence[Any] | None) -> list[int] | None:
    """What `load_anyprec(bits=...)` needs for these precisions: the integer widths, or every
    width (None) when one is not an integer, since a plan may use any of them."""
    parsed = [parse_precision(v) for v in values or []]
    if not parsed or not all(type(p) is int for p in parsed):
        return None
    return parsed


def holdings(manifest: Mapping[str, Any], available: Sequence[int], loaded: bool = True) -> str:
    """What a model (loaded) or an artifact offers, for error messages: its widths and stored plans."""
    plans = [name.removesuffix(".json") for name in manifest.get("plans", {}) if name in manifest["files"]]
    widths = f"{available[0]}..{available[-1]}" if list(available) == list(range(available[0], available[-1] + 1)) \
        else ", ".join(map(str, available))
    stored = f"stored plans {', '.join(plans)}" if plans else "no stored plans"
    has = f"this model has bit-widths {widths} loaded" if loaded else f"this artifact holds bit-widths {widths}"
    return (f"{has} and {stored}: give one of those widths, an average "
            f"between them (e.g. {available[0]}.5), a stored plan's name or a plan JSON file")


def check_precision(value: Any, manifest: Mapping[str, Any], flag: str = "--bits") -> Any:
    """Check a precision before loading (so a bad `--bits` fails before seconds of loading).

    manifest: the artifact's; returns the parsed value. Integers and averages must lie in the
    artifact's seed..parent range; strings must name a stored plan or a file."""
    parsed = parse_precision(value)
    lo, hi = manifest["seed_bits"], manifest["parent_bits"]
    if isinstance(parsed, numbers.Real) and not isinstance(parsed, bool):
        if not lo <= parsed <= hi:
            raise PrecisionError(f"{flag} {value}: outside {lo}..{hi}; {holdings(manifest, range(lo, hi + 1), False)}")
    elif isinstance(parsed, str) and _stored_name(parsed, manifest) is None and not Path(parsed).is_file():
        raise PrecisionError(f"{flag} {value!r} is neither a bit-width nor a stored plan nor a file; "
                             f"{holdings(manifest, range(lo, hi + 1), False)}")
    return parsed


def check_precisions(values: Sequence[Any] | None, artifact_dir: str | Path, flag: str = "--bits") -> list[Any] | None:
    """check_precision over a flag's values, reading the manifest once (None stays None)."""
    if not values:
        return None
    from anyprec.packed import read_manifest

    manifest = read_manifest(artifact_dir)
    return [check_precision(v, manifest, flag) for v in values]


def _stored_name(name: str, manifest: Mapping[str, Any]) -> str | None:
    """The manifest file name of a stored plan called `name` (with or without .json)."""
    for candidate in (name, f"{name}.json"):
        if candidate in manifest.get("plans", {}) and candidate in manifest["files"]:
            return candidate
    return None


def resolve_precision(model: Any, value: Any, flag: str = "precision", allow_files: bool = True) -> Precision:
    """The int or Plan that `value` means for a loaded AnyPrecisionModel (or an artifact
    directory: then every width it holds counts as loaded, as for `anyprec info`).

    Raises PrecisionError (a ValueError: a server answers it 400) naming `flag`, the value,
    the widths loaded and the stored plans. A value this boundary already produced is
    returned as it is. allow_files=False (a server: clients must not name paths on its disk)
    accepts stored plan names but no plan files."""
    if isinstance(model, (str, Path)):
        from anyprec.packed import read_manifest

        manifest = read_manifest(model)
        available = list(range(manifest["seed_bits"], manifest["parent_bits"] + 1))
        return resolve_with(PlanResolver(Path(model), manifest, available), value, flag, allow_files)
    return model.resolve_precision(value, flag, allow_files)


def resolve_with(resolver: PlanResolver, value: Any, flag: str, allow_files: bool = True) -> Precision:
    """resolve_precision's work, given the loaded model's PlanResolver (anyprec.plans)."""
    available = resolver.available
    if value.__class__ is int and value in available or value.__class__ is Plan and resolver.issued(value):
        return value  # already through this boundary: trusted
    parsed = parse_precision(value)
    try:
        if type(parsed) is int:
            if parsed not in available:
                lo, hi = resolver.manifest["seed_bits"], resolver.manifest["parent_bits"]
                held = f" (the artifact holds {lo}..{hi}: load it with bits=None for all)" if lo <= parsed <= hi else ""
                raise ValueError(f"{parsed} bits is not loaded{held}")
            return parsed
        if isinstance(parsed, Path) and not allow_files:
            raise ValueError("plan files are not accepted here; give a bit-width or a stored plan's name")
        if isinstance(parsed, str):
            stored = _stored_name(parsed, resolver.manifest)
            if stored is None and not (allow_files and Path(parsed).is_file()):
                raise ValueError("neither a bit-width nor a stored plan" + (" nor a file" if allow_files else ""))
            parsed = resolver.artifact_dir / stored if stored else Path(parsed)
        return resolver(parsed)
    except ArtifactError:
        raise  # the artifact is damaged: its own error says how to restore it
    except ValueError as err:
        shown = value if isinstance(value, (str, numbers.Real)) else type(value).__name__
        raise PrecisionError(f"{flag} {shown}: {err}; {holdings(resolver.manifest, available)}") from None


def precision_label(precision: Precision) -> str:
    """A short name for run names, model ids and report keys: "4", "4.5"."""
    if isinstance(precision, Plan):
        return f"{precision.label:g}"
    return str(precision)


def load_with_precisions(artifact_dir: str | Path, values: Sequence[Any] | None, flag: str = "--bits",
                         **load_kwargs: Any) -> tuple[Any, dict[str, Precision]]:
    """Load an artifact for the precisions one flag asked for: (AnyPrecisionModel, {key: int | Plan}).

    Values are checked before loading; only integer widths load only their planes. Keys are
    the values as typed ("4", "4.5", a plan's name or file); no values: every width it holds."""
    from anyprec.runtime import load_anyprec

    parsed = check_precisions(values, artifact_dir, flag)
    apm = load_anyprec(artifact_dir, bits=loadable_bits(parsed), **load_kwargs)
    if parsed is None:
        return apm, {str(b): b for b in apm.bits_available}
    return apm, {str(p): resolve_precision(apm, p, flag) for p in parsed}


def memory_bytes(artifact_dir: str | Path, value: Any, sizes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """{avg_bits, quantized, dense, total}: bytes in memory at one precision (a plan: every
    quantized module at its own width; codes + LUTs as `anyprec.packed.artifact_sizes` counts)."""
    from anyprec.packed import artifact_sizes, read_manifest
    from anyprec.plans import module_bytes

    sizes = sizes or artifact_sizes(artifact_dir)
    precision = resolve_precision(artifact_dir, value, "--bits")
    if isinstance(precision, Plan):  # its bytes again in the form `sizes` counts
        nbytes = module_bytes(read_manifest(artifact_dir), sizes["form"])
        avg, quantized = precision.avg_bits, sum(nbytes[n][b] for n, b in precision.bits.items())
    else:
        row = sizes["per_bits"][precision]
        avg, quantized = float(precision), row["codes"] + row["luts"]
    dense = sizes["per_bits"][sizes["seed_bits"]]["dense"]
    return {"avg_bits": avg, "quantized": quantized, "dense": dense, "total": quantized + dense}
