"""The any-precision runtime: one loaded artifact serves every bit-width it holds.

`load_anyprec(dir)` builds the transformers model from the artifact's config, fills its
dense tensors, and swaps each quantized Linear for an `AnyPrecisionLinear` that computes
from bitplanes + LUT through `anyprec.kernels.matmul` (the single dispatch point).

Precision is chosen per model (`set_precision(b)`) or per call (`precision=b` on
`generate`/`forward`, or `with apm.precision(b):`). The per-call choice lives in a
ContextVar, so concurrent requests in different threads/tasks never see each other's.
A fractional precision (4.5) runs a plan: each quantized module at its own width
(anyprec.plans), the artifact's stored plan for that average or one computed and cached.

What stays resident is chosen at load by `luts`: "u8" (default) holds each LUT as uint8
codes on a per-row grid (anyprec.lutq) and the output head / tied embedding as per-row int8
(anyprec.int8_head); "fp16" holds the artifact's exact fp16 LUTs, the fp32 embedding and an
fp16 decode copy of the head. `anyprec.packed.resident_bytes` counts either form.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import gc
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from anyprec.int8_head import install_int8_head
from anyprec.kernels import Backend, decode_plan, half_decode_plan, matmul, resolve_backend
from anyprec.lutq import QuantizedLut, quantize_lut
from anyprec.packed import ArtifactError, QuantizedModule, load_packed_tensors
from anyprec.errors import PrecisionError
from anyprec.plans import Plan, PlanResolver
from anyprec.precision import resolve_with
from anyprec.resident import DEFAULT_LUTS, check_form


class PrecisionState:
    """The precision every AnyPrecisionLinear of one model follows: a default + per-call override.

    A precision is an int (every module at that width) or a Plan (a width per module name);
    `resolve` (the artifact's PlanResolver) turns anything else (4.5, a {module: bits} map) into a Plan.
    """

    def __init__(self, default: int, available: list[int], resolve: PlanResolver | None = None) -> None:
        self.available = available
        self.default: int | Plan = default
        self.resolve = resolve
        self.override: contextvars.ContextVar[int | Plan | None] = contextvars.ContextVar(
            f"anyprec_precision_{id(self)}", default=None
        )

    @property
    def current(self) -> int | Plan:
        value = self.override.get()
        return self.default if value is None else value

    def check(self, bits: Any, flag: str = "precision", allow_files: bool = True) -> int | Plan:
        """The int or Plan `bits` means: anyprec.precision, the one place a precision is checked."""
        if self.resolve is None:  # a bare state without an artifact: its integer widths only
            if bits.__class__ is int and bits in self.available:
                return bits
            raise PrecisionError(f"{flag} {bits!r}: this model has bit-widths {self.available} and no plans")
        return resolve_with(self.resolve, bits, flag, allow_files)


class AnyPrecisionLinear(nn.Module):
    """y = x W_b^T + bias with W_b[n, k] = lut_b[n, code_b(n, k)] read from the first b planes.

    planes: int32[P, N, ceil(K/32)] (P = largest loaded bit-width). Per width b, luts="fp16":
    lut<b> float16[N, 2**b] as stored; luts="u8": lut<b> uint8[N, 2**b] codes with lut<b>_lo and
    lut<b>_scale float32[N] (anyprec.lutq: value = lo + scale * q), quantized here from the
    stored fp16 table (or given already quantized), which is not kept. `lut(b)` is the one
    reader of either form.
    """

    def __init__(self, qm: QuantizedModule, state: PrecisionState, name: str = "", luts: str = DEFAULT_LUTS) -> None:
        super().__init__()
        self.name = name  # the key of this module in a Plan
        self.in_features = qm.in_features
        self.out_features = int(qm.planes.shape[1])
        self.state = state
        self.lut_form = check_form(luts)
        self.register_buffer("planes", qm.planes)
        for b, lut in qm.luts.items():
            if luts == "fp16":
                self.register_buffer(f"lut{b}", lut)
                continue
            q = lut if isinstance(lut, QuantizedLut) else quantize_lut(lut)
            self.register_buffer(f"lut{b}", q.q)
            self.register_buffer(f"lut{b}_lo", q.lo)
            self.register_buffer(f"lut{b}_scale", q.scale)
        self._luts = {b: self._read_lut(b) for b in qm.luts}
        self.bias = None if qm.bias is None else nn.Parameter(qm.bias.float(), requires_grad=False)
        self.backend: Backend = resolve_backend(self.planes.device)  # once per layer and device, see _apply
        self._plans: dict[int, Any] = {}

    def _read_lut(self, bits: int) -> torch.Tensor | QuantizedLut:
        table = self._buffers[f"lut{bits}"]
        if self.lut_form == "fp16":
            return table
        return QuantizedLut(table, self._buffers[f"lut{bits}_lo"], self._buffers[f"lut{bits}_scale"])

    def lut(self, bits: int) -> torch.Tensor | QuantizedLut:
        """The LUT of width `bits` as the kernels take it (float16 tensor or QuantizedLut)."""
        return self._luts[bits]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bits = self.state.current
        if bits.__class__ is not int:  # a Plan: this module's own width
            bits = bits.bits[self.name]
        lut = self._luts[bits]
        plan = self._plans.get(bits)
        if plan is None and bits not in self._plans:
            # Decode steps are ~all of generation's calls: a native plan, checked once per
            # bit-width, skips matmul's per-call checks (None when the backend is not native).
            plan = self._plans[bits] = decode_plan(self.planes, lut, bits, self.in_features, self.backend)
        if plan is not None and plan.accepts(x):
            y = plan(x)
            if self.bias is not None:
                y += self.bias
            return y
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return matmul(x, self.planes, lut, bits, self.in_features, bias=bias, backend=self.backend)

    def _apply(self, fn: Any, recurse: bool = True) -> "AnyPrecisionLinear":
        """`.to()`/`.float()`/...: may move or replace the tensors, so the backend is resolved
        again for the planes' device (ANYPREC_BACKEND is read here and at load, never per call)
        and the plans, which point into the old tensors, are dropped."""
        super()._apply(fn, recurse)
        self.backend = resolve_backend(self.planes.device)
        self._plans.clear()
        self._luts = {b: self._read_lut(b) for b in self._luts}
        return self

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.state.available}, "
                f"luts={self.lut_form}")



class HalfStoredHead(nn.Module):
    """The output head (lm_head) with decode steps read from its float16 copy.

    The artifact stores dense tensors in fp16, so the fp32 head weight is exactly the
    widened fp16 one: decode steps (few fp32 tokens on the native CPU backend) read the
    fp16 copy — half the bytes of the largest dense matmul of a decode step — and
    accumulate in fp32; everything else uses the fp32 weight as `nn.Linear` would. The
    fp32 weight stays (it is tied to the input embedding).
    """

    def __init__(self, head: nn.Linear, weight_f16: torch.Tensor) -> None:
        super().__init__()
        self.in_features, self.out_features = head.in_features, head.out_features
        self.weight = head.weight
        self.bias = head.bias
        self.register_buffer("weight_f16", weight_f16.contiguous(), persistent=False)
        self._resolve()

    def _resolve(self) -> None:
        """Backend and fp16 decode plan for the head's device, at load and after `.to()`."""
        w = self.weight_f16
        self.backend: Backend = resolve_backend(w.device)
        usable = w.dtype == torch.float16 and w.device.type == "cpu"  # `.to(dtype)` casts it
        self._plan: Any = half_decode_plan(w, self.backend) if usable else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self._plan
        if plan is not None and plan.accepts(x):
            y = plan(x)
            return y if self.bias is None else y + self.bias
        return nn.functional.linear(x, self.weight, self.bias)

    def _apply(self, fn: Any, recurse: bool = True) -> "HalfStoredHead":
        super()._apply(fn, recurse)
        self._resolve()
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, decode weight float16"


def _half_stored_head(model: nn.Module, manifest: dict, dense: dict[str, torch.Tensor]) -> None:
    """Swap the output head for a HalfStoredHead when its stored weight is fp16 and the
    model computes in fp32 (the only case where reading fp16 changes no value)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear) or head.weight.dtype != torch.float32:
        return
    name = next(n for n, m in model.named_modules() if m is head)
    key = f"{name}.weight"
    stored = dense.get(manifest.get("tied", {}).get(key, key))
    if stored is None or stored.dtype != torch.float16 or not torch.equal(stored.float(), head.weight):
        return
    _set_submodule(model, name, HalfStoredHead(head, stored))


class AnyPrecisionModel:
    """A transformers causal LM whose quantized layers serve any loaded bit-width.

    Attributes: model (PreTrainedModel), tokenizer, manifest (dict), bits_available (list[int]).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, manifest: dict, state: PrecisionState,
                 luts: str = "fp16") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.manifest = manifest
        self._state = state
        self.luts = luts  # the resident form: "u8" (uint8 LUTs, int8 head) or "fp16" (exact)

    @property
    def bits_available(self) -> list[int]:
        return list(self._state.available)

    @property
    def current_precision(self) -> int | float:
        """The default or per-call precision: an int, or the label of a plan (e.g. 4.5)."""
        value = self._state.current
        return value if isinstance(value, int) else value.label

    @property
    def current_plan(self) -> Plan | None:
        """The plan in effect (None at an integer precision)."""
        value = self._state.current
        return None if isinstance(value, int) else value

    def resolve_precision(self, bits: Any, flag: str = "precision", allow_files: bool = True) -> int | Plan:
        """The int or Plan `bits` means for this model (see anyprec.precision.resolve_precision)."""
        return self._state.check(bits, flag, allow_files)

    def set_precision(self, bits: int | float | str | Plan | dict[str, int]) -> None:
        """Make `bits` the default for every later call (no reload): an integer width, a fractional
        one (4.5: the artifact's plan for it, or one computed and cached), a stored plan's name,
        a plan JSON file's path, a Plan or {module: bits}."""
        self._state.default = self._state.check(bits, "set_precision")

    @contextlib.contextmanager
    def precision(self, bits: int | float | str | Plan | dict[str, int] | None) -> Iterator[None]:
        """Use `bits` for the calls inside the block only (None: keep the default)."""
        if bits is None:
            yield
            return
        token = self._state.override.set(self._state.check(bits))
        try:
            yield
        finally:
            self._state.override.reset(token)

    def generate(self, *args: Any, precision: int | float | Plan | None = None, **kwargs: Any) -> torch.Tensor:
        """`model.generate` at `precision` bits (default: the current precision)."""
        with self.precision(precision), torch.inference_mode():
            return self.model.generate(*args, **kwargs)

    def __call__(self, *args: Any, precision: int | float | Plan | None = None, **kwargs: Any) -> Any:
        """`model(...)` (forward) at `precision` bits."""
        with self.precision(precision):
            return self.model(*args, **kwargs)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def build_model(artifact_dir: Path, manifest: dict, dense: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    """Instantiate the HF model from config.json (no weights read) and load the dense tensors."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(artifact_dir, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    _check_against_model(artifact_dir, manifest, dense, model.state_dict())
    for name in manifest["modules"]:
        _set_submodule(model, name, nn.Identity())  # placeholder; real module set after load
    model.load_state_dict({k: v.to(dtype) for k, v in dense.items()}, strict=False, assign=True)
    for alias, source in manifest.get("tied", {}).items():
        _set_param(model, alias, model.get_parameter(source))
    _materialize_buffers(model, config, dtype)
    return model


def _check_against_model(artifact_dir: Path, manifest: dict, dense: dict[str, torch.Tensor],
                         shapes: dict[str, torch.Tensor]) -> None:
    """Every tensor the artifact supplies (dense, quantized modules, tied aliases) must be one the
    config's model has, with its shape: a clear error instead of a failed load deep in torch."""
    problems = []
    for name, info in manifest["modules"].items():
        ref = shapes.get(f"{name}.weight")
        want = (info["out_features"], info["in_features"])
        if ref is None or (tuple(ref.shape) != want and tuple(ref.shape) != want[::-1]):
            problems.append(f"quantized module {name} {want} does not match the config's model")
    for name, tensor in dense.items():
        ref = shapes.get(name)
        if ref is None or tuple(ref.shape) != tuple(tensor.shape):
            problems.append(f"dense tensor {name} {tuple(tensor.shape)} does not match the config's model")
    for alias, source in manifest.get("tied", {}).items():
        if alias not in shapes or source not in shapes:
            problems.append(f"tied alias {alias} -> {source} names a tensor the model does not have")
    quantized = {f"{n}.weight" for n in manifest["modules"]}
    missing = set(shapes) - quantized - set(manifest.get("tied", {})) - set(dense)
    if missing:
        problems.append(f"dense tensors missing from the artifact: {sorted(missing)[:5]}")
    if problems:
        raise ArtifactError(f"{artifact_dir}: {'; '.join(problems[:3])} (re-create it with `anyprec quantize`)")


def _set_param(model: nn.Module, name: str, param: nn.Parameter) -> None:
    mod_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(mod_name), attr, param)


def _materialize_buffers(model: nn.Module, config: Any, dtype: torch.dtype) -> None:
    """Non-persistent buffers (rotary inv_freq, causal masks) are not in any file: rebuild them on CPU."""
    for mod_name, module in model.named_modules():
        for buf_name, buf in list(module.named_buffers(recurse=False)):
            if buf is not None and buf.is_meta:
                fresh = _fresh_module_buffer(module, buf_name, config)
                module.register_buffer(buf_name, fresh, persistent=False)
    leftover = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if leftover:
        raise ArtifactError(f"tensors not restored from the artifact: {leftover[:5]}")


def _fresh_module_buffer(module: nn.Module, buf_name: str, config: Any) -> torch.Tensor:
    """Re-create one non-persistent buffer by building the same module type on CPU."""
    with torch.device("cpu"):
        if hasattr(module, "rope_init_fn") or buf_name in {"inv_freq", "original_inv_freq"}:
            fresh = type(module)(config=config)
        else:
            raise ArtifactError(f"cannot rebuild buffer {buf_name!r} of {type(module).__name__}")
    return getattr(fresh, buf_name)


QUANTIZE_ROWS = 1 << 15  # LUT rows quantized per call at load (bounds the fp32 temporaries: ~32 MB at 8 bits)


def _quantize_luts(modules: dict[str, QuantizedModule]) -> None:
    """Replace every module's fp16 LUTs by QuantizedLuts in place, in batches of about
    QUANTIZE_ROWS rows per width: quantize_lut is row-wise, so a batch gives each module's
    rows exactly what it alone would, for a few dozen tensor calls instead of one per table
    (1,260 on SmolLM2-135M, whose per-call overhead dominated the load on a busy machine)."""
    names = list(modules)
    for b in next(iter(modules.values())).luts:
        start = 0
        while start < len(names):
            batch, rows = [], 0
            while start < len(names) and (not batch or rows < QUANTIZE_ROWS):
                batch.append(names[start])
                rows += modules[names[start]].luts[b].shape[0]
                start += 1
            sizes = [modules[n].luts[b].shape[0] for n in batch]
            parts = zip(*(t.split(sizes) for t in quantize_lut(torch.cat([modules[n].luts[b] for n in batch]))))
            for n, part in zip(batch, parts):
                modules[n].luts[b] = QuantizedLut(*part)  # the fp16 table is freed here


def _return_freed_memory() -> None:
    """Give the heap pages freed by the load back to the OS (glibc's malloc_trim): the load's
    temporaries (fp16 tables, fp32 dense copies) otherwise stay counted in the process's RSS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim, or the allocator does it itself
        pass


def load_anyprec(
    artifact_dir: str | Path,
    bits: list[int] | int | None = None,
    dtype: torch.dtype = torch.float32,
    verify: bool = True,
    luts: str = DEFAULT_LUTS,
) -> AnyPrecisionModel:
    """Load a packed artifact; `bits` restricts what is kept (planes up to max(bits), those LUTs).

    luts: the resident form, "u8" (default: uint8 LUTs + a per-row int8 head and tied
    embedding, the fewest bytes for +0.1..0.7% perplexity) or "fp16" (the stored tables,
    exact). The default precision is the largest loaded bit-width.
    """
    from transformers import AutoTokenizer

    check_form(luts)
    artifact_dir = Path(artifact_dir)
    wanted = [bits] if isinstance(bits, int) else bits
    manifest, modules, dense = load_packed_tensors(artifact_dir, wanted, verify=verify)  # checks `bits`
    available = sorted(next(iter(modules.values())).luts)
    state = PrecisionState(max(available), available, PlanResolver(artifact_dir, manifest, available))
    model = build_model(artifact_dir, manifest, dense, dtype)
    if luts == "u8":
        _quantize_luts(modules)
    for name in list(modules):
        _set_submodule(model, name, AnyPrecisionLinear(modules.pop(name), state, name, luts))
    if luts == "u8":
        del dense  # the fp16 head copy is not needed: the head becomes int8
        install_int8_head(model, dtype)
    else:
        _half_stored_head(model, manifest, dense)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(artifact_dir, local_files_only=True)
    gc.collect()
    _return_freed_memory()
    return AnyPrecisionModel(model, tokenizer, manifest, state, luts)
